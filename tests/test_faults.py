"""Issue #9: lockstep under faults, against the real servers.

The session's OpenSearch and moto are never stopped or paused here. Faults are injected by a
loopback proxy the clients are pointed at (tests/faultproxy.py: it drops requests, loses answers,
answers late or answers 429 itself), by SIGKILL of processes this module started (`lockstep
backfill`, `lockstep apply`, endpoint slot processes of its own stack), and by an SSM endpoint
that drops PutParameter.

What every cutover fault must leave: the live alias and the live pointer both on the old version
or both on the new one — or, where no code can know (the `_aliases` answer was lost and
OpenSearch stayed away), a one-line message that says exactly that, a `lockstep check` that
names the pointer, and a re-run of `lockstep apply` that converges.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from bench import kill_sweep
from lockstep import config, orchestrator, runtime
from lockstep.config import StackSettings
from lockstep.errors import Unreachable
from lockstep.models import hashgram as model
from lockstep.ops import check, clients, corpus_store, endpoints, index, live_state, reembed
from lockstep.ops.corpus import Document
from tests.conftest import deploy, lockstep
from tests.faultproxy import DROP, FORWARD, LOST, FaultProxy, Request, after_first, answer, late, reject_items

ROOT = Path(__file__).resolve().parents[1]
SIZE = 120


def aliases_request(request: Request) -> bool:
    return request.is_("POST", "/_aliases")


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def deployment(servers, tmp_path_factory):
    """One stack for the module: v1 live in blue, v2 warm in green, SIZE documents."""
    yield from deploy(tmp_path_factory, corpus={"size": SIZE})


@pytest.fixture
def deployed(deployment):
    """The module's stack; after each test its alias and pointer must both name the pin again."""
    yield deployment
    pin = deployment.load().pin
    assert deployment.live() == deployment.state_of(pin), "the test left alias and pointer apart from the pin"


@pytest.fixture
def opensearch_proxy(servers):
    with FaultProxy(servers["opensearch"]) as proxy:
        yield proxy


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    assert "Traceback" not in text
    return lines[0]


# ------------------------------------------------------------------ kills during provision / catch-up


@pytest.mark.slow
def test_backfill_killed_at_random_points_resumes_to_exactly_the_corpus(servers, tmp_path, catalog):
    """SIGKILL `lockstep backfill` 4 times (by doc count and by time, in provision and in catch-up):
    the finishing run leaves exactly the corpus' ids once each, stamped v2 with the corpus'
    content_sha256, out of bulk mode, and the live alias and pointer never left v1.
    (bench/kill_sweep.py runs the same with 20 points.)"""
    seed = random.randrange(10**6)
    settings = kill_sweep.make_stack(tmp_path / "stacks", f"t{uuid.uuid4().hex[:10]}", docs=1500)
    try:
        kill_sweep.go_live_on_v1(settings, catalog)
        result = kill_sweep.sweep(settings, catalog, tmp_path / "stacks", points=4, rng=random.Random(seed), say=print)
    finally:
        kill_sweep.cleanup(settings)
    assert result.landed >= 2, f"seed {seed}: most kills must land while the backfill runs: {result.kills}"
    assert result.lost == [] and result.extra == [] and result.wrong_hash == [], f"seed {seed}"
    assert result.indexed == result.corpus_size and result.versions == {"v2": result.corpus_size}, f"seed {seed}"
    assert not result.left_in_bulk_mode
    assert result.live_samples > 10 and result.live_moved == [], f"seed {seed}: {result.live_moved}"


# --------------------------------------------------------------------- OpenSearch gone mid-cutover


def down_for(seconds: float, first=LOST):
    """A rule: the first `_aliases` request gets `first`; then OpenSearch is unreachable for
    `seconds`, and answers again."""
    state: dict[str, float] = {}

    def rule(request: Request):
        if "since" not in state:
            if aliases_request(request):
                state["since"] = time.monotonic()
                return first
            return FORWARD
        return DROP if time.monotonic() - state["since"] < seconds else FORWARD

    return rule


CUTOVER_FAULTS = {
    # name: (rule, exit code of the faulty apply, where alias and pointer are afterwards)
    "cut before the _aliases request": (lambda: after_first(aliases_request, DROP, DROP), 2, "old"),
    "cut right after _aliases answered": (lambda: after_first(aliases_request, FORWARD, DROP), 2, "new"),
    "_aliases answer lost, the client's retry gets through": (
        lambda: after_first(aliases_request, LOST, FORWARD),
        0,
        "new",
    ),
    "_aliases answer lost, OpenSearch away for 3 s": (lambda: down_for(3.0), 0, "new"),
}


@pytest.mark.parametrize("fault", list(CUTOVER_FAULTS))
def test_opensearch_failing_during_the_cutover_never_splits_alias_and_pointer(
    deployed, opensearch_proxy, fault, monkeypatch
):
    make_rule, code, where = CUTOVER_FAULTS[fault]
    monkeypatch.setattr(live_state, "SETTLE_SECONDS", 6.0)
    old, new = deployed.flip()
    opensearch_proxy.rule = make_rule()

    result = deployed.apply(OPENSEARCH_URL=opensearch_proxy.url)

    assert opensearch_proxy.count(DROP) + opensearch_proxy.count(LOST) > 0, "the fault never fired"
    assert result.exit_code == code, result.stdout + result.stderr
    if code:
        line = one_line(result.stderr)
        assert "OpenSearch" in line and opensearch_proxy.url in line, line
    assert deployed.live() == deployed.state_of(new if where == "new" else old)

    opensearch_proxy.heal()
    again = deployed.apply(OPENSEARCH_URL=opensearch_proxy.url)
    assert again.exit_code == 0, again.stdout + again.stderr
    assert deployed.live() == deployed.state_of(new)


def test_answer_lost_and_opensearch_gone_for_good_says_so_and_apply_converges(deployed, opensearch_proxy, monkeypatch):
    """The one case no code can decide: the `_aliases` request reached OpenSearch, its answer was
    lost, and OpenSearch stayed away. The alias did move; the pointer could not follow. The
    command says exactly that in one line (exit 2), `lockstep check` then fails the pointer
    check (exit 1), and `lockstep apply` finishes the cutover."""
    monkeypatch.setattr(live_state, "SETTLE_SECONDS", 2.0)
    old, new = deployed.flip()
    opensearch_proxy.rule = after_first(aliases_request, LOST, DROP)

    result = deployed.apply(OPENSEARCH_URL=opensearch_proxy.url)

    assert result.exit_code == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "may already be on" in line and deployed.settings.opensearch.index_name(new) in line
    assert "lockstep apply" in line
    assert deployed.live() == ([deployed.settings.opensearch.index_name(new)], old)  # the real, split state

    opensearch_proxy.heal()
    checked = deployed.cli("check", "--stack", deployed.stack, "--json")
    assert checked.exit_code == 1
    failures = {
        c["name"]: c for c in json.loads(checked.stdout)["checks"] if not c["passed"] and c["severity"] == "fail"
    }
    # Readers follow the pointer, still on the old version: their recall is not the pin's.
    assert set(failures) == {"pointer", "recall"}
    assert failures["recall"]["observed"].startswith(f"readers answer from {old} (")

    again = deployed.apply()
    assert again.exit_code == 0, again.stdout + again.stderr
    assert deployed.live() == deployed.state_of(new)


def test_answer_arriving_after_the_client_timeout_is_retried_without_a_split(deployed, opensearch_proxy, monkeypatch):
    """A paused OpenSearch: the swap is applied but answered after the client gave up (1 s);
    the client retries (the swap is idempotent) and the pointer follows."""
    old, new = deployed.flip()
    opensearch_proxy.rule = after_first(aliases_request, late(2.5), FORWARD)
    monkeypatch.setenv("OPENSEARCH_URL", opensearch_proxy.url)
    settings = deployed.load()
    client = clients.opensearch(settings.opensearch, timeout=1)

    with clients.reaching("OpenSearch", opensearch_proxy.url):
        pointer = live_state.cutover(
            client,
            clients.aws("ssm"),
            settings,
            deployed.catalog.get(new),
            endpoints.endpoint_name(settings, settings.live_slot),
        )

    assert pointer.version == new
    assert opensearch_proxy.count("late") == 1 and opensearch_proxy.count(FORWARD, "POST", "/_aliases") >= 1
    assert deployed.live() == deployed.state_of(new)


def test_pointer_write_and_alias_restore_both_failing_is_reported_and_converges(deployed, servers):
    """SSM drops PutParameter and OpenSearch dies right after the swap: the alias cannot be put
    back. The command says so (one line, non-zero); the state is split until `lockstep apply`
    runs again with the servers back, and then it converges."""
    old, new = deployed.flip()
    with FaultProxy(servers["opensearch"]) as search, FaultProxy(servers["moto"]) as aws:

        def ssm_rule(request: Request):
            if request.headers.get("X-Amz-Target", "").endswith("PutParameter"):
                search.cut()  # OpenSearch dies as the pointer write goes out
                return DROP
            return FORWARD

        aws.rule = ssm_rule
        result = deployed.apply(OPENSEARCH_URL=search.url, AWS_ENDPOINT_URL=aws.url)

        assert result.exit_code != 0
        line = one_line(result.stderr)
        assert "could not be written" in line and "restoring alias" in line and "lockstep apply" in line, line
        assert deployed.live() == ([deployed.settings.opensearch.index_name(new)], old)

        search.heal()
        aws.heal()
        again = deployed.apply(OPENSEARCH_URL=search.url, AWS_ENDPOINT_URL=aws.url)
        assert again.exit_code == 0, again.stdout + again.stderr
    assert deployed.live() == deployed.state_of(new)


KILL_AT_POINTER_WRITE = """
import os, signal, sys
from lockstep import cli
from lockstep.ops import live_state
live_state.write_pointer = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
sys.argv = ["lockstep", "apply", "--stack", sys.argv[1], "--quiet"]
cli.main()
"""


def test_apply_killed_between_alias_swap_and_pointer_write_is_caught_by_check_and_converges(deployed):
    """SIGKILL exactly between the `_aliases` request and the pointer write: the only split a
    crash can leave. `lockstep check` names it (pointer, exit 1); `lockstep apply` repairs it."""
    old, new = deployed.flip()
    env = {**os.environ, "LOCKSTEP_STACKS_DIR": str(deployed.stacks_dir)}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_POINTER_WRITE, deployed.stack],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert deployed.live() == ([deployed.settings.opensearch.index_name(new)], old)

    checked = deployed.cli("check", "--stack", deployed.stack)
    assert checked.exit_code == 1 and "pointer" in checked.stdout

    again = deployed.apply()
    assert again.exit_code == 0, again.stdout + again.stderr
    assert deployed.live() == deployed.state_of(new)


def test_a_garbled_live_pointer_is_rewritten_by_apply_not_a_dead_end(deployed):
    """The pointer's message says "run `lockstep apply` to rewrite it": apply must then do that
    (it used to stop on the same error) and `lockstep plan` must still plan."""
    settings = deployed.load()
    clients.aws("ssm").put_parameter(Name=settings.pointer_name, Value='{"version": "v', Type="String", Overwrite=True)
    checked = deployed.cli("check", "--stack", deployed.stack, "--json")
    pointer_check = [c for c in json.loads(checked.stdout)["checks"] if c["name"] == "pointer"]
    assert checked.exit_code == 1 and pointer_check[0]["observed"] == "(not lockstep's JSON)"
    planned = deployed.cli("plan", "--stack", deployed.stack, "--format", "json")
    assert planned.exit_code == 0, planned.stderr
    assert "cutover" in [step["kind"] for step in json.loads(planned.stdout)["steps"]]

    again = deployed.apply()
    assert again.exit_code == 0, again.stdout + again.stderr
    assert deployed.live() == deployed.state_of(settings.pin)


# --------------------------------------------------------------------------------- endpoint deaths


def kill_slot(settings: StackSettings, slot: str) -> int:
    """SIGKILL this module's own slot process (never anyone else's)."""
    running = endpoints.local_slot(settings, slot)
    assert running is not None and running.pid, f"{slot} slot of {settings.stack} is not running"
    os.kill(running.pid, signal.SIGKILL)
    runtime.wait_until(lambda: endpoints.local_slot(settings, slot) is None, f"{slot} slot to die", "", timeout=10)
    return running.pid


def test_endpoint_dying_during_dual_write_is_retried_then_unreachable_and_a_restart_converges(deployed):
    settings = deployed.load()
    settings = settings.model_copy(update={"endpoints": settings.endpoints.model_copy(update={"max_batch": 16})})
    arriving = [
        Document(f"arriving-{n}", f"An arriving document {n} about sockets, files and threads {n * 7}.")
        for n in range(1500)
    ]
    live_index = settings.opensearch.index_name(settings.pin)
    search = clients.opensearch()
    outcome: dict[str, object] = {}

    def run():
        try:
            outcome["written"] = orchestrator.dual_write(settings, deployed.catalog, arriving)
        except Exception as exc:  # the assertion below says which
            outcome["error"] = exc
            outcome["failed_at"] = time.monotonic()

    writer = threading.Thread(target=run)
    writer.start()
    try:
        # dual_write fills the blue slot's index first: kill blue once its first documents landed.
        first_slot = next(iter(settings.slots.filled))
        first_index = settings.opensearch.index_name(settings.slots.filled[first_slot])
        arrived = lambda: search.count(index=first_index, body={"query": {"prefix": {"doc_id": "arriving-"}}})["count"]
        deadline = time.monotonic() + 120
        while writer.is_alive() and time.monotonic() < deadline:
            search.indices.refresh(index=first_index)
            if arrived() > 0:
                break
            time.sleep(0.05)
        killed_at = time.monotonic()
        kill_slot(settings, first_slot)
    finally:
        writer.join(timeout=120)
    try:
        error = outcome.get("error")
        assert isinstance(error, Unreachable), outcome
        message = str(error)
        assert (
            "\n" not in message
            and endpoints.endpoint_name(settings, first_slot) in message
            and "failed 4 times" in message
        )
        # RetryPolicy(): 4 attempts, waits 0.25 + 0.5 + 1.0 s between them.
        assert outcome["failed_at"] - killed_at >= 1.5

        endpoints.deploy_local_slot(
            deployed.load(), first_slot, deployed.catalog.get(settings.slots.filled[first_slot])
        )
        written = orchestrator.dual_write(settings, deployed.catalog, arriving)
        assert set(written.values()) == {len(arriving)}
        for version in settings.slots.filled.values():
            name = settings.opensearch.index_name(version)
            search.indices.refresh(index=name)
            query = {"query": {"prefix": {"doc_id": "arriving-"}}}
            assert search.count(index=name, body=query)["count"] == len(arriving)
            stamps = search.search(
                index=name, body={**query, "size": 0, "aggs": {"v": {"terms": {"field": "model_version"}}}}
            )
            assert {b["key"]: b["doc_count"] for b in stamps["aggregations"]["v"]["buckets"]} == {
                version: len(arriving)
            }
    finally:
        for version in settings.slots.filled.values():
            name = settings.opensearch.index_name(version)
            reembed.write(search, reembed.delete_actions([d.id for d in arriving], name))
            search.indices.refresh(index=name)
        if endpoints.local_slot(settings, first_slot) is None:
            endpoints.deploy_local_slot(
                deployed.load(), first_slot, deployed.catalog.get(settings.slots.filled[first_slot])
            )
    assert live_index == settings.opensearch.index_name(deployed.load().pin)
    assert check.run(deployed.load(), deployed.catalog).passed


def test_endpoint_dying_during_the_checks_probe_exits_2_and_apply_restarts_it(deployed, monkeypatch):
    """The live slot answers /ping (the check's endpoint-artifact check passes), then dies before
    the re-embed probe: `lockstep check` cannot check — exit 2, one line naming the endpoint."""
    settings = deployed.load()
    real_describe = check._describe
    killed: list[int] = []

    def describe_then_die(endpoint):
        described = real_describe(endpoint)
        if not killed and endpoint.name == endpoints.endpoint_name(settings, settings.live_slot):
            killed.append(kill_slot(settings, settings.live_slot))
        return described

    monkeypatch.setattr(check, "_describe", describe_then_die)
    result = deployed.cli("check", "--stack", deployed.stack)
    monkeypatch.undo()

    assert killed, "the live slot was never described"
    assert result.exit_code == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert endpoints.endpoint_name(settings, settings.live_slot) in line and "failed 4 times" in line

    again = deployed.apply()
    assert again.exit_code == 0, again.stdout + again.stderr
    restarted = endpoints.local_slot(settings, settings.live_slot)
    assert restarted is not None and restarted.pid != killed[0]


# ------------------------------------------------------------------------------ 429 bulk rejections


def test_bulk_rejections_are_backed_off_and_retried_without_losing_a_document(servers, scratch_stack, opensearch):
    """The first two `_bulk` requests are answered 429 as a whole; after that every 3rd item of
    every other bulk is rejected with an item-level 429 (the rest written). The backfill ends
    with exactly the corpus."""
    stacks, stack = scratch_stack(corpus={"size": 1200}, backfill={"batchSize": 64})
    settings = config.load_stack(stack, stacks)
    bulks = {"n": 0}
    lock = threading.Lock()

    def rule(request: Request):
        if not request.is_("POST", "/_bulk"):
            return FORWARD
        with lock:
            n = bulks["n"]
            bulks["n"] += 1
        if n < 2:
            return answer(429, {"error": {"type": "rejected_execution_exception", "reason": "injected"}, "status": 429})
        return reject_items(every=3) if n % 2 == 0 else FORWARD

    with FaultProxy(servers["opensearch"], rule) as proxy:
        completed = lockstep(
            "backfill", "--stack", stack, "--version", "v1", "--quiet", env={"OPENSEARCH_URL": proxy.url}
        )
        assert completed.returncode == 0, completed.stderr
        assert proxy.count("answer", "POST", "/_bulk") == 2 and proxy.rejected_items > 0

    name = settings.opensearch.index_name("v1")
    opensearch.indices.refresh(index=name)
    corpus = {d.id: d.content_sha256 for d in corpus_store.read_corpus(clients.aws("s3"), settings)}
    assert index.doc_hashes(opensearch, name) == corpus
    assert opensearch.count(index=name)["count"] == len(corpus)
    assert live_state.count_by_model_version(opensearch, name)[1] == {"v1": len(corpus)}
    assert not index.in_bulk_mode(opensearch, name)
    opensearch.indices.delete(index=name)


# -------------------------------------------------------------------------------------------- load


def query_reader(alias: str, pointer_name: str, vector_file: str, stop_file: str, out_file: str) -> None:
    """Run in a second process: k-NN queries through the alias and alias/pointer samples until
    `stop_file` exists; write the figures to `out_file` as JSON."""
    search, ssm = clients.opensearch(timeout=10), clients.aws("ssm")
    vector = json.loads(Path(vector_file).read_text())
    body = {"size": 10, "_source": False, "query": {"knn": {"embedding": {"vector": vector, "k": 10}}}}
    figures = {"queries": 0, "by_indices": {}, "errors": [], "samples": 0, "disagreeing": 0, "windows_ms": []}
    window_started = None
    Path(out_file + ".ready").write_text("ready")
    while not Path(stop_file).exists():
        try:
            hits = search.search(index=alias, body=body)["hits"]["hits"]
            seen = len({hit["_index"] for hit in hits})
            figures["queries"] += 1
            figures["by_indices"][str(seen)] = figures["by_indices"].get(str(seen), 0) + 1
        except Exception as exc:  # every failure is a finding
            figures["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
        targets = live_state.alias_targets(search, alias)
        pointer = live_state.read_pointer(ssm, pointer_name)
        now = time.monotonic()
        figures["samples"] += 1
        if [t.rsplit("-", 1)[-1] for t in targets] != [pointer.version if pointer else None]:
            figures["disagreeing"] += 1
            window_started = window_started or now
        elif window_started is not None:
            figures["windows_ms"].append(round((now - window_started) * 1000, 1))
            window_started = None
    Path(out_file).write_text(json.dumps(figures))


def test_50_cutovers_while_another_process_queries_through_the_alias(deployed, tmp_path):
    settings = deployed.load()
    pin, other = settings.pin, settings.standby
    documents = corpus_store.read_corpus(clients.aws("s3"), settings)
    vector = model.load_artifact(model.build_artifact(model.SPECS[pin])).encode([documents[0].text])[0].tolist()
    (tmp_path / "vector.json").write_text(json.dumps(vector))
    stop, out = tmp_path / "stop", tmp_path / "figures.json"
    code = "import sys; from tests.test_faults import query_reader; query_reader(*sys.argv[1:])"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            settings.opensearch.alias_name,
            settings.pointer_name,
            str(tmp_path / "vector.json"),
            str(stop),
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    search, ssm = clients.opensearch(), clients.aws("ssm")
    try:
        runtime.wait_until(
            lambda: Path(str(out) + ".ready").exists() or reader.poll() is not None,
            "the reader process",
            "",
            timeout=60,
        )
        time.sleep(0.5)
        timings = []
        for round_ in range(50):
            version = other if round_ % 2 == 0 else pin
            started = time.perf_counter()
            live_state.cutover(
                search,
                ssm,
                settings,
                deployed.catalog.get(version),
                endpoints.endpoint_name(settings, settings.slots.slot_of(version)),
            )
            timings.append(time.perf_counter() - started)
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        stop.write_text("stop")
        _, stderr = reader.communicate(timeout=60)
    assert reader.returncode == 0, stderr
    figures = json.loads(out.read_text())
    windows = figures["windows_ms"]
    print(
        f"\n50 cutovers (p50 {sorted(timings)[25] * 1000:.1f} ms) under {figures['queries']} k-NN queries from "
        f"another process: answers by number of indices {figures['by_indices']}, errors {len(figures['errors'])}; "
        f"pointer/alias disagreed in {figures['disagreeing']} of {figures['samples']} samples, "
        f"{len(windows)} windows, longest {max(windows, default=0):.1f} ms"
    )
    assert figures["errors"] == []
    assert figures["queries"] >= 50
    assert set(figures["by_indices"]) == {"1"}, figures["by_indices"]  # never zero, never two indices
    assert max(windows, default=0) < 2000, windows  # the pointer follows the alias within one request
    assert deployed.live() == deployed.state_of(pin)
