"""The embedded environment: a moto server and a real OpenSearch with k-NN on loopback.

OpenSearch is assembled from Maven Central (the integ-test zip, the k-NN plugin zip and the
painless module from its jars), cached outside the repo, and run on the machine's JDK 17 with a
small heap. Each process we start has a pid file; `down` stops exactly those. When
`OPENSEARCH_URL` or `AWS_ENDPOINT_URL` is set, that server is used and nothing is started for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from lockstep.errors import LockstepError, Unreachable

OPENSEARCH_VERSION = "2.19.1"
KNN_VERSION = "2.19.1.0"
ASM_VERSION = "9.7"
MAVEN_ARTIFACTS = [
    f"org.opensearch.distribution.integ-test-zip:opensearch:{OPENSEARCH_VERSION}:zip",
    f"org.opensearch.plugin:opensearch-knn:{KNN_VERSION}:zip",
    f"org.opensearch.plugin:lang-painless:{OPENSEARCH_VERSION}",
    f"org.opensearch.plugin:opensearch-scripting-painless-spi:{OPENSEARCH_VERSION}",
    "org.antlr:antlr4-runtime:4.13.1",
    *(f"org.ow2.asm:{name}:{ASM_VERSION}" for name in ("asm", "asm-util", "asm-tree", "asm-commons", "asm-analysis")),
]
HEAP = os.environ.get("LOCKSTEP_OPENSEARCH_HEAP", "512m")
START_TIMEOUT = float(os.environ.get("LOCKSTEP_START_TIMEOUT", "180"))
BUSY_TIMEOUT = 120.0
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


def home() -> Path:
    return Path(os.environ.get("LOCKSTEP_HOME", Path.home() / ".cache" / "lockstep"))


def run_dir() -> Path:
    path = home() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def opensearch_home() -> Path:
    """Where OpenSearch is installed. As root it runs as `nobody`, which cannot enter /root."""
    base = Path("/var/cache/lockstep") if os.geteuid() == 0 else home()
    return base / f"opensearch-{OPENSEARCH_VERSION}"


def opensearch_state() -> Path:
    """Data and logs of this home's OpenSearch. As root they live beside the install (which
    `nobody` can reach), in a folder of their own per LOCKSTEP_HOME so two homes never share."""
    if os.geteuid() != 0:
        return run_dir() / "opensearch"
    tag = hashlib.sha256(str(run_dir().resolve()).encode()).hexdigest()[:10]
    return opensearch_home().parent / f"state-{tag}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- processes


@dataclass
class Managed:
    """A process we started, remembered in `<run>/<name>.json` (pid, port, url, log)."""

    name: str
    pid: int
    url: str
    log: str

    @classmethod
    def load(cls, name: str) -> Managed | None:
        path = run_dir() / f"{name}.json"
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            return None

    def save(self) -> None:
        (run_dir() / f"{self.name}.json").write_text(json.dumps(self.__dict__))

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        stat = Path(f"/proc/{self.pid}/stat")
        return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.alive():
                os.killpg(self.pid, signal.SIGKILL)
                while self.alive() and time.monotonic() < deadline + 10:
                    time.sleep(0.1)
        (run_dir() / f"{self.name}.json").unlink(missing_ok=True)


def spawn(name: str, argv: list[str], url: str, env: dict | None = None, cwd: Path | None = None) -> Managed:
    log_path = run_dir() / f"{name}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    managed = Managed(name=name, pid=process.pid, url=url, log=str(log_path))
    managed.save()
    return managed


def wait_until(ready, what: str, log_path: str, timeout: float = START_TIMEOUT, alive=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if alive is not None and not alive():
            raise Unreachable(f"{what} exited while starting; see {log_path}")
        time.sleep(0.3)
    raise Unreachable(f"{what} did not become healthy within {timeout:.0f}s; see {log_path}")


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


# ---------------------------------------------------------------------------------- OpenSearch


def _mvn_copy(artifact: str, out: Path) -> None:
    result = subprocess.run(
        ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={out}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        raise LockstepError(f"mvn could not fetch {artifact} from Maven Central: {tail[0]}")


def install_opensearch() -> Path:
    """Download (cached in ~/.m2 and the install dir) and assemble OpenSearch + k-NN; idempotent."""
    target = opensearch_home()
    ready = target / ".lockstep-ready"
    if ready.exists():
        return target
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise LockstepError(
            "OpenSearch needs `mvn` and a JDK 17 `java` on PATH; install them (apt-get install maven openjdk-17-jdk-headless)"
        )
    downloads = home() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for artifact in MAVEN_ARTIFACTS:
        _mvn_copy(artifact, downloads)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(downloads / f"opensearch-{OPENSEARCH_VERSION}.zip") as archive:
        archive.extractall(staging.parent / "unzip-tmp")
    (staging.parent / "unzip-tmp" / f"opensearch-{OPENSEARCH_VERSION}").rename(staging)
    shutil.rmtree(staging.parent / "unzip-tmp", ignore_errors=True)
    for script in (staging / "bin").iterdir():
        script.chmod(0o755)
    painless = staging / "modules" / "lang-painless"
    painless.mkdir(parents=True, exist_ok=True)
    for jar in downloads.glob("*.jar"):
        if jar.name.startswith(("lang-painless", "opensearch-scripting-painless-spi", "antlr4-runtime", "asm")):
            shutil.copy(jar, painless / jar.name)
    (painless / "plugin-descriptor.properties").write_text(
        "description=Painless scripting language\n"
        f"version={OPENSEARCH_VERSION}\nname=lang-painless\n"
        "classname=org.opensearch.painless.PainlessPlugin\n"
        f"java.version=11\nopensearch.version={OPENSEARCH_VERSION}\n"
        "extended.plugins=\nhas.native.controller=false\n"
    )
    (painless / "plugin-security.policy").write_text(
        'grant {\n  permission java.lang.RuntimePermission "createClassLoader";\n'
        '  permission java.lang.RuntimePermission "getClassLoader";\n};\n'
    )
    env = {**os.environ, "OPENSEARCH_JAVA_HOME": java_home()}
    result = subprocess.run(
        [
            str(staging / "bin" / "opensearch-plugin"),
            "install",
            "--batch",
            f"file://{downloads / f'opensearch-knn-{KNN_VERSION}.zip'}",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0:
        raise LockstepError(f"installing the k-NN plugin failed: {result.stderr.strip().splitlines()[-1:]}")
    staging.rename(target)
    ready.write_text(f"assembled in {time.monotonic() - started:.1f}s\n")
    return target


def java_home() -> str:
    if os.environ.get("OPENSEARCH_JAVA_HOME"):
        return os.environ["OPENSEARCH_JAVA_HOME"]
    java = Path(shutil.which("java") or "/usr/bin/java").resolve()
    return str(java.parent.parent)


def start_opensearch() -> Managed:
    install = install_opensearch()
    port, transport = free_port(), free_port()
    data, logs = opensearch_state() / "data", opensearch_state() / "logs"
    shutil.rmtree(data, ignore_errors=True)
    for path in (data, logs):
        path.mkdir(parents=True, exist_ok=True)
    argv = [
        str(install / "bin" / "opensearch"),
        "-Ediscovery.type=single-node",
        "-Enetwork.host=127.0.0.1",
        f"-Ehttp.port={port}",
        f"-Etransport.port={transport}",
        f"-Epath.data={data}",
        f"-Epath.logs={logs}",
        "-Ecluster.name=lockstep",
        "-Ecluster.routing.allocation.disk.threshold_enabled=false",
        "-Eaction.auto_create_index=false",
    ]
    env = {
        **os.environ,
        "OPENSEARCH_JAVA_HOME": java_home(),
        "OPENSEARCH_JAVA_OPTS": f"-Xms{HEAP} -Xmx{HEAP}",
    }
    if os.geteuid() == 0:
        # OpenSearch refuses to run as root: drop to nobody, who must own what it writes.
        for path in (install, data, logs):
            subprocess.run(["chown", "-R", "nobody:nogroup", str(path)], check=True)
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    url = f"http://127.0.0.1:{port}"
    managed = spawn("opensearch", argv, url, env=env, cwd=install)
    wait_until(lambda: _opensearch_healthy(url), f"OpenSearch on {url}", managed.log, alive=managed.alive)
    return managed


def _opensearch_healthy(url: str) -> bool:
    try:
        response = requests.get(
            f"{url}/_cluster/health", params={"wait_for_status": "yellow", "timeout": "1s"}, timeout=3
        )
        return response.status_code == 200 and response.json().get("status") in {"green", "yellow"}
    except (requests.RequestException, ValueError):
        return False


# ---------------------------------------------------------------------------------------- moto


def start_moto() -> Managed:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    managed = spawn("moto", argv, url, env={**os.environ, **DUMMY_CREDENTIALS})
    wait_until(
        lambda: http_ok(f"{url}/moto-api/"), f"moto server on {url}", managed.log, timeout=60, alive=managed.alive
    )
    return managed


# ------------------------------------------------------------------------------------- facade

SERVICES = {
    "opensearch": ("OPENSEARCH_URL", start_opensearch, _opensearch_healthy),
    "moto": ("AWS_ENDPOINT_URL", start_moto, lambda url: http_ok(f"{url}/moto-api/")),
}


@dataclass
class ServiceState:
    name: str
    url: str
    source: str  # "external" (from the environment), "started", "running" (ours, already up)
    pid: int | None = None
    log: str | None = None


@contextmanager
def _exclusive():
    """One `up` at a time per home: two test sessions must not both start a server."""
    with open(run_dir() / "up.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def up() -> list[ServiceState]:
    """Start what is not running; reuse what is. Idempotent."""
    with _exclusive():
        return _up()


def _up() -> list[ServiceState]:
    states = []
    for name, (variable, start, healthy) in SERVICES.items():
        external = os.environ.get(variable)
        if external and not _is_ours(name, external):
            states.append(ServiceState(name, external, "external"))
            continue
        current = Managed.load(name)
        if current and current.alive():
            # Ours and running: a busy node answers slowly, it is never replaced from here
            # (replacing it would wipe its data). Wait for it; say so if it never answers.
            wait_until(
                lambda current=current, healthy=healthy: healthy(current.url),
                f"{name} (pid {current.pid}, running) on {current.url}",
                current.log,
                timeout=BUSY_TIMEOUT,
                alive=current.alive,
            )
            states.append(ServiceState(name, current.url, "running", current.pid, current.log))
            continue
        if current:
            current.stop()  # its pid file outlived it: clean up, then start anew
        started = start()
        states.append(ServiceState(name, started.url, "started", started.pid, started.log))
    return states


def _is_ours(name: str, url: str) -> bool:
    current = Managed.load(name)
    return bool(current and current.url == url)


def down(names: list[str] | None = None) -> list[str]:
    """Stop the processes we started (pid files), endpoint slots included; return their names."""
    stopped = []
    for path in sorted(run_dir().glob("*.json")):
        managed = Managed.load(path.stem)
        if managed and (names is None or managed.name in names):
            managed.stop()
            stopped.append(managed.name)
    return stopped


def status() -> list[ServiceState]:
    states = []
    for name, (variable, _, healthy) in SERVICES.items():
        external = os.environ.get(variable)
        current = Managed.load(name)
        if external and not _is_ours(name, external):
            states.append(ServiceState(name, external, "external" if healthy(external) else "external (unreachable)"))
        elif current and current.alive():
            states.append(ServiceState(name, current.url, "running", current.pid, current.log))
        else:
            states.append(ServiceState(name, "", "stopped"))
    return states


def environment() -> dict[str, str]:
    """The variables that point clients at the embedded servers (environment wins)."""
    env = {"AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", REGION)}
    for name, (variable, _, _) in SERVICES.items():
        if os.environ.get(variable):
            env[variable] = os.environ[variable]
        else:
            current = Managed.load(name)
            if current and current.alive():
                env[variable] = current.url
    if "AWS_ENDPOINT_URL" in env and not os.environ.get("AWS_ACCESS_KEY_ID"):
        env.update(DUMMY_CREDENTIALS)
    return env


def exports(states: list[ServiceState]) -> str:
    env = environment()
    for state in states:
        env[SERVICES[state.name][0]] = state.url
    if "AWS_ENDPOINT_URL" in env:
        for key, value in DUMMY_CREDENTIALS.items():
            env.setdefault(key, os.environ.get(key, value))
    return "\n".join(f"export {key}={value}" for key, value in sorted(env.items()))


def endpoint_processes() -> list[Managed]:
    """Slot processes (`endpoint-<stack>-<slot>`) that lockstep started and that still run."""
    found = []
    for path in sorted(run_dir().glob("endpoint-*.json")):
        managed = Managed.load(path.stem)
        if managed and managed.alive():
            found.append(managed)
    return found
