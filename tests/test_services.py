"""`lockstep services up|down|status`: idempotent, stops only its own processes, frees its ports."""

import os
import socket
import subprocess
import sys

from lockstep import services


def lockstep(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "lockstep.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def port_free(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_up_is_idempotent_for_the_session_servers(servers):
    states = services.up()
    assert {s.source for s in states} <= {"running", "external"}
    assert {s.name: s.url for s in states} == servers


def test_up_twice_then_down_leaves_nothing_running(servers, tmp_path):
    # A separate home: moto is started there; OpenSearch is the session's, given as external.
    env = {**os.environ, "LOCKSTEP_HOME": str(tmp_path), "OPENSEARCH_URL": servers["opensearch"]}
    env.pop("AWS_ENDPOINT_URL", None)
    first = lockstep("services", "up", env=env)
    assert first.returncode == 0, first.stderr
    assert "moto: started" in first.stderr and "opensearch: external" in first.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in first.stdout.splitlines())
    moto_url = exports["AWS_ENDPOINT_URL"]
    assert exports["OPENSEARCH_URL"] == servers["opensearch"]

    second = lockstep("services", "up", env=env)
    assert "moto: running" in second.stderr and "started" not in second.stderr
    assert f"AWS_ENDPOINT_URL={moto_url}" in second.stdout

    status = lockstep("services", "status", env=env)
    assert "moto" in status.stdout and "running" in status.stdout

    down = lockstep("services", "down", env=env)
    assert down.returncode == 0 and "moto" in down.stdout
    assert port_free(moto_url)
    assert not list((tmp_path / "run").glob("*.json"))
    # The session's OpenSearch was not ours to stop.
    assert not port_free(servers["opensearch"])


def test_a_stale_record_never_stops_a_process_that_reused_its_pid(tmp_path, monkeypatch):
    """A pid file outlives its process; the pid goes to a stranger. The record's start time tells them apart."""
    import dataclasses
    import sys

    from lockstep import runtime

    monkeypatch.setenv("LOCKSTEP_HOME", str(tmp_path))
    ours = runtime.spawn("stranger", [sys.executable, "-c", "import time; time.sleep(60)"], "none")
    try:
        assert ours.started is not None and ours.alive()
        stale = dataclasses.replace(ours, started=ours.started - 1)  # "our" process, started earlier
        assert not stale.alive()
        stale.stop()
        assert ours.alive(), "a stale record stopped a process it did not start"
    finally:
        ours.stop()
    assert not ours.alive()
