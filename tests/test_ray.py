"""Issue #11: re-embedding on Ray Data (`backfill.engine: ray`) against the real OpenSearch + moto.

One local Ray runtime for the whole session (`ray_runtime`); the `ray start --head` cluster test
starts its own on free ports and stops only that cluster's processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from opensearchpy import helpers

from lockstep.ops import artifacts, corpus, corpus_store, index, live_state
from lockstep.ops.backfill import engine as backfill_engine

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def ray_runtime(servers):
    """ONE local Ray runtime per session (2 CPUs, small object store), shared by every Ray test."""
    import ray

    from lockstep.ops.backfill import ray_pipeline

    if not ray.is_initialized():  # through the engine's start: a raylet too slow to start is one line
        ray_pipeline.start(
            {
                "num_cpus": 2,
                "object_store_memory": 256 * 1024**2,
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "WARNING",
                "runtime_env": {
                    "env_vars": {k: os.environ[k] for k in ("OPENSEARCH_URL", "AWS_ENDPOINT_URL") if k in os.environ}
                },
            }
        )
    yield ray
    ray.shutdown()


def seeded(make_settings, s3, size: int, engine: str = "ray", **overrides):
    """Settings of an isolated stack with its buckets, corpus (`size` docs) and artifacts published."""
    settings = make_settings(
        corpus={"size": size}, backfill={"engine": engine, "workers": 2, "batchSize": 64}, **overrides
    )
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    corpus_store.ensure_corpus(s3, settings)
    return settings


def publish(s3, settings, catalog, *versions):
    for version in versions:
        artifacts.publish_artifact(s3, settings, catalog.get(version))


def stored(opensearch, name: str) -> dict[str, dict]:
    """Every stored document of an index: {id: _source}."""
    opensearch.indices.refresh(index=name)
    return {
        hit["_id"]: hit["_source"]
        for hit in helpers.scan(opensearch, index=name, size=500, query={"query": {"match_all": {}}})
    }


def ids_exactly_once(opensearch, name: str, documents) -> None:
    opensearch.indices.refresh(index=name)
    assert opensearch.count(index=name)["count"] == len(documents)
    assert set(stored(opensearch, name)) == {d.id for d in documents}


def with_engine(settings, **backfill):
    return settings.model_copy(update={"backfill": settings.backfill.model_copy(update=backfill)})


# --------------------------------------------------------------------------------- equality


def test_ray_index_equals_local_index(ray_runtime, make_settings, s3, opensearch, catalog, unique):
    """The index the `ray` engine builds equals the `local` engine's: ids, hashes, vectors, _meta."""
    local = seeded(make_settings, s3, 300, engine="local")
    publish(s3, local, catalog, "v1")
    entry = catalog.get("v1")
    ray_settings = with_engine(local, engine="ray").model_copy(
        update={"opensearch": local.opensearch.model_copy(update={"index_prefix": f"{unique}-ray"})}
    )

    built_local = backfill_engine.sync_index(local, entry, progress=False)
    built_ray = backfill_engine.sync_index(ray_settings, entry, progress=False)

    assert (built_local.embedded, built_ray.embedded) == (300, 300)
    assert built_ray.created and built_ray.deleted == 0
    a, b = stored(opensearch, built_local.index), stored(opensearch, built_ray.index)
    assert set(a) == set(b) and len(b) == 300
    for doc_id, source in a.items():
        other = b[doc_id]
        assert other["content_sha256"] == source["content_sha256"]
        assert other["model_version"] == source["model_version"] == "v1"
        assert other["text"] == source["text"] and other["doc_id"] == doc_id
        assert np.allclose(other["embedding"], source["embedding"], atol=1e-6, rtol=0)
    meta_a, meta_b = index.read_meta(opensearch, built_local.index), index.read_meta(opensearch, built_ray.index)
    assert {k: v for k, v in meta_a.items() if k not in index.VOLATILE_META} == {
        k: v for k, v in meta_b.items() if k not in index.VOLATILE_META
    }
    assert meta_b["synced"]["documents"] == 300 and meta_b["synced"]["corpus_etag"] == meta_a["synced"]["corpus_etag"]
    assert not index.in_bulk_mode(opensearch, built_ray.index)  # refresh restored after the load


# ----------------------------------------------------------------------------------- catch-up


def test_catch_up_on_ray_embeds_only_the_delta(ray_runtime, make_settings, s3, opensearch, catalog):
    """Changed and missing documents are re-embedded, removed ones deleted, the rest untouched."""
    settings = seeded(make_settings, s3, 200)
    publish(s3, settings, catalog, "v1")
    entry = catalog.get("v1")
    first = backfill_engine.sync_index(settings, entry, progress=False)
    assert (first.created, first.embedded, first.deleted) == (True, 200, 0)

    documents = corpus_store.read_corpus(s3, settings)
    changed = {d.id for d in documents[10:15]}
    removed = {d.id for d in documents[20:27]}
    kept = [
        corpus.Document(d.id, d.text + " (revised)") if d.id in changed else d for d in documents if d.id not in removed
    ]
    added = [
        corpus.Document(f"new-{n}", f"A document that arrived later, number {n}, about sockets and files.")
        for n in range(4)
    ]
    new_corpus = kept + added
    corpus_store.write_corpus(s3, settings, new_corpus)
    untouched = documents[50].id

    second = backfill_engine.sync_index(settings, entry, progress=False)
    assert (second.created, second.embedded, second.deleted) == (False, 5 + 4, 7)
    docs = stored(opensearch, second.index)
    assert set(docs) == {d.id for d in new_corpus}
    assert all(docs[d.id]["content_sha256"] == d.content_sha256 for d in new_corpus)
    assert opensearch.get(index=second.index, id=untouched)["_version"] == 1  # never rewritten
    assert all(opensearch.get(index=second.index, id=i)["_version"] == 2 for i in changed)
    meta = index.read_meta(opensearch, second.index)
    assert meta["synced"]["documents"] == len(new_corpus)

    third = backfill_engine.sync_index(settings, entry, progress=False)  # nothing left to do
    assert (third.embedded, third.deleted) == (0, 0)


# ------------------------------------------------------------------------------------- failures


def _busy_map_workers() -> list[int]:
    """Pids of embedding actors busy with a batch: Ray titles the process
    `ray::MapWorker(MapBatches(Embed)).submit` while the actor runs a task."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::MapWorker(MapBatches(Embed)).submit"):
            found.append(proc.info["pid"])
    return found


def _indexed_ops(opensearch, name: str) -> int:
    """Index operations the index has taken so far (counts while refresh is off, unlike _count)."""
    try:
        stats = opensearch.indices.stats(index=name, metric="indexing")
    except Exception:  # noqa: BLE001 — not created yet
        return 0
    return stats["_all"]["primaries"]["indexing"]["index_total"]


def test_worker_killed_mid_run_still_finishes_exactly_once(ray_runtime, make_settings, s3, opensearch, catalog):
    """kill -9 of an embedding actor mid-run: Ray restarts it and retries its batch; every corpus
    id ends up in the index exactly once (idempotent ids)."""
    settings = seeded(make_settings, s3, 800)
    settings = with_engine(settings, batch_size=16)
    publish(s3, settings, catalog, "v1")
    entry = catalog.get("v1")
    name = settings.opensearch.index_name("v1")
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = backfill_engine.sync_index(settings, entry, progress=False)
        except BaseException as exc:  # noqa: BLE001 — reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline:
        busy = _busy_map_workers()
        if busy:  # an actor is in the middle of a batch: kill it there
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert killed, "the run ended before a worker could be killed mid-run; grow the corpus"
    assert thread.is_alive()  # killed mid-run, not after
    thread.join(240)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.embedded >= 800
    documents = corpus_store.read_corpus(s3, settings)
    ids_exactly_once(opensearch, name, documents)
    assert not index.in_bulk_mode(opensearch, name)


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "lockstep"), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
        **kwargs,
    )


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("inherited", [signal.SIG_IGN, signal.SIG_DFL], ids=["ignored", "default"])
def test_following_a_job_any_interrupt_detaches_and_handlers_come_back(sig, inherited):
    """While a job is followed, SIGINT and SIGTERM raise KeyboardInterrupt (run_job turns it into
    `detached`), also when SIGINT was inherited ignored; the handlers before are restored after."""
    from lockstep.ops.backfill import ray_jobs

    before = signal.signal(signal.SIGINT, inherited)
    term_before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt), ray_jobs.interrupts_detach():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler interrupts this sleep
        assert signal.getsignal(signal.SIGINT) == inherited
        assert signal.getsignal(signal.SIGTERM) == term_before
    finally:
        signal.signal(signal.SIGINT, before)


def test_driver_killed_mid_run_then_rerun_finishes_and_alias_never_moves(
    ray_runtime, scratch_stack, s3, opensearch, catalog
):
    """`lockstep backfill` (the driver, attached to the session's Ray runtime) killed -9 mid-run;
    a re-run finishes with every corpus id once, and the live alias stayed on the pin's index."""
    from lockstep import config

    stacks, stack = scratch_stack(corpus={"size": 1500}, backfill={"engine": "ray", "workers": 2, "batchSize": 16})
    settings = config.load_stack(stack, stacks, catalog)
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    corpus_store.ensure_corpus(s3, settings)
    publish(s3, settings, catalog, "v1")
    live = settings.opensearch.index_name("v1")
    index.ensure_index(opensearch, settings, catalog.get("v1"))
    opensearch.indices.put_alias(index=live, name=settings.opensearch.alias_name, body={"is_write_index": True})
    target = settings.opensearch.index_name("v2")
    env = {"RAY_ADDRESS": ray_runtime.get_runtime_context().gcs_address}

    driver = _cli("backfill", "--stack", stack, "--version", "v2", "--quiet", env=env)
    deadline = time.monotonic() + 150
    while driver.poll() is None and time.monotonic() < deadline and _indexed_ops(opensearch, target) < 100:
        time.sleep(0.05)
    assert driver.poll() is None, driver.communicate()
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(30)
    partial = _indexed_ops(opensearch, target)
    assert 0 < partial < 1500
    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == [live]

    rerun = _cli("backfill", "--stack", stack, "--version", "v2", "--quiet", env=env)
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err[-2000:]
    assert f"{target}:" in out
    ids_exactly_once(opensearch, target, corpus_store.read_corpus(s3, settings))
    assert not index.in_bulk_mode(opensearch, target)  # the killed run's bulk mode was undone
    assert live_state.alias_targets(opensearch, settings.opensearch.alias_name) == [live]
    assert index.read_meta(opensearch, target)["synced"]["documents"] == 1500


# ------------------------------------------------------------------------------------ bad input


def _run_cli(*args: str, env: dict | None = None, pre: str = "") -> subprocess.CompletedProcess:
    code = f"{pre}\nimport sys\nfrom lockstep.cli import main\nsys.argv = ['lockstep', *{list(args)!r}]\nmain()"
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def _nothing_written(s3, opensearch, settings) -> None:
    assert opensearch.indices.exists(index=settings.opensearch.index_name("v2")) is False
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert settings.artifacts.bucket not in names and settings.corpus.bucket not in names


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_ray_address_is_one_line_exit_2(scratch_stack, s3, opensearch, catalog, servers):
    from lockstep import config

    address = f"http://127.0.0.1:{_free_port()}"
    stacks, stack = scratch_stack(backfill={"engine": "ray", "address": address})
    settings = config.load_stack(stack, stacks, catalog)
    done = _run_cli("backfill", "--stack", stack, "--version", "v2")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lockstep: Ray cluster at") and address in lines[0]
    assert "backfill.address" in lines[0]
    _nothing_written(s3, opensearch, settings)
    done = _run_cli("apply", "--stack", stack, "--quiet")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    _nothing_written(s3, opensearch, settings)


def test_workers_below_one_is_refused_by_field(scratch_stack, s3, opensearch, catalog, servers):
    from lockstep import config

    stacks, stack = scratch_stack(backfill={"engine": "ray", "workers": 0})
    done = _run_cli("backfill", "--stack", stack, "--version", "v2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"lockstep: {config.stack_path(stack, stacks)}: lockstep:backfill.workers: "
        "Input should be greater than or equal to 1 (got 0)"
    ]


def test_engine_ray_without_ray_installed_is_one_line_exit_2(scratch_stack, s3, opensearch, catalog, servers):
    from lockstep import config

    stacks, stack = scratch_stack(backfill={"engine": "ray"})
    settings = config.load_stack(stack, stacks, catalog)
    block = "import sys; sys.modules['ray'] = None  # `import ray` raises ImportError, as without Ray"
    for command in (("backfill", "--stack", stack, "--version", "v2"), ("apply", "--stack", stack, "--quiet")):
        done = _run_cli(*command, pre=block)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "backfill.engine is 'ray' but Ray cannot be imported" in lines[0], lines
        assert "backfill.engine: local" in lines[0]
        _nothing_written(s3, opensearch, settings)


# ------------------------------------------------------------------------- a `ray start` cluster


@pytest.fixture
def head_cluster(tmp_path_factory):
    """A single-node cluster from `ray start --head` on loopback with free ports, 2 CPUs and a
    small object store; afterwards only ITS processes are stopped (its own process group:
    `ray stop` would stop every Ray on the machine, the session's runtime too)."""
    import uuid

    temp_dir = Path(f"/tmp/lsr-{uuid.uuid4().hex[:8]}")  # short: Ray's socket paths have a length limit
    gcs, dashboard, client = _free_port(), _free_port(), _free_port()
    # Every other fixed port too: the session's own Ray runtime holds the defaults (52365, ...).
    ports = [
        f"--{flag}={_free_port()}"
        for flag in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "node-manager-port",
            "object-manager-port",
        )
    ]
    # Token authentication, as a shared cluster should run (Ray >= 2.52 turns it on by default).
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", **auth}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            f"--port={gcs}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            "--num-cpus=2",
            f"--object-store-memory={200 * 1024**2}",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            "--disable-usage-stats",
            *ports,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output, _ = start.communicate(timeout=120)
    group = start.pid
    try:
        assert start.returncode == 0, output[-2000:]
        yield f"http://127.0.0.1:{dashboard}", auth
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 1)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            time.sleep(wait)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def test_backfill_as_a_ray_job_on_a_ray_start_cluster(head_cluster, scratch_stack, s3, opensearch, catalog, servers):
    """`lockstep backfill` submits a Ray job; interrupted, the job keeps running; the same command
    re-attaches to it; `--attach` follows it by id; the index equals the local engine's."""
    from lockstep import config

    address, auth = head_cluster
    stacks, stack = scratch_stack(
        corpus={"size": 400}, backfill={"engine": "ray", "address": address, "workers": 2, "batchSize": 32}
    )
    settings = config.load_stack(stack, stacks, catalog)
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    corpus_store.ensure_corpus(s3, settings)
    publish(s3, settings, catalog, "v1")

    # Started with SIGINT ignored, as a shell starts a background command (how CI ran it when this
    # test caught a swallowed Ctrl-C): the client must detach all the same.
    first = _cli("backfill", "--stack", stack, "--version", "v1", env=auth, preexec_fn=_sigint_ignored)
    job_id, lines = None, []
    deadline = time.monotonic() + 120
    while job_id is None and time.monotonic() < deadline and first.poll() is None:
        line = first.stderr.readline()
        lines.append(line)
        if line.startswith("ray job ") and "submitted" in line:
            job_id = line.split()[2].rstrip(":")
    assert job_id, "".join(lines)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: the client goes, the job stays
    _, rest = first.communicate(timeout=60)
    assert first.returncode == 130, rest
    assert f"detached from ray job {job_id}" in rest

    again = _cli("backfill", "--stack", stack, "--version", "v1", env=auth)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert f"ray job {job_id}: re-attached to running" in err or f"ray job {job_id}: succeeded" in err, err[-3000:]
    name = settings.opensearch.index_name("v1")
    assert f"{name}: created, 400 embedded" in out

    attached = _cli("backfill", "--stack", stack, "--version", "v1", "--attach", job_id, "--quiet", env=auth)
    out2, err2 = attached.communicate(timeout=120)
    assert attached.returncode == 0 and f"{name}: created, 400 embedded" in out2, err2

    local = with_engine(settings, engine="local", address=None).model_copy(
        update={
            "opensearch": settings.opensearch.model_copy(
                update={"index_prefix": f"{settings.opensearch.index_prefix}-local"}
            )
        }
    )
    reference = backfill_engine.sync_index(local, catalog.get("v1"), progress=False)
    a, b = stored(opensearch, reference.index), stored(opensearch, name)
    assert set(a) == set(b) and len(b) == 400
    for doc_id, source in a.items():
        assert b[doc_id]["content_sha256"] == source["content_sha256"] and b[doc_id]["model_version"] == "v1"
        assert np.allclose(b[doc_id]["embedding"], source["embedding"], atol=1e-6, rtol=0)
