"""A reverse proxy on loopback that requires HTTP basic auth in front of the embedded OpenSearch.

The embedded node has no security plugin; this stands in for one: a request without the right
`Authorization: Basic` header gets 401 with `WWW-Authenticate: Basic` (as the security plugin
answers), any other is forwarded (request bodies by length or chunked) and its answer relayed.
Every request is recorded with its verdict, so a test can prove the credentials reached the
server on every path.
"""

from __future__ import annotations

import base64
import binascii
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
    "expect",
    "authorization",
    "proxy-authorization",
}
# A request's verdict: the right user and password, no Authorization header, or a wrong one.
AUTHORIZED, MISSING, WRONG = "authorized", "missing", "wrong"
UNAUTHORIZED = b"Unauthorized"


def verdict(header: str | None, username: str, password: str) -> str:
    if not header:
        return MISSING
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return WRONG
    try:
        given = base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return WRONG
    return AUTHORIZED if given == f"{username}:{password}" else WRONG


class AuthProxy:
    """`AuthProxy(upstream, username, password)`; `.url` to point clients at; `.seen` the
    (method, path, verdict) of each request; `.count(verdict, ...)`."""

    def __init__(self, upstream: str, username: str, password: str):
        self.upstream = upstream.rstrip("/")
        self.username, self.password = username, password
        self.seen: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                body = self._body()
                seen = verdict(self.headers.get("Authorization"), proxy.username, proxy.password)
                with proxy.lock:
                    proxy.seen.append((self.command, self.path.split("?", 1)[0], seen))
                if seen != AUTHORIZED:
                    headers = {"WWW-Authenticate": 'Basic realm="OpenSearch Security"', "Content-Type": "text/plain"}
                    return self._send(401, headers, UNAUTHORIZED)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    response = proxy.session().request(
                        self.command, proxy.upstream + self.path, data=body or None, headers=headers, timeout=120
                    )
                except requests.RequestException:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                relayed = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
                length = response.headers.get("Content-Length") if self.command == "HEAD" else None
                self._send(response.status_code, relayed, response.content, length)

            def _send(self, status: int, headers: dict, data: bytes, length: str | None = None):
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def count(self, seen: str, method: str | None = None, suffix: str = "") -> int:
        with self.lock:
            return sum(
                1 for m, p, v in self.seen if v == seen and (method is None or m == method) and p.endswith(suffix)
            )

    def refused(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return [entry for entry in self.seen if entry[2] != AUTHORIZED]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> AuthProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
