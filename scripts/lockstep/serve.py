"""The inference server: the SageMaker container contract over the stdlib HTTP server.

`GET /ping` -> 200 `{status, model, version, artifact_sha256, max_batch}`; `POST /invocations` with
`{"inputs": [str, ...]}` -> a JSON list of vectors. Every response carries the header
`X-Lockstep-Artifact-Sha256`, so any caller can tell which artifact answered. Bad requests get a
4xx with `{"error": reason}`; nothing a client sends produces a traceback.

The artifact comes from S3 (`LOCKSTEP_ARTIFACT_BUCKET`/`_KEY`/`_SHA256`: local slot processes) or
from `/opt/ml/model`, where SageMaker unpacks the endpoint's ModelDataUrl. Run as
`python -m lockstep.serve [serve] [--host H] [--port P]`; SageMaker passes `serve`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from lockstep import models
from lockstep.config import CatalogEntry
from lockstep.errors import IntegrityError, LockstepError, UsageError
from lockstep.ops import artifacts, clients

SHA_HEADER = "X-Lockstep-Artifact-Sha256"
VERSION_HEADER = "X-Lockstep-Model-Version"
# SageMaker passes only this response header of a container on to the caller (InvokeEndpoint's
# `CustomAttributes`): the artifact that answered travels in it, for `lockstep.reader` to verify.
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
ARTIFACT_ATTRIBUTE = "lockstep-artifact-sha256"
DEFAULT_MAX_BATCH = 256
# SageMaker real-time endpoints accept payloads up to 6 MB.
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024
SAGEMAKER_MODEL_DIR = "/opt/ml/model"


def artifact_in_attributes(attributes: str | None) -> str | None:
    """The artifact sha256 in a SageMaker answer's `CustomAttributes` (`key=value` pairs separated
    by `;`), None when the image does not say."""
    for pair in (attributes or "").split(";"):
        key, _, value = pair.strip().partition("=")
        if key == ARTIFACT_ATTRIBUTE and value:
            return value
    return None


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_inputs(body: bytes, max_batch: int) -> list[str]:
    """The texts of an invocation body, or BadRequest saying what is wrong with it."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(400, 'body is not JSON; send {"inputs": ["text", ...]}') from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise BadRequest(400, 'body must be a JSON object with "inputs": ["text", ...]')
    inputs = payload["inputs"]
    if not isinstance(inputs, list):
        raise BadRequest(400, '"inputs" must be a list of strings')
    if not inputs:
        raise BadRequest(400, '"inputs" is empty; send at least one string')
    if len(inputs) > max_batch:
        raise BadRequest(
            413, f'"inputs" has {len(inputs)} items, more than the batch limit {max_batch}; split the request'
        )
    if not all(isinstance(text, str) for text in inputs):
        raise BadRequest(400, '"inputs" must contain only strings')
    return inputs


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may stall mid-request before its connection is dropped
    server: InferenceServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/ping":
            self._reply(404, {"error": f"no route GET {self.path}; use GET /ping or POST /invocations"})
            return
        embedder = self.server.embedder
        self._reply(
            200,
            {
                "status": "ok",
                "model": embedder.family,
                "family": embedder.family,
                "version": embedder.version,
                "artifact_sha256": embedder.artifact_sha256,
                "dimension": embedder.dimension,
                "max_batch": self.server.max_batch,
            },
        )

    def do_POST(self) -> None:
        self._answer(self._invoke)

    def do_PUT(self) -> None:
        self._answer(self._no_such_method)

    do_DELETE = do_PATCH = do_PUT

    def _invoke(self):
        if self.path.split("?", 1)[0] != "/invocations":
            self._discard_body()
            raise BadRequest(404, f"no route POST {self.path}; use POST /invocations")
        texts = parse_inputs(self._read_body(), self.server.max_batch)
        return np.asarray(self.server.embedder.encode(texts), dtype=np.float32).tolist()

    def _no_such_method(self):
        self._discard_body()
        raise BadRequest(405, f"{self.command} is not supported; use GET /ping or POST /invocations")

    def _answer(self, work) -> None:
        """Reply with `work()`'s result, or a JSON error: a request never crashes the server or leaks a trace."""
        try:
            result = work()
        except BadRequest as exc:
            self._reply(exc.status, {"error": exc.reason})
        except TimeoutError:
            self.close_connection = True
            self._reply(408, {"error": f"the request body did not arrive within {self.timeout}s"})
        except Exception as exc:  # noqa: BLE001
            self.log_error("request failed: %s: %s", type(exc).__name__, exc)
            self.close_connection = True
            self._reply(500, {"error": f"internal error ({type(exc).__name__})"})
        else:
            self._reply(200, result)

    def _content_length(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise BadRequest(411, "chunked bodies are not supported; send Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise BadRequest(400, "Content-Length is not a number") from None
        if length < 0:
            self.close_connection = True
            raise BadRequest(400, "Content-Length is negative")
        return length

    def _read_body(self) -> bytes:
        length = self._content_length()
        limit = self.server.max_body_bytes
        if length > limit:
            self._discard_body(length)
            raise BadRequest(413, f"body is {length} bytes, more than the limit {limit}; send fewer or shorter inputs")
        return self.rfile.read(length)

    def _discard_body(self, length: int | None = None) -> None:
        """Read a refused body so the client sees our answer; close instead when it is absurdly large."""
        length = self._content_length() if length is None else length
        if length > 8 * self.server.max_body_bytes:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _reply(self, status: int, payload) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header(SHA_HEADER, self.server.embedder.artifact_sha256)
        self.send_header(CUSTOM_ATTRIBUTES_HEADER, f"{ARTIFACT_ATTRIBUTE}={self.server.embedder.artifact_sha256}")
        self.send_header(VERSION_HEADER, self.server.embedder.version)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if self.server.access_log:
            super().log_message(format, *args)


class InferenceServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        embedder: models.Embedder,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        access_log: bool = False,
    ):
        super().__init__(address, Handler)
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"


# ------------------------------------------------------------------------------------ loading


def load_from_s3(bucket: str, key: str, expected_sha256: str, family: str | None = None) -> models.Embedder:
    parsed = artifacts.parse_artifact_url(key)
    entry = CatalogEntry.model_construct(
        version=parsed["version"], model=parsed["model"], family=family, artifact_sha256=expected_sha256
    )
    if entry.artifact_key != key:
        raise UsageError(
            f"LOCKSTEP_ARTIFACT_KEY {key} and LOCKSTEP_ARTIFACT_SHA256 {expected_sha256[:12]}… disagree; "
            f"the key of that artifact is {entry.artifact_key}"
        )
    return artifacts.load_embedder(clients.aws("s3"), bucket, entry)


def load_from_directory(
    directory: Path, expected_sha256: str | None, family: str | None = None, version: str | None = None
) -> models.Embedder:
    """Load the files SageMaker unpacked, verified by their family; report the sha256 of the
    artifact they are exactly (packing is deterministic, so re-packing gives the original bytes)."""
    sha256 = models.sha256_of(models.pack_directory(directory))
    if expected_sha256 and sha256 != expected_sha256:
        raise IntegrityError(
            f"model in {directory} is artifact {sha256[:12]}…, LOCKSTEP_ARTIFACT_SHA256 says {expected_sha256[:12]}…; fix the endpoint's model"
        )
    return models.load_directory(directory, family, version, sha256)


def load_embedder(env: dict[str, str]) -> models.Embedder:
    """The served model: family from LOCKSTEP_MODEL_FAMILY, else recognised from the files."""
    bucket, key, sha256 = (env.get(f"LOCKSTEP_ARTIFACT_{name}") for name in ("BUCKET", "KEY", "SHA256"))
    family = env.get("LOCKSTEP_MODEL_FAMILY") or None
    if bucket or key:
        if not (bucket and key and sha256):
            raise UsageError(
                "set LOCKSTEP_ARTIFACT_BUCKET, LOCKSTEP_ARTIFACT_KEY and LOCKSTEP_ARTIFACT_SHA256 together"
            )
        return load_from_s3(bucket, key, sha256, family)
    directory = Path(env.get("SM_MODEL_DIR", SAGEMAKER_MODEL_DIR))
    if not directory.is_dir():
        raise UsageError(f"no artifact: set LOCKSTEP_ARTIFACT_BUCKET/KEY/SHA256 or mount the model at {directory}")
    return load_from_directory(directory, sha256, family, env.get("LOCKSTEP_MODEL_VERSION") or None)


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{name}={value!r} must be a positive integer")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lockstep.serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", nargs="?", choices=["serve"], help="accepted for SageMaker, which runs `<image> serve`"
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")))
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        max_batch = _positive_int(env, "LOCKSTEP_MAX_BATCH", DEFAULT_MAX_BATCH)
        max_body = _positive_int(env, "LOCKSTEP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
        embedder = load_embedder(env)
        server = InferenceServer(
            (args.host, args.port), embedder, max_batch, max_body, access_log=env.get("LOCKSTEP_ACCESS_LOG") == "1"
        )
    except LockstepError as exc:
        print(f"lockstep.serve: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except OSError as exc:
        print(
            f"lockstep.serve: cannot listen on {args.host}:{args.port} ({exc.strerror}); pick another --port",
            file=sys.stderr,
            flush=True,
        )
        return 2
    print(
        f"lockstep.serve: {embedder.version} (artifact {embedder.artifact_sha256[:12]}…) on {server.url}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
