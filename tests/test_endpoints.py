"""The inference server (SageMaker contract), endpoint clients and local blue/green slot processes.

Protocol tests run the real HTTP server in a thread; slot tests start real processes that load
their artifact from the moto server; SageMaker's control plane is moto's.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests

from lockstep import runtime, serve
from lockstep.errors import IntegrityError, Unreachable, UsageError
from lockstep.models import hashgram as model
from lockstep.ops import artifacts, endpoints
from tests.test_plan_sagemaker import IMAGE

FAST = endpoints.RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
TEXTS = ["Return the sum of a sequence of numbers.", "Open a file and return a stream.", "x"]


@pytest.fixture(scope="module")
def v1_embedder():
    return model.load_artifact(model.build_artifact(model.SPECS["v1"]))


@pytest.fixture
def server(v1_embedder):
    """The inference server on a free loopback port, with small limits to test them."""
    instance = serve.InferenceServer(("127.0.0.1", 0), v1_embedder, max_batch=8, max_body_bytes=64 * 1024)
    thread = threading.Thread(target=instance.serve_forever, daemon=True)
    thread.start()
    yield instance
    instance.shutdown()
    instance.server_close()


@pytest.fixture
def published(s3, make_settings, catalog):
    """Settings whose artifacts bucket holds v1 and v3; slot processes stopped afterwards."""
    settings = make_settings(endpoints={"backend": "local", "maxBatch": 4})
    artifacts.ensure_bucket(s3, settings.artifacts.bucket)
    for version in ("v1", "v3"):
        artifacts.publish_artifact(s3, settings, catalog.get(version))
    yield settings
    endpoints.stop_local_slots(settings)


# ------------------------------------------------------------------------------------ the server


def test_ping_reports_the_artifact(server, v1_embedder):
    response = requests.get(f"{server.url}/ping", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert (body["model"], body["version"], body["artifact_sha256"]) == ("hashgram", "v1", v1_embedder.artifact_sha256)
    assert response.headers[serve.SHA_HEADER] == v1_embedder.artifact_sha256


def test_invocations_return_the_models_vectors_exactly(server, v1_embedder):
    response = requests.post(f"{server.url}/invocations", json={"inputs": TEXTS}, timeout=5)
    assert response.status_code == 200
    assert response.headers[serve.SHA_HEADER] == v1_embedder.artifact_sha256
    vectors = np.asarray(response.json(), dtype=np.float32)
    np.testing.assert_array_equal(vectors, v1_embedder.encode(TEXTS))
    assert vectors.shape == (3, 192)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"not json at all", 400, "not JSON"),
        (b"\xff\xfe\x00", 400, "not JSON"),
        (b"", 400, "not JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"texts": ["a"]}', 400, "JSON object"),
        (b'{"inputs": "x"}', 400, "list of strings"),
        (b'{"inputs": []}', 400, "empty"),
        (b'{"inputs": [1, 2]}', 400, "only strings"),
        (b'{"inputs": ["a", null]}', 400, "only strings"),
        (json.dumps({"inputs": ["a"] * 9}).encode(), 413, "batch limit 8"),
        (json.dumps({"inputs": ["a" * 70_000]}).encode(), 413, "more than the limit"),
    ],
)
def test_malformed_bodies_get_a_4xx_with_a_reason(server, v1_embedder, body, status, reason):
    response = requests.post(
        f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert response.status_code == status
    assert reason in response.json()["error"]
    assert response.headers[serve.SHA_HEADER] == v1_embedder.artifact_sha256
    assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200


def test_a_huge_body_is_read_and_refused_with_413(server):
    # 400 KB: over the 64 KB limit, under the 8x the server drains so that the client sees the answer.
    response = requests.post(f"{server.url}/invocations", data=b"{" + b" " * (400 * 1024), timeout=10)
    assert response.status_code == 413 and "more than the limit" in response.json()["error"]


def test_an_absurd_body_is_cut_off_and_the_server_keeps_serving(server):
    try:
        status = requests.post(f"{server.url}/invocations", data=b" " * (16 * 1024 * 1024), timeout=10).status_code
    except requests.ConnectionError:
        status = None  # the server closed the connection instead of reading 16 MB: also a refusal
    assert status in {413, None}
    assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200


def raw_request(server, head: bytes) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].count(b"}") >= 1:
                break
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Length: abc\r\n", 400),
        (b"Content-Length: -5\r\n", 400),
        (b"Transfer-Encoding: chunked\r\n", 411),
    ],
)
def test_broken_framing_is_a_4xx(server, headers, status):
    got, body = raw_request(
        server, b"POST /invocations HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n"
    )
    assert got == status and body["error"]


def test_unknown_routes_and_methods_are_4xx(server):
    assert requests.get(f"{server.url}/nope", timeout=5).status_code == 404
    assert requests.post(f"{server.url}/nope", json={"inputs": ["a"]}, timeout=5).status_code == 404
    response = requests.put(f"{server.url}/invocations", json={"inputs": ["a"]}, timeout=5)
    assert response.status_code == 405 and "not supported" in response.json()["error"]


def unpack(data: bytes, directory):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(directory, filter="data")


def test_sagemaker_model_directory_reports_the_original_artifacts_sha(tmp_path, catalog):
    """SageMaker unpacks ModelDataUrl into /opt/ml/model; the server still knows which artifact it is."""
    entry = catalog.get("v3")
    unpack(model.build_artifact(model.SPECS["v3"]), tmp_path)
    embedder = serve.load_from_directory(tmp_path, entry.artifact_sha256)
    assert (embedder.version, embedder.artifact_sha256) == ("v3", entry.artifact_sha256)

    with pytest.raises(IntegrityError, match="LOCKSTEP_ARTIFACT_SHA256"):
        serve.load_from_directory(tmp_path, catalog.get("v1").artifact_sha256)
    projection = np.load(tmp_path / "projection.npy")
    projection[0, 0] += 1
    np.save(tmp_path / "projection.npy", projection)
    with pytest.raises(IntegrityError, match="altered"):
        serve.load_from_directory(tmp_path, None)


def test_container_entrypoint_accepts_serve_and_reads_the_model_directory(tmp_path, catalog):
    entry = catalog.get("v1")
    unpack(model.build_artifact(model.SPECS["v1"]), tmp_path)
    port = runtime.free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SM_MODEL_DIR": str(tmp_path),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "LOCKSTEP_ARTIFACT_SHA256": entry.artifact_sha256,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "lockstep.serve", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        client = endpoints.LocalEndpoint(
            "container",
            f"http://127.0.0.1:{port}",
            retry=endpoints.RetryPolicy(attempts=40, initial_wait=0.1, max_wait=0.5),
        )
        assert client.describe()["artifact_sha256"] == entry.artifact_sha256
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": ["a"]}, timeout=10)
        # What SageMaker hands the caller as CustomAttributes: the artifact that answered.
        assert answer.headers[serve.CUSTOM_ATTRIBUTES_HEADER] == f"{serve.ARTIFACT_ATTRIBUTE}={entry.artifact_sha256}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_server_without_an_artifact_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lockstep.serve", "--port", "0"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SM_MODEL_DIR": str(tmp_path / "missing")},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no artifact" in result.stderr


# ---------------------------------------------------------------------------------- local slots


def test_deploy_local_slot_is_idempotent_and_switches_versions(published, catalog, v1_embedder):
    settings = published
    v1, v3 = catalog.get("v1"), catalog.get("v3")

    first = endpoints.deploy_local_slot(settings, "blue", v1)
    again = endpoints.deploy_local_slot(settings, "blue", v1)
    assert again.pid == first.pid and again.url == first.url
    assert first.describe() == {
        "version": "v1",
        "artifact_sha256": v1.artifact_sha256,
        "max_batch": settings.endpoints.max_batch,
        "name": f"lockstep-{settings.stack}-blue",
        "url": first.url,
    }
    # 10 texts with maxBatch 4: three requests, one answer in order.
    texts = [f"{TEXTS[i % 3]} {i}" for i in range(10)]
    np.testing.assert_array_equal(first.embed(texts), v1_embedder.encode(texts))

    switched = endpoints.deploy_local_slot(settings, "blue", v3)
    assert switched.pid != first.pid
    assert switched.describe()["artifact_sha256"] == v3.artifact_sha256
    assert switched.embed(TEXTS).shape == (3, 128)
    assert not runtime.Managed(name="old", pid=first.pid, url="", log="").alive()

    listed = endpoints.local_slot(settings, "blue")
    assert (listed.pid, listed.url) == (switched.pid, switched.url)
    assert endpoints.local_slot(settings, "green") is None
    assert endpoints.endpoint_for(settings, "blue").describe()["version"] == "v3"

    assert endpoints.stop_local_slots(settings) == [f"endpoint-{settings.stack}-blue"]
    assert endpoints.local_slot(settings, "blue") is None


def test_blue_and_green_run_side_by_side(published, catalog):
    settings = published
    blue = endpoints.deploy_local_slot(settings, "blue", catalog.get("v1"))
    green = endpoints.deploy_local_slot(settings, "green", catalog.get("v3"))
    assert blue.pid != green.pid
    assert {endpoints.endpoint_for(settings, s).describe()["version"] for s in ("blue", "green")} == {"v1", "v3"}
    assert sorted(endpoints.stop_local_slots(settings)) == sorted(
        f"endpoint-{settings.stack}-{s}" for s in ("blue", "green")
    )


def test_slot_whose_artifact_is_missing_fails_fast_pointing_at_the_log(published, catalog):
    settings = published
    started = time.monotonic()
    with pytest.raises(
        Unreachable, match=r"exited while starting; see .*endpoint-.*\.log \(last line: .*not found"
    ) as raised:
        endpoints.deploy_local_slot(settings, "green", catalog.get("v2"))
    assert time.monotonic() - started < 30
    assert "\n" not in str(raised.value)
    assert endpoints.local_slot(settings, "green") is None


def test_slot_refuses_a_tampered_artifact(s3, published, catalog):
    settings, entry = published, catalog.get("v1")
    s3.put_object(
        Bucket=settings.artifacts.bucket,
        Key=entry.artifact_key,
        Body=model.build_artifact(model.SPECS["v2"]),
        Metadata={"sha256": entry.artifact_sha256},
    )
    with pytest.raises(Unreachable, match="overwritten"):
        endpoints.deploy_local_slot(settings, "blue", entry)


def test_stopped_slot_yields_a_client_that_says_so(make_settings):
    settings = make_settings()
    client = endpoints.endpoint_for(settings, "green")
    with pytest.raises(Unreachable, match=f"lockstep-{settings.stack}-green has no running process"):
        client.describe()


# ------------------------------------------------------------------------------------ retries


def test_unreachable_endpoint_raises_after_retries_naming_it():
    client = endpoints.LocalEndpoint("lockstep-x-blue", f"http://127.0.0.1:{runtime.free_port()}", retry=FAST)
    started = time.monotonic()
    with pytest.raises(
        Unreachable, match=r"endpoint lockstep-x-blue at http://127\.0\.0\.1:\d+ failed 3 times \(ConnectionError\)"
    ):
        client.embed(["a"])
    assert time.monotonic() - started < 5


class Flaky(BaseHTTPRequestHandler):
    """Answers 503, then 429, then 200: a client with three attempts must get through."""

    hits: list[int] = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.hits.append(1)
        status = {1: 503, 2: 429}.get(len(self.hits), 200)
        body = json.dumps([[1.0, 0.0]] if status == 200 else {"error": "busy"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_5xx_and_429_are_retried_4xx_is_not():
    Flaky.hits = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        vectors = endpoints.LocalEndpoint("flaky", url, retry=FAST).embed(["a"])
        assert vectors.tolist() == [[1.0, 0.0]] and len(Flaky.hits) == 3
        with pytest.raises(Unreachable, match=r"failed 2 times \(HTTP 429\)"):
            Flaky.hits = []
            endpoints.LocalEndpoint("flaky", url, retry=endpoints.RetryPolicy(attempts=2, initial_wait=0.01)).embed(
                ["a"]
            )
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_4xx_from_the_server_is_a_usage_error_not_retried(server):
    client = endpoints.LocalEndpoint("small", server.url, max_batch=100, retry=FAST)
    with pytest.raises(UsageError, match='HTTP 413: "inputs" has 9 items'):
        client.embed(["a"] * 9)


# ---------------------------------------------------------------------------------- sagemaker


def create_sagemaker_endpoint(sm, name: str, model_data_urls: list[str]):
    variants = []
    for number, url in enumerate(model_data_urls):
        sm.create_model(
            ModelName=f"{name}-m{number}",
            ExecutionRoleArn="arn:aws:iam::123456789012:role/lockstep",
            PrimaryContainer={"Image": IMAGE, "ModelDataUrl": url},
        )
        variants.append(
            {
                "VariantName": f"v{number}",
                "ModelName": f"{name}-m{number}",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        )
    sm.create_endpoint_config(EndpointConfigName=f"{name}-config", ProductionVariants=variants)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")


def test_sagemaker_describe_reads_version_and_sha_from_model_data_url(servers, make_settings, catalog):
    from lockstep.ops import clients

    settings = make_settings(endpoints={"backend": "sagemaker", "imageUri": IMAGE})
    entry = catalog.get("v2")
    name = endpoints.endpoint_name(settings, "green")
    create_sagemaker_endpoint(
        clients.aws("sagemaker", settings.region), name, [artifacts.artifact_uri(settings.artifacts.bucket, entry)]
    )

    client = endpoints.endpoint_for(settings, "green", retry=FAST)
    assert isinstance(client, endpoints.SageMakerEndpoint)
    described = client.describe()
    assert (described["version"], described["artifact_sha256"], described["name"]) == (
        "v2",
        entry.artifact_sha256,
        name,
    )
    assert described["model_data_url"] == f"s3://{settings.artifacts.bucket}/{entry.artifact_key}"

    with pytest.raises(Unreachable, match=f"lockstep-{settings.stack}-blue does not exist"):
        endpoints.endpoint_for(settings, "blue", retry=FAST).describe()


class Redeployed(BaseHTTPRequestHandler):
    """A slot redeployed between two batches of one embed call: each answer names another artifact."""

    answers = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).answers += 1
        body = json.dumps([[1.0, 0.0]]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header(serve.SHA_HEADER, str(self.answers) * 64)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_embed_whose_batches_name_two_artifacts_is_mixed_not_the_last_one():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Redeployed)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        slot = endpoints.LocalEndpoint("redeployed", f"http://127.0.0.1:{httpd.server_address[1]}", max_batch=1)
        assert slot.embed(["a"]).shape == (1, 2) and slot.served_artifact == "1" * 64
        assert slot.embed(["b", "c"]).shape == (2, 2)  # two batches: artifacts 2… and 3…
        assert slot.served_artifact == endpoints.MIXED
    finally:
        httpd.shutdown()


def test_a_sagemaker_answer_names_its_artifact_in_custom_attributes(servers, unique):
    """A lockstep image says which artifact answered in the one response header SageMaker passes
    on (InvokeEndpoint's CustomAttributes); an image that says nothing leaves it unknown (None)."""
    sha = "ab" * 32
    result = {
        "Body": "[[0.5, 0.5]]",
        "ContentType": "application/json",
        "InvokedProductionVariant": "green",
        "CustomAttributes": f"trace=7; {serve.ARTIFACT_ATTRIBUTE}={sha}",
    }
    moto = os.environ["AWS_ENDPOINT_URL"]
    requests.post(f"{moto}/moto-api/static/sagemaker/endpoint-results", json={"results": [result]}, timeout=10)
    slot = endpoints.SageMakerEndpoint(f"{unique}-sm", "us-east-1", retry=FAST)
    assert slot.embed(["a query"]).tolist() == [[0.5, 0.5]]
    assert slot.served_artifact == sha
    assert serve.artifact_in_attributes("custom_attributes") is None and serve.artifact_in_attributes(None) is None


def test_sagemaker_endpoint_serving_two_artifacts_is_an_integrity_error(servers, unique, catalog):
    from lockstep.ops import clients

    urls = [artifacts.artifact_uri("b", catalog.get(v)) for v in ("v1", "v2")]
    create_sagemaker_endpoint(clients.aws("sagemaker"), f"{unique}-mixed", urls)
    with pytest.raises(IntegrityError, match="serves 2 model artifacts"):
        endpoints.SageMakerEndpoint(f"{unique}-mixed", "us-east-1", retry=FAST).describe()


def test_a_sagemaker_slot_without_aws_credentials_is_one_line_naming_the_fix(monkeypatch, tmp_path):
    """No credentials is configuration, not a flaky endpoint: no retries, no "check the endpoint's
    log or redeploy", but one line naming where credentials come from."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    slot = endpoints.SageMakerEndpoint("lockstep-prod-blue", "ap-southeast-4", retry=FAST)
    for call in (slot.describe, lambda: slot.embed(["a query"])):
        with pytest.raises(
            UsageError,
            match=r"^SageMaker endpoint lockstep-prod-blue in ap-southeast-4: no AWS credentials.*aws:profile",
        ):
            call()


def test_a_sagemaker_slot_is_reached_with_the_stacks_aws_profile(monkeypatch):
    """`aws:profile` reaches the SageMaker clients too (it used to stop at S3, SSM and DynamoDB: a
    describe or invoke ran as whoever boto3's default chain found). A profile this machine does not
    have is one line naming it and the fix."""
    from lockstep import config

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # real AWS: an emulator ignores profiles
    settings = config.settings_from_config(
        "prod",
        {
            "pin": "v1",
            "slots": {"blue": "v1"},
            "endpoints": {"backend": "sagemaker", "imageUri": IMAGE},
            "opensearch": {"url": "https://search.example.com"},
            "artifacts": {"bucket": "prod-artifacts"},
            "corpus": {"bucket": "prod-corpus"},
            "awsProfile": "lockstep-no-such-profile",
        },
        config.load_catalog(),
    )
    with pytest.raises(UsageError, match=r"AWS profile 'lockstep-no-such-profile' is not in .*fix aws:profile"):
        endpoints.endpoint_for(settings, "blue", retry=FAST).describe()
