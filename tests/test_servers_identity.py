"""Issue #19: a server that is not what the URL promises. OPENSEARCH_URL / AWS_ENDPOINT_URL pointed
at a plain HTTP server (Python's http.server) or written without a scheme: every command that talks
to that server exits 2 with one line naming the variable, what answered and the fix — before its
first request, so nothing changes anywhere: indices, aliases, the pointer, S3 objects and their
versions (the stored check record among them), derived items, stack files.

One deployed scratch stack (v1 live, one derived store) serves every row; each row snapshots the
whole world before and after the command, run as a real process (a traceback or a stray log line
on stderr would show).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lockstep import config, orchestrator, stackfile
from lockstep.ops import clients, derived, endpoints
from tests.conftest import stack_values

PROMOTE_TARGET = "next"


@pytest.fixture(scope="module")
def plain_http(tmp_path_factory):
    """An HTTP server that is neither OpenSearch nor AWS: a directory listing on GET, 501 on POST."""
    root = tmp_path_factory.mktemp("www")
    (root / "index.txt").write_text("hello\n")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def deployed(servers, catalog, tmp_path_factory):
    """A deployed embedded stack with a stored check record, and a second stack to promote into."""
    stacks = tmp_path_factory.mktemp("stacks")
    unique = f"id{os.urandom(5).hex()}"
    values = stack_values(
        unique,
        corpus={"size": 60},
        derived=[{"name": "related", "kind": "related-documents", "table": f"{unique}-related"}],
    )
    stackfile.write_stack(stacks, unique, values)
    stackfile.write_stack(stacks, PROMOTE_TARGET, stack_values(f"{unique}x"))
    settings = config.load_stack(unique, stacks, catalog)
    result = orchestrator.apply(settings, catalog, progress=False, say=lambda _: None)
    assert result.record is not None and result.record.passed
    derived.write_related(settings, "v1", documents=None)
    yield stacks, settings
    endpoints.stop_local_slots(settings)
    clients.opensearch().indices.delete(index=f"{unique}-*", params={"expand_wildcards": "all"})


def world(stacks: Path, settings: config.StackSettings) -> dict:
    """Everything a command could change, read with the good servers."""
    search, s3, ssm = clients.opensearch(), clients.aws("s3"), clients.aws("ssm")
    prefix = settings.opensearch.index_prefix
    indices = search.indices.get(index=f"{prefix}-*", allow_no_indices=True)
    counts = {name: search.count(index=name)["count"] for name in indices}
    versions = {}
    for bucket in (settings.artifacts.bucket, settings.corpus.bucket):
        listed = s3.list_object_versions(Bucket=bucket)
        versions[bucket] = sorted((v["Key"], v["VersionId"], v["ETag"]) for v in listed.get("Versions", []))
    pointer = ssm.get_parameter(Name=settings.pointer_name)["Parameter"]
    items = derived.read_records(settings, settings.derived[0])
    return {
        "indices": json.dumps(indices, sort_keys=True, default=str),
        "counts": counts,
        "aliases": search.indices.get_alias(index=f"{prefix}-*"),
        "pointer": (pointer["Value"], pointer["Version"]),
        "objects": versions,
        "items": items,
        "stack files": {p.name: p.read_bytes() for p in sorted(stacks.iterdir())},
    }


COMMANDS = {
    "apply": lambda s: ["apply", "--stack", s, "--quiet"],
    "check": lambda s: ["check", "--stack", s],
    "plan": lambda s: ["plan", "--stack", s, "--to", "v2"],
    "backfill": lambda s: ["backfill", "--stack", s, "--version", "v2", "--quiet"],
    "promote": lambda s: ["promote", "--from", s, "--to", PROMOTE_TARGET],
}
# (variable, kind) -> words the one line must hold besides the variable's name
BAD = {
    ("OPENSEARCH_URL", "plain HTTP server"): ("is not OpenSearch", "SimpleHTTP", "point OPENSEARCH_URL at"),
    ("OPENSEARCH_URL", "no scheme"): ("'127.0.0.1:9200'", "not an http(s) URL", "http://host:port"),
    ("AWS_ENDPOINT_URL", "plain HTTP server"): ("is not an AWS API", "HTTP 501", "point AWS_ENDPOINT_URL at"),
    ("AWS_ENDPOINT_URL", "no scheme"): ("'127.0.0.1:9200'", "not an http(s) URL", "http://host:port"),
}
# promote reads only S3 and SSM: OpenSearch is not one of its servers, whatever OPENSEARCH_URL says.
ROWS = [
    (command, variable, kind)
    for command in COMMANDS
    for variable, kind in BAD
    if not (command == "promote" and variable == "OPENSEARCH_URL")
]


@pytest.mark.parametrize(("command", "variable", "kind"), ROWS, ids=[" / ".join(row) for row in ROWS])
def test_a_server_that_is_not_what_the_url_promises_is_one_line_exit_2_and_changes_nothing(
    deployed, plain_http, command, variable, kind
):
    stacks, settings = deployed
    url = plain_http if kind == "plain HTTP server" else "127.0.0.1:9200"
    before = world(stacks, settings)
    completed = subprocess.run(
        [sys.executable, "-m", "lockstep.cli", *COMMANDS[command](settings.stack)],
        capture_output=True,
        text=True,
        env={**os.environ, "LOCKSTEP_STACKS_DIR": str(stacks), variable: url},
        timeout=300,
    )
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    for word in (variable, *BAD[variable, kind]):
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert world(stacks, settings) == before


def test_the_good_servers_are_identified_once_per_process(servers, monkeypatch):
    """The identification is one round trip per server and process: a second client does not ask again."""
    seen: list[str] = []
    real = clients.identify_opensearch

    def counting(client, url, source):
        seen.append(url)
        return real(client, url, source)

    monkeypatch.setattr(clients, "identify_opensearch", counting)
    monkeypatch.setattr(clients, "_IDENTIFIED", set())
    for _ in range(3):
        clients.opensearch().cluster.health()
    assert len(seen) == 1


def test_opensearch_without_the_knn_plugin_is_named(servers, monkeypatch):
    """A real OpenSearch whose plugin list lacks k-NN: one line saying so (exit 2 as UsageError)."""
    from opensearchpy.connection import RequestsHttpConnection

    from lockstep.errors import UsageError

    real = RequestsHttpConnection.perform_request

    def no_plugins(self, method, url, *args, **kwargs):
        if url.startswith("/_cat/plugins"):
            return 200, {"content-type": "application/json"}, "[]"
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(RequestsHttpConnection, "perform_request", no_plugins)
    monkeypatch.setattr(clients, "_IDENTIFIED", set())
    with pytest.raises(UsageError, match=r"is OpenSearch 2\.\d+\.\d+ without the k-NN plugin \(opensearch-knn\)"):
        clients.opensearch().cluster.health()
