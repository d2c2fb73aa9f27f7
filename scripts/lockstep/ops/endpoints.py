"""Endpoint clients (a local slot process or a SageMaker endpoint) and the local blue/green slots.

Both clients speak the same inference contract (`lockstep.serve`): `embed(texts)` returns float32
vectors, `describe()` says which version and artifact sha256 the endpoint serves. Transient
failures (connection errors, 5xx, 429, throttling) are retried with backoff; when retries run out
the caller gets one `Unreachable` line naming the endpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import requests
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from lockstep import runtime, services
from lockstep.config import CatalogEntry, StackSettings
from lockstep.errors import IntegrityError, LockstepError, Unreachable, UsageError
from lockstep.ops import artifacts, clients
from lockstep.serve import SHA_HEADER, artifact_in_attributes

SLOTS = ("blue", "green")
START_TIMEOUT = 60.0
MIXED = "mixed"  # `served_artifact` of an embed whose batches came from different artifacts
RETRYABLE_AWS_CODES = {
    "ThrottlingException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalServerError",
    "ModelNotReadyException",
}


# What SageMaker accepts as an endpoint, endpoint-configuration or model name.
SAGEMAKER_NAME = re.compile(r"^[A-Za-z0-9](-*[A-Za-z0-9])*$")
SAGEMAKER_NAME_MAX = 63


def sagemaker_name(*parts: str) -> str:
    """`parts` joined by '-' when SageMaker accepts that; else derived deterministically: every run of
    other characters becomes '-', the result is cut to fit and ends in 8 hex digits of the sha256 of
    the joined parts (so two stacks whose names differ only in `_` vs `.` never share an endpoint)."""
    joined = "-".join(parts)
    if len(joined) <= SAGEMAKER_NAME_MAX and SAGEMAKER_NAME.match(joined):
        return joined
    digest = hashlib.sha256(joined.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", joined).strip("-")
    return f"{cleaned[: SAGEMAKER_NAME_MAX - len(digest) - 1].rstrip('-')}-{digest}".lstrip("-")


def endpoint_name(settings: StackSettings, slot: str) -> str:
    """The SageMaker endpoint name of a slot (the program names it so), also the name local clients
    report: the one home of that name. `<namePrefix>-<stack>-<slot>`, or its derived form when the
    stack name makes that longer than 63 characters or puts `_`/`.` in it (`sagemaker_name`)."""
    return sagemaker_name(settings.name_prefix, settings.stack, slot)


def process_name(settings: StackSettings, slot: str) -> str:
    """The local slot process's name in the services run dir."""
    return f"endpoint-{settings.stack}-{slot}"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_wait: float = 0.25
    max_wait: float = 4.0


class Transient(Exception):
    """A failure worth retrying (connection refused, 5xx, 429); becomes Unreachable when retries run out."""


class NotDeployed(Unreachable):
    """The slot's endpoint does not exist: nothing is deployed there (the plan deploys it)."""


class NoProcess(NotDeployed):
    """A local slot whose process is not running: nothing serves there."""


class EndpointClient(ABC):
    name: str
    url: str | None
    max_batch: int
    retry: RetryPolicy
    # The artifact the last `embed` says its vectors came from (a local slot's response header, a
    # SageMaker answer's CustomAttributes), else None: `lockstep.reader` refuses a query vector of
    # another artifact than its pointer names. Batches that name different artifacts: MIXED.
    served_artifact: str | None = None

    @abstractmethod
    def _invoke(self, texts: list[str]) -> list:
        """One request of at most max_batch texts -> the decoded JSON list of vectors."""

    @abstractmethod
    def _describe(self) -> dict:
        """{version, artifact_sha256} as the endpoint itself reports them."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dimension), sent in batches of at most max_batch; (0, 0) for no texts."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        batches, served = [], set()
        for start in range(0, len(texts), self.max_batch):
            batches.append(self._retrying(self._invoke, texts[start : start + self.max_batch]))
            served.add(self.served_artifact)
        self.served_artifact = served.pop() if len(served) == 1 else MIXED  # redeployed between two batches
        vectors = np.asarray([row for batch in batches for row in batch], dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise IntegrityError(f"endpoint {self.name} returned {vectors.shape} for {len(texts)} texts; redeploy it")
        return vectors

    def describe(self) -> dict:
        described = self._retrying(self._describe)
        return {**described, "name": self.name, "url": self.url}

    def _retrying(self, call: Callable, *args):
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential(multiplier=self.retry.initial_wait, max=self.retry.max_wait),
            retry=retry_if_exception_type(Transient),
            reraise=True,
        )
        try:
            return retrying(call, *args)
        except Transient as exc:
            raise Unreachable(
                f"endpoint {self.name} at {self.url} failed {self.retry.attempts} times ({exc}); "
                "check `lockstep services status` and the endpoint's log, or redeploy with `lockstep apply`"
            ) from None


# ---------------------------------------------------------------------------------------- local


class LocalEndpoint(EndpointClient):
    """A slot process on loopback (`python -m lockstep.serve`). `url` None: the slot is not running."""

    def __init__(
        self,
        name: str,
        url: str | None,
        max_batch: int = 256,
        retry: RetryPolicy = RetryPolicy(),
        pid: int | None = None,
        timeout: float = 30,
    ):
        self.name, self.url, self.max_batch, self.retry, self.pid, self.timeout = (
            name,
            url,
            max_batch,
            retry,
            pid,
            timeout,
        )
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"LocalEndpoint({self.name!r}, {self.url!r}, pid={self.pid})"

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        if self.url is None:
            raise NoProcess(f"endpoint {self.name} has no running process; run `lockstep apply` to deploy its slot")
        try:
            response = self._session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise Transient(type(exc).__name__) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise UsageError(
                f"endpoint {self.name} refused the request (HTTP {response.status_code}: {_reason(response)})"
            )
        return response

    def _invoke(self, texts: list[str]) -> list:
        response = self._request("POST", "/invocations", json={"inputs": texts})
        self.served_artifact = response.headers.get(SHA_HEADER)
        return response.json()

    def _describe(self) -> dict:
        ping = self._request("GET", "/ping").json()
        return {key: ping.get(key) for key in ("version", "artifact_sha256", "max_batch")}


def _reason(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", ""))[:200]
    except (ValueError, AttributeError):
        return response.text[:200]


# ------------------------------------------------------------------------------------ sagemaker


class SageMakerEndpoint(EndpointClient):
    """A SageMaker real-time endpoint: invoke_endpoint to embed, the control plane to describe.

    `describe` reads the version and sha256 from the model's content-addressed ModelDataUrl, so it
    reports what the endpoint was deployed with, not what a container claims.
    """

    def __init__(
        self,
        name: str,
        region: str,
        max_batch: int = 256,
        retry: RetryPolicy = RetryPolicy(),
        profile: str | None = None,
    ):
        """`profile`: the stack's AWS profile (`aws:profile`), as every other client of the stack uses."""
        self.name, self.region, self.max_batch, self.retry, self.profile = name, region, max_batch, retry, profile
        self.url = f"sagemaker://{region}/{name}"

    def _call(self, service: str, operation: str, **kwargs) -> dict:
        client = clients.aws(service, self.region, embedded=False, profile=self.profile)
        try:
            return getattr(client, operation)(**kwargs)
        except clients.NO_CREDENTIALS:
            raise clients.missing_credentials(f"SageMaker endpoint {self.name} in {self.region}") from None
        except (BotoCoreError, ConnectionError) as exc:
            raise Transient(type(exc).__name__) from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if error.get("Code") in clients.CREDENTIAL_CODES:
                raise UsageError(
                    f"SageMaker endpoint {self.name} in {self.region} refused our credentials ({error.get('Code')}); "
                    "check the AWS credentials and the role's sagemaker permissions (docs/iam.md)"
                ) from None
            if error.get("Code") in RETRYABLE_AWS_CODES or status == 429 or status >= 500:
                raise Transient(f"{error.get('Code')} HTTP {status}") from None
            message = error.get("Message", "")
            if error.get("Code") == "ResourceNotFound" or "Could not find" in message or "not found" in message:
                raise NotDeployed(
                    f"SageMaker endpoint {self.name} does not exist in {self.region} ({message}); deploy it with `pulumi up`"
                ) from None
            raise LockstepError(
                f"SageMaker {operation} for {self.name} failed: {error.get('Code')}: {message}"
            ) from None

    def _invoke(self, texts: list[str]) -> list:
        response = self._call(
            "sagemaker-runtime",
            "invoke_endpoint",
            EndpointName=self.name,
            ContentType="application/json",
            Accept="application/json",
            Body=json.dumps({"inputs": texts}),
        )
        self.served_artifact = artifact_in_attributes(response.get("CustomAttributes"))
        try:
            return json.loads(response["Body"].read())
        except ValueError:
            raise IntegrityError(
                f"SageMaker endpoint {self.name} did not answer with JSON vectors; check its image"
            ) from None

    def _describe(self) -> dict:
        endpoint = self._call("sagemaker", "describe_endpoint", EndpointName=self.name)
        config = self._call("sagemaker", "describe_endpoint_config", EndpointConfigName=endpoint["EndpointConfigName"])
        urls: set[str] = set()
        for variant in config["ProductionVariants"]:
            model = self._call("sagemaker", "describe_model", ModelName=variant["ModelName"])
            containers = [model["PrimaryContainer"]] if model.get("PrimaryContainer") else model.get("Containers", [])
            urls.update(c["ModelDataUrl"] for c in containers if c.get("ModelDataUrl"))
        if len(urls) != 1:
            raise IntegrityError(
                f"SageMaker endpoint {self.name} serves {len(urls)} model artifacts ({', '.join(sorted(urls)) or 'none'}); "
                "a lockstep slot serves exactly one — redeploy it with `pulumi up`"
            )
        [url] = urls
        parsed = artifacts.parse_artifact_url(url)
        return {
            "version": parsed["version"],
            "artifact_sha256": parsed["sha256"],
            "model_data_url": url,
            "status": endpoint.get("EndpointStatus"),
            "endpoint_config": endpoint["EndpointConfigName"],
            "arn": endpoint.get("EndpointArn"),
        }


def endpoint_for(settings: StackSettings, slot: str, retry: RetryPolicy = RetryPolicy()) -> EndpointClient:
    """The client for a slot of this stack, by `endpoints.backend`. Never raises for a stopped slot:
    using the client does (`Unreachable`)."""
    if slot not in SLOTS:
        raise UsageError(f"slot {slot!r} is neither blue nor green")
    if settings.endpoints.backend == "sagemaker":
        return SageMakerEndpoint(
            endpoint_name(settings, slot), settings.region, settings.endpoints.max_batch, retry, settings.aws_profile
        )
    return local_slot(settings, slot, retry) or LocalEndpoint(
        endpoint_name(settings, slot), None, settings.endpoints.max_batch, retry
    )


def deployed(settings: StackSettings, slot: str) -> dict | None:
    """What the slot serves now, {version, artifact_sha256}, as the endpoint itself says: for SageMaker
    endpoint -> endpoint config -> model -> ModelDataUrl (content-addressed); locally the slot
    process. None when nothing is deployed there; a slot that cannot be read raises Unreachable."""
    if settings.endpoints.backend == "sagemaker":
        try:
            return endpoint_for(settings, slot).describe()
        except NotDeployed:
            return None
    running = local_slot(settings, slot)
    return running.describe() if running else None


def require_serving(settings: StackSettings, slot: str, entry: CatalogEntry, config: str | None = None) -> str:
    """The slot's endpoint name, once the endpoint itself says it serves `entry`'s artifact, InService,
    on `config` when given (the SageMaker endpoint configuration this update created); else refuse.

    An update that SageMaker rolled back (alarm) leaves the endpoint InService on the old configuration,
    which a wait for InService takes for success. Comparing the configuration catches a rolled-back
    update that kept the version (a new image, instance type or count), which the sha256 alone cannot.
    """
    endpoint = endpoint_for(settings, slot)
    described = endpoint.describe()
    status = described.get("status", "InService")  # SageMaker reports it; a local slot that answers is serving
    running = described.get("endpoint_config")
    if (
        described.get("artifact_sha256") != entry.artifact_sha256
        or status != "InService"
        or (config is not None and running != config)
    ):
        served = f"{described.get('version')} (artifact {str(described.get('artifact_sha256'))[:12]}…, {status}"
        served += f", configuration {running})" if config is not None else ")"
        wanted = f"{entry.version} (artifact {entry.artifact_sha256[:12]}…"
        wanted += f", configuration {config})" if config is not None else ")"
        raise IntegrityError(
            f"endpoint {endpoint.name} serves {served}, not {wanted}: refusing to point the live alias at "
            f"{settings.pin}; nothing was switched — redeploy the {slot} slot (its update may have been "
            "rolled back) and rerun"
        )
    return endpoint.name


def require_slots_serving(
    settings: StackSettings, entries: dict[str, CatalogEntry], configs: dict[str, str] | None = None
) -> str:
    """`require_serving` for every filled slot (`entries`: slot -> the version it must serve), the
    standby too: its update rolled back is as much a failed update. Returns the live endpoint's name."""
    for slot in sorted(entries, key=lambda name: name != settings.live_slot):  # the live slot first
        name = require_serving(settings, slot, entries[slot], (configs or {}).get(slot))
        if slot == settings.live_slot:
            live = name
    return live


# ----------------------------------------------------------------------------------- local slots


def local_slot(settings: StackSettings, slot: str, retry: RetryPolicy = RetryPolicy()) -> LocalEndpoint | None:
    """The slot's running process (from the run dir), or None when it is not alive."""
    managed = runtime.Managed.load(process_name(settings, slot))
    if managed is None or not managed.alive():
        return None
    return LocalEndpoint(
        endpoint_name(settings, slot), managed.url, settings.endpoints.max_batch, retry, pid=managed.pid
    )


def _serves(endpoint: LocalEndpoint, entry: CatalogEntry, max_batch: int) -> bool:
    """Whether the process serves `entry`'s artifact with the stack's batch limit (a changed
    endpoints.maxBatch restarts it: the update does what its diff says)."""
    try:
        described = endpoint.describe()
    except LockstepError:
        return False
    return described.get("artifact_sha256") == entry.artifact_sha256 and described.get("max_batch") == max_batch


def deploy_local_slot(
    settings: StackSettings, slot: str, entry: CatalogEntry, timeout: float = START_TIMEOUT
) -> LocalEndpoint:
    """Run `entry` in the slot: nothing happens if it already serves that artifact with the stack's
    batch limit; otherwise the running process is stopped and replaced. The process loads the
    artifact from S3 (which must be published)."""
    name = process_name(settings, slot)
    current = local_slot(settings, slot, RetryPolicy(attempts=2, initial_wait=0.2))
    if current is not None and _serves(current, entry, settings.endpoints.max_batch):
        return current
    stale = runtime.Managed.load(name)
    if stale is not None:
        stale.stop()
    port = runtime.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        # The slot loads its artifact from S3; it never talks to OpenSearch: no OpenSearch password.
        **{k: v for k, v in os.environ.items() if k != clients.PASSWORD_VARIABLE},
        **services.environment(),  # the same moto / OpenSearch as this process
        "LOCKSTEP_ARTIFACT_BUCKET": settings.artifacts.bucket,
        "LOCKSTEP_ARTIFACT_KEY": entry.artifact_key,
        "LOCKSTEP_ARTIFACT_SHA256": entry.artifact_sha256,
        "LOCKSTEP_MAX_BATCH": str(settings.endpoints.max_batch),
        "AWS_DEFAULT_REGION": settings.region,
    }
    managed = runtime.spawn(
        name, [sys.executable, "-m", "lockstep.serve", "--host", "127.0.0.1", "--port", str(port)], url, env=env
    )
    probe = LocalEndpoint(endpoint_name(settings, slot), url, retry=RetryPolicy(attempts=1), timeout=2)
    try:
        runtime.wait_until(
            lambda: _serves(probe, entry, settings.endpoints.max_batch),
            f"endpoint {name} ({entry.version})",
            managed.log,
            timeout=timeout,
            alive=managed.alive,
        )
    except Unreachable as exc:
        managed.stop()
        raise Unreachable(f"{exc}{_last_line(managed.log)}") from None
    return LocalEndpoint(endpoint_name(settings, slot), url, settings.endpoints.max_batch, pid=managed.pid)


def _last_line(log_path: str) -> str:
    try:
        lines = [
            line for line in open(log_path, encoding="utf-8", errors="replace").read().splitlines() if line.strip()
        ]
    except OSError:
        return ""
    return f" (last line: {lines[-1].strip()[:300]})" if lines else ""


def stop_local_slots(settings: StackSettings) -> list[str]:
    """Stop this stack's slot processes; return the names of those that were recorded."""
    stopped = []
    for slot in SLOTS:
        managed = runtime.Managed.load(process_name(settings, slot))
        if managed is not None:
            managed.stop()
            stopped.append(managed.name)
    return stopped
