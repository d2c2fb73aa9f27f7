"""A small HTTP proxy on loopback in front of a real server, for fault injection in tests.

The session's OpenSearch (or an endpoint slot) is never stopped, paused or restarted by a test:
clients are pointed at this proxy instead, and a rule decides for each request whether it is
forwarded, answered by the proxy (429, 401, ...), dropped without an answer (the server looks
gone), forwarded with its answer lost, or forwarded and answered late (a pause). `cut()` makes
the server look dead; `heal()` forwards everything again.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host", "expect"}


@dataclass
class Request:
    method: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def is_(self, method: str, path_suffix: str) -> bool:
        return self.method == method and self.path.split("?", 1)[0].endswith(path_suffix)


# What a rule returns. FORWARD: pass it on. DROP: close the connection, the request never
# reaches the server. LOST: the server applies it, the answer never comes back.
FORWARD, DROP, LOST = "forward", "drop", "lost"


def answer(status: int, body: dict | str) -> tuple[str, int, bytes]:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return ("answer", status, data)


def late(seconds: float) -> tuple[str, float]:
    """Forward now, answer after `seconds` (a client with a shorter timeout has given up by then)."""
    return ("late", seconds)


def reject_items(every: int = 1) -> tuple[str, int]:
    """For a `_bulk` request: every `every`-th item is rejected with an item-level 429 (the write
    thread pool's queue was full) and never reaches the server; the others are forwarded in one
    request. The answer merges both, in the request's order, as OpenSearch would."""
    return ("reject_items", every)


def bulk_operations(body: bytes) -> list[tuple[str, dict, list[str]]]:
    """(op, action metadata, its NDJSON lines) of each operation of a `_bulk` body."""
    lines = [line for line in body.decode("utf-8").splitlines() if line.strip()]
    operations, position = [], 0
    while position < len(lines):
        ((op, meta),) = json.loads(lines[position]).items()
        width = 1 if op == "delete" else 2
        operations.append((op, meta, lines[position : position + width]))
        position += width
    return operations


def _rejected(op: str, meta: dict) -> dict:
    return {
        op: {
            "_index": meta.get("_index"),
            "_id": meta.get("_id"),
            "status": 429,
            "error": {
                "type": "rejected_execution_exception",
                "reason": "rejected execution (queue capacity 0) [injected by faultproxy]",
            },
        }
    }


class FaultProxy:
    """`FaultProxy(upstream)`; `.url` to point clients at; `.rule = fn(Request) -> action`."""

    def __init__(self, upstream: str, rule: Callable[[Request], object] | None = None):
        self.upstream = upstream.rstrip("/")
        self.rule = rule
        self.log: list[tuple[str, str, str]] = []
        self.rejected_items = 0
        self.lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, body, {k: v for k, v in self.headers.items()})
                action = proxy.decide(request)
                kind = action[0] if isinstance(action, tuple) else action
                proxy.record(request, kind)
                if kind == DROP:
                    return self._drop()
                if kind == "answer":
                    return self._send(action[1], {"Content-Type": "application/json"}, action[2])
                if kind == "reject_items":
                    return self._send(200, {"Content-Type": "application/json"}, proxy.reject_some(request, action[1]))
                try:
                    response = proxy.forward(request)
                except requests.RequestException:
                    return self._drop()
                if kind == LOST:
                    return self._drop()
                if kind == "late":
                    time.sleep(action[1])
                headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
                self._send(response.status_code, headers, response.content)

            def _send(self, status: int, headers: dict, data: bytes):
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError:
                    self.close_connection = True

            def _drop(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def decide(self, request: Request):
        rule = self.rule
        return FORWARD if rule is None else (rule(request) or FORWARD)

    def record(self, request: Request, kind: str) -> None:
        with self.lock:
            self.log.append((request.method, request.path.split("?", 1)[0], kind))

    def forward(self, request: Request) -> requests.Response:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        return session.request(
            request.method, self.upstream + request.path, data=request.body or None, headers=headers, timeout=120
        )

    def reject_some(self, request: Request, every: int) -> bytes:
        operations = bulk_operations(request.body)
        kept = [n for n in range(len(operations)) if (n + 1) % every != 0]
        items: list[dict | None] = [None] * len(operations)
        for n, (op, meta, _) in enumerate(operations):
            if n not in kept:
                items[n] = _rejected(op, meta)
        self.rejected_items += len(operations) - len(kept)
        if kept:
            body = "".join(line + "\n" for n in kept for line in operations[n][2]).encode()
            upstream = self.forward(Request(request.method, request.path, body, request.headers)).json()
            for n, item in zip(kept, upstream["items"]):
                items[n] = item
        return json.dumps({"took": 1, "errors": True, "items": items}).encode()

    def cut(self) -> None:
        """From now on every request is dropped: the server looks dead."""
        self.rule = lambda request: DROP

    def heal(self) -> None:
        self.rule = None

    def count(self, kind: str, method: str | None = None, suffix: str = "") -> int:
        with self.lock:
            return sum(
                1 for m, p, k in self.log if k == kind and (method is None or m == method) and p.endswith(suffix)
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def after_first(match: Callable[[Request], bool], first, then) -> Callable[[Request], object]:
    """A rule: requests are forwarded until the first one that matches, which gets `first`;
    every request after it gets `then`."""
    state = {"seen": False}
    lock = threading.Lock()

    def rule(request: Request):
        with lock:
            if state["seen"]:
                return then
            if match(request):
                state["seen"] = True
                return first
        return FORWARD

    return rule
