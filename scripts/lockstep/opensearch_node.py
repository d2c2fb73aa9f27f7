"""The embedded OpenSearch node: assembled from Maven Central (the integ-test zip, the k-NN plugin zip
and the painless module from its jars), cached outside the repo, and run on the machine's JDK 17
with a small heap, as `nobody` when we are root (OpenSearch refuses to run as root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests

from lockstep import runtime
from lockstep.errors import LockstepError

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


def install_dir() -> Path:
    """Where OpenSearch is installed. As root it runs as `nobody`, which cannot enter /root."""
    base = Path("/var/cache/lockstep") if os.geteuid() == 0 else runtime.home()
    return base / f"opensearch-{OPENSEARCH_VERSION}"


def state_dir() -> Path:
    """Data and logs of this home's OpenSearch. As root they live beside the install (which
    `nobody` can reach), in a folder of their own per LOCKSTEP_HOME so two homes never share."""
    if os.geteuid() != 0:
        return runtime.run_dir() / "opensearch"
    tag = hashlib.sha256(str(runtime.run_dir().resolve()).encode()).hexdigest()[:10]
    return install_dir().parent / f"state-{tag}"


def _mvn_copy(artifact: str, out: Path) -> None:
    result = subprocess.run(
        ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={out}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        raise LockstepError(f"mvn could not fetch {artifact} from Maven Central: {tail[0]}")


def install() -> Path:
    """Download (cached in ~/.m2 and the install dir) and assemble OpenSearch + k-NN; idempotent."""
    target = install_dir()
    ready = target / ".lockstep-ready"
    if ready.exists():
        return target
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise LockstepError(
            "OpenSearch needs `mvn` and a JDK 17 `java` on PATH; install them (apt-get install maven openjdk-17-jdk-headless)"
        )
    downloads = runtime.home() / "downloads"
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


def start() -> runtime.Managed:
    """One node on its own (`discovery.type=single-node`), its data wiped: the default embedded server."""
    (runtime.run_dir() / "opensearch.layout").unlink(missing_ok=True)
    port, transport = runtime.free_port(), runtime.free_port()
    options = ["-Ediscovery.type=single-node", "-Ecluster.name=lockstep"]
    managed = _spawn("opensearch", state_dir(), port, transport, options, wipe=True)
    runtime.wait_until(lambda: healthy(managed.url), f"OpenSearch on {managed.url}", managed.log, alive=managed.alive)
    return managed


# ------------------------------------------------------------------------------ a cluster of N


def node_name(number: int) -> str:
    """The pid-file name of node `number` (1-based): node 1 keeps the single node's name, so its
    address is the one `OPENSEARCH_URL` exports and everything that reads "opensearch" finds it."""
    return "opensearch" if number == 1 else f"opensearch-{number}"


@dataclass
class Layout:
    """The ports of a cluster's nodes, remembered in `<run>/opensearch.layout` so that a node that
    died is started again on its own ports with its own data (`start_cluster` is idempotent)."""

    http: list[int]
    transport: list[int]

    @property
    def nodes(self) -> int:
        return len(self.http)

    @classmethod
    def load(cls) -> Layout | None:
        path = runtime.run_dir() / "opensearch.layout"
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def save(self) -> None:
        (runtime.run_dir() / "opensearch.layout").write_text(json.dumps(self.__dict__))


def running_nodes() -> int:
    """How many nodes this home's OpenSearch was started with (1 when it is a single node or none)."""
    layout = Layout.load()
    return layout.nodes if layout else 1


def start_cluster(nodes: int) -> tuple[runtime.Managed, bool]:
    """Start the nodes of an N-node cluster that are not running; (node 1, whether any was started).

    A fresh cluster (no node alive) gets new ports and empty data dirs; a node that died is started
    again on its ports with its data, and rejoins. Every node is cluster-manager eligible and holds
    data; the cluster is ready when all N have joined and it is at least yellow.
    """
    previous = Layout.load()
    alive = [runtime.Managed.load(node_name(n)) for n in range(1, nodes + 1)]
    fresh = previous is None or previous.nodes != nodes or not any(m and m.alive() for m in alive)
    layout = (
        Layout([runtime.free_port() for _ in range(nodes)], [runtime.free_port() for _ in range(nodes)])
        if fresh
        else previous
    )
    assert layout is not None
    layout.save()
    seeds = ",".join(f"127.0.0.1:{port}" for port in layout.transport)
    names = ",".join(f"node-{n}" for n in range(1, nodes + 1))
    tag = hashlib.sha256(str(runtime.run_dir().resolve()).encode()).hexdigest()[:10]
    started = False
    for number, managed in enumerate(alive, start=1):
        if managed and managed.alive():
            continue
        if managed:
            managed.stop()
        options = [
            f"-Enode.name=node-{number}",
            f"-Ecluster.name=lockstep-{tag}",
            f"-Ediscovery.seed_hosts={seeds}",
            f"-Ecluster.initial_cluster_manager_nodes={names}",
            "-Enode.processors=1",
        ]
        folder = state_dir() / f"node-{number}"
        _spawn(node_name(number), folder, layout.http[number - 1], layout.transport[number - 1], options, wipe=fresh)
        started = True
    first = runtime.Managed.load(node_name(1))
    assert first is not None
    runtime.wait_until(
        lambda: cluster_formed(first.url, nodes), f"OpenSearch cluster of {nodes} on {first.url}", first.log
    )
    return first, started


def cluster_formed(url: str, nodes: int) -> bool:
    try:
        response = requests.get(
            f"{url}/_cluster/health",
            params={"wait_for_nodes": str(nodes), "wait_for_status": "yellow", "timeout": "1s"},
            timeout=3,
        )
        body = response.json()
        return response.status_code == 200 and body.get("number_of_nodes") == nodes and not body.get("timed_out")
    except (requests.RequestException, ValueError):
        return False


def _spawn(name: str, folder: Path, port: int, transport: int, options: list[str], wipe: bool) -> runtime.Managed:
    """Start one node with its data and logs under `folder` (emptied first with `wipe`)."""
    installed = install()
    data, logs = folder / "data", folder / "logs"
    if wipe:
        shutil.rmtree(data, ignore_errors=True)
    for path in (data, logs):
        path.mkdir(parents=True, exist_ok=True)
    argv = [
        str(installed / "bin" / "opensearch"),
        *options,
        "-Enetwork.host=127.0.0.1",
        f"-Ehttp.port={port}",
        f"-Etransport.port={transport}",
        f"-Epath.data={data}",
        f"-Epath.logs={logs}",
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
        for path in (installed, data, logs):
            subprocess.run(["chown", "-R", "nobody:nogroup", str(path)], check=True)
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    return runtime.spawn(name, argv, f"http://127.0.0.1:{port}", env=env, cwd=installed)


def healthy(url: str) -> bool:
    try:
        response = requests.get(
            f"{url}/_cluster/health", params={"wait_for_status": "yellow", "timeout": "1s"}, timeout=3
        )
        return response.status_code == 200 and response.json().get("status") in {"green", "yellow"}
    except (requests.RequestException, ValueError):
        return False
