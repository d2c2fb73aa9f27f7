"""The Ray Jobs client: a backfill on `backfill.address` runs as a Ray job that outlives the client.

`lockstep backfill` submits the job (or re-attaches to the one running for the same stack and
version), prints its id, then follows its log; Ctrl-C detaches (exit 130) and the job keeps
running; `--attach JOB_ID` follows one by id. Inside the job, `main` runs the pipeline
(ray_pipeline) on the job's cluster and prints the result as one marked line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from urllib.parse import urlsplit

from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import LockstepError, Unreachable, UsageError
from lockstep.ops.backfill import core, ray_pipeline

JOB_PAYLOAD = "LOCKSTEP_RAY_JOB"
RESULT_MARK = "LOCKSTEP_RESULT "
# The Jobs API answers on the dashboard port; a `ray://host:10001` (Ray Client) address names
# the same head node, whose dashboard listens here unless it was started otherwise.
DASHBOARD_PORT = 8265
RUNNING = {"PENDING", "RUNNING"}
SUBMIT_WAIT = 90  # seconds to wait for a fresh head node's job agent


class Detached(LockstepError):
    """The client stopped following a Ray job that keeps running (Ctrl-C)."""

    exit_code = 130


def job_address(address: str) -> str:
    """The Jobs API address of a cluster: http(s)://host:port as is; ray://host:port → its
    dashboard (http://host:8265); host:port → http://host:port."""
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise UsageError(f"backfill.address {address!r} names no host; use http://HOST:8265 or ray://HOST:10001")
        return f"{parts.scheme}://{parts.netloc}"
    if parts.scheme == "ray" and parts.hostname:
        return f"http://{parts.hostname}:{DASHBOARD_PORT}"
    raise UsageError(
        f"backfill.address {address!r} is not a Ray address; use http://HOST:8265 (Jobs API) or ray://HOST:10001"
    )


def job_client(address: str):
    """A JobSubmissionClient for the cluster, or one `Unreachable` line."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = job_address(address)
    try:
        return JobSubmissionClient(url)
    except AuthenticationError:
        raise UsageError(
            f"Ray cluster at {url} requires a token: set RAY_AUTH_TOKEN (and RAY_AUTH_MODE=token) "
            "to the cluster's token"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Unreachable(
            f"Ray cluster at {url} (backfill.address {address}) is unreachable ({type(exc).__name__}); "
            "start it (`ray start --head`) or fix backfill.address"
        ) from None


def job_metadata(settings: StackSettings, entry: CatalogEntry) -> dict[str, str]:
    return {
        "lockstep_stack": settings.stack,
        "lockstep_version": entry.version,
        "lockstep_index": settings.opensearch.index_name(entry.version),
    }


def running_job(client, settings: StackSettings, entry: CatalogEntry) -> str | None:
    """A backfill job for the same stack, version and index that is still pending or running."""
    wanted = job_metadata(settings, entry)
    for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True):
        metadata = job.metadata or {}
        running = str(job.status) in RUNNING or getattr(job.status, "value", None) in RUNNING
        if running and all(metadata.get(k) == v for k, v in wanted.items()) and job.submission_id:
            return job.submission_id
    return None


def submit_job(client, settings: StackSettings, entry: CatalogEntry, full: bool) -> str:
    payload = {
        "settings": settings.model_dump(by_alias=True, mode="json"),
        "entry": entry.model_dump(by_alias=True, mode="json"),
        "full": full,
    }
    job_id = f"lockstep-backfill-{settings.stack}-{entry.version}-{uuid.uuid4().hex[:8]}".lower()
    deadline = time.monotonic() + SUBMIT_WAIT
    while True:
        try:
            return client.submit_job(
                entrypoint="python -m lockstep.ops.backfill.ray_jobs",
                submission_id=job_id,
                runtime_env={"env_vars": {**ray_pipeline.worker_env(settings), JOB_PAYLOAD: json.dumps(payload)}},
                metadata=job_metadata(settings, entry),
                entrypoint_num_cpus=0,
            )
        except RuntimeError as exc:
            # A head node that just started has no job agent yet ("No available agent ... try again").
            if "no available agent" not in str(exc).lower() or time.monotonic() > deadline:
                raise LockstepError(
                    f"the Ray cluster refused the backfill job: {' '.join(str(exc).split())[:300]}"
                ) from None
            time.sleep(2)


def _status(client, job_id: str) -> str:
    status = client.get_job_status(job_id)
    return getattr(status, "value", str(status))


def run_job(
    settings: StackSettings,
    entry: CatalogEntry,
    progress: bool = True,
    full: bool = False,
    attach: str | None = None,
    say: Callable[[str], None] | None = None,
    poll: float = 1.0,
) -> core.BackfillResult:
    """Submit the backfill as a Ray job (or re-attach to one) and follow it to the end."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    address = settings.backfill.address or ""
    client = job_client(address)
    try:
        if attach:
            try:
                _status(client, attach)
            except RuntimeError:
                raise UsageError(
                    f"--attach {attach}: no such Ray job at {job_address(address)}; "
                    "list jobs with `ray job list --address ...`"
                ) from None
            job_id, how = attach, "attached to"
        elif running := running_job(client, settings, entry):
            job_id, how = running, "re-attached to running"
        else:
            job_id, how = submit_job(client, settings, entry, full), "submitted"
    except (ConnectionError, OSError) as exc:
        raise Unreachable(
            f"Ray cluster at {job_address(address)} is unreachable ({type(exc).__name__}); "
            "start it or fix backfill.address"
        ) from None
    try:  # from the moment the id is known, Ctrl-C detaches: the job is the cluster's now
        with interrupts_detach():
            say(
                f"ray job {job_id}: {how} at {job_address(address)} "
                f"(re-attach: lockstep backfill --stack {settings.stack} --version {entry.version} --attach {job_id})"
            )
            return follow(client, job_id, say, progress, poll)
    except KeyboardInterrupt:
        raise detached(job_id) from None


@contextmanager
def interrupts_detach():
    """SIGINT and SIGTERM raise KeyboardInterrupt here, whatever this process inherited. A shell
    starts a background command (`lockstep backfill ... &`, a CI step) with SIGINT ignored and
    Python keeps it so: a Ctrl-C or `kill -INT` was swallowed and the client followed the job to
    its end; a TERM (a CI cancel) ended it without saying how to re-attach. Stopping to follow is
    always safe (the job keeps running). Only the main thread takes signals; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def detached(job_id: str) -> Detached:
    return Detached(
        f"detached from ray job {job_id}; it keeps running — re-attach with `lockstep backfill ... --attach {job_id}`"
    )


def follow(
    client, job_id: str, say: Callable[[str], None], progress: bool = True, poll: float = 1.0
) -> core.BackfillResult:
    """Print the job's log as it grows until it ends (Ctrl-C: see run_job)."""
    shown = 0
    while True:
        status = _status(client, job_id)
        logs = client.get_job_logs(job_id)
        if progress and len(logs) > shown:
            for line in logs[shown:].splitlines():
                if line.strip() and not line.startswith(RESULT_MARK):
                    say(f"  [{job_id[-8:]}] {line}")
        shown = len(logs)
        if status not in RUNNING:
            break
        time.sleep(poll)
    result = next((line[len(RESULT_MARK) :] for line in logs.splitlines() if line.startswith(RESULT_MARK)), None)
    if status != "SUCCEEDED" or result is None:
        said = [line for line in logs.splitlines() if line.startswith("lockstep: ")]
        message = [line for line in (client.get_job_info(job_id).message or status).splitlines() if line.strip()]
        reason = said[-1].removeprefix("lockstep: ") if said else message[-1][:500]
        raise LockstepError(f"ray job {job_id} {status.lower()}: {reason}")
    data = json.loads(result)
    data.pop("job_id", None)
    say(f"ray job {job_id}: succeeded")
    return core.BackfillResult(**data)


def main() -> None:
    """The Ray job's entrypoint (`python -m lockstep.ops.backfill.ray_jobs`): run the pipeline on
    the cluster the job runs in and print the result as one marked JSON line."""
    payload = json.loads(os.environ[JOB_PAYLOAD])
    settings = StackSettings.model_validate(payload["settings"])
    entry = CatalogEntry.model_validate(payload["entry"])
    try:
        result = ray_pipeline.sync_index(settings, entry, progress=True, full=payload.get("full", False))
    except LockstepError as exc:
        print(f"lockstep: {exc}", flush=True)
        sys.exit(exc.exit_code)
    print(RESULT_MARK + json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main()
