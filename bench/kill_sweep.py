"""Kill sweep: SIGKILL `lockstep backfill` at random moments, then prove a re-run loses nothing.

    python -m bench.kill_sweep [--points 20] [--docs 2000] [--seed N]

On a scratch stack (v1 live: alias + pointer; v2 in the green slot), `lockstep backfill --version
v2` is started as a subprocess and killed with SIGKILL, `--points` times in all:
- provision: half the kills land when the v2 index holds a random number of documents (measured
  by doc count), half at a random time past the interpreter's start-up (which also hits the
  artifact publish, the delta scan, bulk-mode switches, deletes and `_meta` writes);
- catch-up: the corpus is then edited (~40 % of texts changed, ~8 % deleted, ~8 % new) and the
  catch-up is killed the same two ways (progress = new + re-embedded documents written).
After each phase one run is let finish. Then: the index holds exactly the corpus' ids, once each,
every document with `model_version` v2 and the corpus' `content_sha256`, it is out of bulk mode,
and a sampler that read the live alias and pointer all along never saw them move off v1.

The test suite runs the same sweep with 3-5 points (tests/test_faults.py); this is the big one.
Figures go to stdout and bench/results/kill_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from lockstep import config, services, stackfile  # noqa: E402
from lockstep.ops import artifacts, clients, corpus_store, endpoints, index, live_state  # noqa: E402
from lockstep.ops.backfill import engine as backfill_engine  # noqa: E402
from lockstep.ops.corpus import Document  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "kill_sweep.json"
VERSION = "v2"


@dataclass
class Kill:
    phase: str
    how: str  # "docs>=N" or "after S s"
    docs_at_kill: int
    exited_before_kill: bool = False


@dataclass
class SweepResult:
    kills: list[Kill] = field(default_factory=list)
    finishing_runs: int = 0
    corpus_size: int = 0
    indexed: int = 0
    lost: list[str] = field(default_factory=list)  # corpus ids missing from the index
    extra: list[str] = field(default_factory=list)  # index ids not in the corpus
    wrong_hash: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    left_in_bulk_mode: bool = False
    live_samples: int = 0
    live_moved: list[str] = field(default_factory=list)  # what the sampler saw when alias/pointer left v1

    @property
    def landed(self) -> int:
        return sum(1 for k in self.kills if not k.exited_before_kill)

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.extra
            and not self.wrong_hash
            and self.versions == {VERSION: self.corpus_size}
            and self.indexed == self.corpus_size
            and not self.left_in_bulk_mode
            and not self.live_moved
        )

    def summary(self) -> dict:
        return {
            **asdict(self),
            "landed": self.landed,
            "ok": self.ok,
            "lost": self.lost[:20],
            "extra": self.extra[:20],
            "wrong_hash": self.wrong_hash[:20],
        }


def backfill_argv(stack: str) -> list[str]:
    return [sys.executable, "-m", "lockstep.cli", "backfill", "--stack", stack, "--version", VERSION, "--quiet"]


def make_stack(stacks_dir: Path, name: str, docs: int, batch_size: int = 16) -> config.StackSettings:
    """A stack file for the sweep: v1 live in blue, v2 in green, small embedding batches."""
    stackfile.write_stack(
        stacks_dir,
        name,
        {
            "pin": "v1",
            "slots": {"blue": "v1", "green": VERSION},
            "artifacts": {"bucket": f"{name}-artifacts"},
            "corpus": {"bucket": f"{name}-corpus", "size": docs},
            "opensearch": {"indexPrefix": name},
            "endpoints": {"backend": "local"},
            "backfill": {"batchSize": batch_size},
            "pointerParameter": f"/{name}/live",
        },
    )
    return config.load_stack(name, stacks_dir)


def go_live_on_v1(settings: config.StackSettings, catalog: config.Catalog) -> None:
    """v1's index built and cut over (alias + pointer), without endpoint processes: the live side
    the sweep must never move."""
    s3 = clients.aws_for(settings, "s3")
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    corpus_store.ensure_corpus(s3, settings)
    entry = catalog.get("v1")
    artifacts.publish_artifact(s3, settings, entry)
    backfill_engine.sync_index(settings, entry, progress=False)
    live_state.cutover(
        clients.opensearch(settings.opensearch),
        clients.aws_for(settings, "ssm"),
        settings,
        entry,
        endpoints.endpoint_name(settings, "blue"),
    )


class LiveSampler:
    """Reads the live alias and pointer until stopped; remembers every sample not on v1."""

    def __init__(self, settings: config.StackSettings):
        self.settings = settings
        self.expected = ([settings.opensearch.index_name("v1")], "v1")
        self.samples = 0
        self.moved: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        client = clients.opensearch(self.settings.opensearch)
        ssm = clients.aws_for(self.settings, "ssm")
        while not self.stop.is_set():
            targets = live_state.alias_targets(client, self.settings.opensearch.alias_name)
            pointer = live_state.read_pointer(ssm, self.settings.pointer_name)
            seen = (targets, pointer.version if pointer else None)
            self.samples += 1
            if seen != self.expected and len(self.moved) < 50:
                self.moved.append(f"alias {targets} pointer {seen[1]}")
            self.stop.wait(0.05)

    def __enter__(self) -> LiveSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def indexed_count(client, name: str) -> int:
    if not client.indices.exists(index=name):
        return 0
    client.indices.refresh(index=name)
    return client.count(index=name)["count"]


def run_and_kill(argv: list[str], env: dict, *, until=None, after: float | None = None, timeout: float = 300) -> bool:
    """Start `argv`; SIGKILL it once `until()` is true or `after` seconds passed. True if it was
    killed, False if it exited on its own first."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = time.monotonic()
    try:
        while process.poll() is None:
            if (after is not None and time.monotonic() - started >= after) or (until is not None and until()):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{' '.join(argv)} ran past {timeout:.0f}s")
            time.sleep(0.02 if after is not None else 0.05)
        if process.returncode != 0:
            raise RuntimeError(f"backfill failed (exit {process.returncode}): {process.stderr.read().decode()[-500:]}")
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def finish(argv: list[str], env: dict) -> None:
    completed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        raise RuntimeError(f"the finishing backfill failed (exit {completed.returncode}): {completed.stderr[-500:]}")


def edit_corpus(settings: config.StackSettings, rng: random.Random) -> list[Document]:
    """A catch-up's worth of change: ~40 % of texts changed, ~8 % deleted, ~8 % new."""
    s3 = clients.aws_for(settings, "s3")
    documents = corpus_store.read_corpus(s3, settings)
    edited = []
    for doc in documents:
        roll = rng.random()
        if roll < 0.08:
            continue
        edited.append(replace(doc, text=doc.text + f" (revised {rng.randrange(10**6)})") if roll < 0.48 else doc)
    edited += [
        Document(f"new-{n}", f"Newly arrived document {n}: {documents[n % len(documents)].text[:300]}")
        for n in range(max(1, len(documents) * 8 // 100))
    ]
    corpus_store.write_corpus(s3, settings, edited)
    return edited


def startup_seconds(env: dict) -> float:
    """How long a `lockstep` process takes before it does anything (imports): kills by time
    are drawn after that, so they land in the work, not in the interpreter's start-up."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import lockstep.cli"], env=env, check=True)
    return time.monotonic() - started


def catch_up_progress(client, name: str) -> int:
    """Documents the catch-up already wrote: new ones and re-embedded revised ones."""
    client.indices.refresh(index=name)
    body = {"query": {"bool": {"should": [{"prefix": {"doc_id": "new-"}}, {"match_phrase": {"text": "revised"}}]}}}
    return client.count(index=name, body=body)["count"]


def sweep(
    settings: config.StackSettings,
    catalog: config.Catalog,
    stacks_dir: Path,
    points: int,
    rng: random.Random,
    say=print,
) -> SweepResult:
    """Provision v2 with kills, finish; edit the corpus; catch up with kills, finish; verify.
    Kills alternate between a progress mark (documents written) and a random time."""
    env = {**os.environ, "LOCKSTEP_STACKS_DIR": str(stacks_dir)}
    argv = backfill_argv(settings.stack)
    client = clients.opensearch(settings.opensearch)
    name = settings.opensearch.index_name(VERSION)
    size = len(corpus_store.read_corpus(clients.aws_for(settings, "s3"), settings))
    result = SweepResult()
    provision_points = max(1, (points * 3 + 1) // 5)
    boot = startup_seconds(env)

    def kill(phase: str, n: int, progress, todo: int) -> None:
        current = progress()
        if n % 2 == 0 and current < todo - 2:
            target = rng.randint(current + 1, todo - 1)
            killed = run_and_kill(argv, env, until=lambda: progress() >= target)
            how = f"{phase} progress>={target}"
        else:
            delay = boot + rng.uniform(0.0, 2.5)
            killed = run_and_kill(argv, env, after=delay)
            how = f"after {delay:.2f} s"
        result.kills.append(Kill(phase, how, indexed_count(client, name), not killed))
        say(
            f"  {phase} kill {n + 1}: {how}; progress {progress()}/{todo}, {result.kills[-1].docs_at_kill} docs in the index"
            + (" (exited before the kill)" if not killed else "")
        )

    with LiveSampler(settings) as sampler:
        for n in range(provision_points):
            kill("provision", n, lambda: indexed_count(client, name), size)
        finish(argv, env)
        result.finishing_runs += 1
        documents = edit_corpus(settings, rng)
        todo = sum(1 for d in documents if d.id.startswith("new-") or "(revised" in d.text)
        for n in range(points - provision_points):
            kill("catch_up", n, lambda: catch_up_progress(client, name), todo)
        finish(argv, env)
        result.finishing_runs += 1
    result.live_samples, result.live_moved = sampler.samples, sampler.moved
    verify(settings, client, documents, result)
    return result


def verify(settings: config.StackSettings, client, documents: list[Document], result: SweepResult) -> None:
    name = settings.opensearch.index_name(VERSION)
    client.indices.refresh(index=name)
    stored = index.doc_hashes(client, name)
    truth = {d.id: d.content_sha256 for d in documents}
    result.corpus_size = len(truth)
    result.indexed = client.count(index=name)["count"]
    result.lost = sorted(set(truth) - set(stored))
    result.extra = sorted(set(stored) - set(truth))
    result.wrong_hash = sorted(i for i in set(truth) & set(stored) if stored[i] != truth[i])
    result.versions = live_state.count_by_model_version(client, name)[1]
    result.left_in_bulk_mode = index.in_bulk_mode(client, name)


def cleanup(settings: config.StackSettings) -> None:
    client = clients.opensearch(settings.opensearch)
    client.indices.delete(index=f"{settings.opensearch.index_prefix}-*", params={"ignore_unavailable": "true"})
    ssm = clients.aws_for(settings, "ssm")
    try:
        ssm.delete_parameter(Name=settings.pointer_name)
    except ssm.exceptions.ParameterNotFound:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(10**6)

    states = services.up()
    os.environ.update(services.environment())
    catalog = config.load_catalog()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        stacks_dir = Path(scratch) / "stacks"
        settings = make_stack(stacks_dir, f"kill{uuid.uuid4().hex[:8]}", args.docs)
        try:
            go_live_on_v1(settings, catalog)
            print(
                f"kill sweep: {args.points} SIGKILLs of `lockstep backfill --version {VERSION}` "
                f"({args.docs} docs, seed {seed})",
                flush=True,
            )
            result = sweep(
                settings,
                catalog,
                stacks_dir,
                args.points,
                random.Random(seed),
                say=lambda line: print(line, flush=True),
            )
        finally:
            cleanup(settings)
            started_here = [s.name for s in states if s.source == "started"]
            if started_here and os.environ.get("LOCKSTEP_KEEP_SERVICES") != "1":
                services.down(started_here)
    summary = {
        "seed": seed,
        "docs": args.docs,
        "points": args.points,
        "seconds": round(time.monotonic() - started, 1),
        **result.summary(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"kills landed   {result.landed} of {len(result.kills)} "
        f"({sum(1 for k in result.kills if k.phase == 'provision' and not k.exited_before_kill)} in provision, "
        f"{sum(1 for k in result.kills if k.phase == 'catch_up' and not k.exited_before_kill)} in catch-up)"
    )
    print(
        f"final index    {result.indexed} docs for a corpus of {result.corpus_size}; lost {len(result.lost)}, "
        f"extra {len(result.extra)}, wrong content_sha256 {len(result.wrong_hash)}, versions {result.versions}, "
        f"bulk mode left on: {result.left_in_bulk_mode}"
    )
    print(f"live alias     {result.live_samples} samples, moved off v1 in {len(result.live_moved)}")
    print(f"{'OK' if result.ok else 'FAILED'} in {summary['seconds']} s → {RESULTS}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
