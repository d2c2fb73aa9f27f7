"""The `endpoint` family: no local weights; a version is a serving endpoint lockstep cannot load.

The artifact holds one file, `endpoint.json`:

    {"url": "https://…", "dimension": 768, "normalized": true,
     "batch_size": 32, "rate": 50, "timeout": 30, "attempts": 5}

Encoding POSTs `{"inputs": [...]}` to `<url>/invocations` (the SageMaker container contract that
`lockstep.serve` speaks too) in batches of `batch_size`, at most `rate` texts per second (0: no
limit), retrying connection errors, 429 and 5xx with exponential backoff (`attempts` tries). The
url is part of the artifact, so it is pinned by the catalog's sha256 like any weights.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from lockstep import models
from lockstep.errors import IntegrityError, Unreachable

FAMILY = "endpoint"
FILE = "endpoint.json"
DEFAULTS = {"normalized": False, "batch_size": 32, "rate": 0.0, "timeout": 30.0, "attempts": 5}


class Retry(Exception):
    """A failure worth another try (connection, 429, 5xx)."""


def read_config(directory: Path) -> dict:
    path = directory / FILE
    try:
        config = {**DEFAULTS, **json.loads(path.read_text(encoding="utf-8"))}
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: missing or not JSON ({exc}); an endpoint artifact holds {FILE}") from None
    url, dimension = config.get("url"), config.get("dimension")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise IntegrityError(f"{path}: url {url!r} must be an http(s) URL of the serving endpoint")
    if not isinstance(dimension, int) or dimension <= 0:
        raise IntegrityError(f"{path}: dimension {dimension!r} must be a positive integer")
    if not (isinstance(config["batch_size"], int) and config["batch_size"] > 0 and config["rate"] >= 0):
        raise IntegrityError(f"{path}: batch_size must be > 0 and rate >= 0")
    return config


class RemoteEncoder:
    """encode() through the endpoint: batched, throttled, retried."""

    family = FAMILY

    def __init__(self, config: dict, version: str, artifact_sha256: str):
        self.url = config["url"].rstrip("/") + "/invocations"
        self.dimension, self.normalized = int(config["dimension"]), bool(config["normalized"])
        self.batch_size, self.rate = int(config["batch_size"]), float(config["rate"])
        self.timeout, self.attempts = float(config["timeout"]), int(config["attempts"])
        self.version, self.artifact_sha256 = version, artifact_sha256
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._next_slot = 0.0  # monotonic time the next batch may start (the rate limit)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            self._throttle(len(batch))
            out[start : start + len(batch)] = self._retrying(batch)
        return out

    def _throttle(self, count: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_slot)
            self._next_slot = start + count / self.rate
        time.sleep(max(0.0, start - now))

    def _retrying(self, batch: list[str]) -> np.ndarray:
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.25, max=8),
            retry=retry_if_exception_type(Retry),
            reraise=True,
        )
        try:
            return retrying(self._post, batch)
        except Retry as exc:
            raise Unreachable(
                f"model endpoint {self.url} failed {self.attempts} times ({exc}); check that it is up"
            ) from None

    def _post(self, batch: list[str]) -> np.ndarray:
        try:
            response = self._session.post(self.url, json={"inputs": batch}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise Retry(type(exc).__name__) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise Retry(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise IntegrityError(
                f"model endpoint {self.url} refused the request: HTTP {response.status_code} {response.text[:200]}"
            )
        try:
            vectors = np.asarray(response.json(), dtype=np.float32)
        except ValueError:
            raise IntegrityError(
                f"model endpoint {self.url} answered something that is not a list of vectors"
            ) from None
        if vectors.shape != (len(batch), self.dimension):
            raise IntegrityError(
                f"model endpoint {self.url} returned shape {vectors.shape} for {len(batch)} texts, "
                f"the artifact declares dimension {self.dimension}; fix endpoint.json or the endpoint"
            )
        return vectors


class Endpoint(models.Family):
    name = FAMILY

    def recognizes(self, directory: Path) -> bool:
        return (directory / FILE).is_file()

    def verify(self, directory: Path) -> None:
        read_config(directory)

    def load(self, directory: Path, version: str | None, artifact_sha256: str) -> RemoteEncoder:
        return RemoteEncoder(read_config(directory), version or "unversioned", artifact_sha256)


def artifact(url: str, dimension: int, **options) -> bytes:
    """An endpoint artifact (model.tar.gz holding endpoint.json), packed deterministically."""
    config = {"url": url, "dimension": dimension, **options}
    return models.pack_files({FILE: json.dumps(config, sort_keys=True, indent=2).encode()})
