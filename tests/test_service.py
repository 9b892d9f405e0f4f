"""The HTTP service, against a real `bentoml serve` process on 127.0.0.1 (one per module, started here).

The server runs the tiny ONNX artifact with a 2 s warm-up (so /readyz can be seen saying "not ready") and a small
queue (so overload can be provoked with a handful of requests).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimship.core.runtime import Classifier
from slimship.serve.settings import cpu_count
from slimship.core.artifact import manifest_digest
from tests.conftest import DEMO_DATA, slimship_cmd

MAX_QUEUE = 600
LONG_TEXT = " ".join(["this film was a long and winding story"] * 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_texts(n: int) -> list[str]:
    lines = (DEMO_DATA / "validation.csv").read_text().splitlines()[1:]
    return [line.rsplit(",", 1)[0].strip('"') for line in lines[:n]]


class Server:
    def __init__(self, model: Path, home: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(home / "server.log", "w+")
        self.env = dict(os.environ, BENTOML_HOME=str(home / "bentoml"), BENTOML_DO_NOT_TRACK="true", **env)
        self.process = subprocess.Popen(slimship_cmd("serve", "--model", str(model), "--port", str(self.port)),
                                        env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.readyz_seen: list[int] = []   # /readyz statuses from the first live moment on

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/livez", timeout=2).status_code == 200:
                    status = httpx.get(self.url + "/readyz", timeout=2).status_code
                    self.readyz_seen.append(status)
                    if status == 200:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tiny_onnx, tmp_path_factory):
    srv = Server(tiny_onnx, tmp_path_factory.mktemp("serve"), SLIMSHIP_WARMUP_S="2",
                 SLIMSHIP_MAX_QUEUE=str(MAX_QUEUE), SLIMSHIP_THREADS="1")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def clf(tiny_onnx) -> Classifier:
    return Classifier(tiny_onnx, threads=1)


def classify(server, body, **kw) -> httpx.Response:
    return httpx.post(server.url + "/classify", json=body, timeout=30, **kw)


def assert_same(http_results, direct_results):
    assert len(http_results) == len(direct_results)
    for got, want in zip(http_results, direct_results):
        assert got["label"] == want["label"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        if "probs" in want:
            assert got["probs"] == pytest.approx(want["probs"], abs=1e-5)


def test_readyz_turns_true_only_after_warm_up(server):
    assert server.readyz_seen[0] == 503, server.readyz_seen   # live, still warming up
    assert server.readyz_seen[-1] == 200


def test_predictions_equal_the_runtime(server, clf):
    texts = demo_texts(40)
    response = classify(server, {"texts": texts})
    assert response.status_code == 200
    assert_same(response.json(), clf.predict(texts))
    assert all(set(item) == {"label", "score"} for item in response.json())
    single = classify(server, {"texts": [texts[3]], "probs": True})
    assert_same(single.json(), clf.predict([texts[3]], probs=True))
    # The largest request allowed, with long texts (truncated to max_length like the runtime does).
    many = [LONG_TEXT + str(i) for i in range(256)]
    assert_same(classify(server, {"texts": many}).json(), clf.predict(many))


def test_concurrent_requests_are_batched_and_answered_in_order(server, clf):
    texts = demo_texts(64)
    requests = [texts[i:i + 1 + i % 4] for i in range(48)]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/classify", json={"texts": r}) for r in requests))

    for request, response in zip(requests, asyncio.run(main())):
        assert response.status_code == 200
        assert_same(response.json(), clf.predict(request))


BAD_REQUESTS = [
    ("missing field", {"content": b'{"probs": true}'}, 400),
    ("empty list", {"json": {"texts": []}}, 400),
    ("not a list", {"json": {"texts": "one text"}}, 400),
    ("number in list", {"json": {"texts": ["ok", 3]}}, 400),
    ("null text", {"json": {"texts": [None]}}, 400),
    ("empty string", {"json": {"texts": ["fine", ""]}}, 400),
    ("probs not a bool", {"json": {"texts": ["ok"], "probs": [1]}}, 400),
    ("body is a list", {"json": ["ok"]}, 400),
    ("too many texts", {"json": {"texts": ["ok"] * 257}}, 400),
    ("text too long", {"json": {"texts": ["x" * 10_001]}}, 400),
    ("invalid JSON", {"content": b'{"texts": ["ok"'}, 400),
    ("invalid UTF-8", {"content": b'{"texts": ["caf\xe9"]}'}, 400),
    ("body over 1 MB", {"content": b'{"texts": ["' + b"a" * 1_000_001 + b'"]}'}, 413),
    ("chunked body over 1 MB", {"content": iter([b'{"texts": ["', b"a" * 600_000, b"a" * 600_000, b'"]}'])}, 413),
]


@pytest.mark.parametrize("name,kwargs,status", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, name, kwargs, status):
    response = httpx.post(server.url + "/classify", headers={"content-type": "application/json"}, timeout=30,
                          **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"], body
    assert classify(server, {"texts": ["still serving"]}).status_code == 200


def test_text_of_exactly_the_limit_is_classified(server):
    response = classify(server, {"texts": ["x" * 10_000]})
    assert response.status_code == 200 and len(response.json()) == 1


def test_metadata_describes_the_model(server, tiny_onnx):
    response = httpx.get(server.url + "/metadata")
    assert response.status_code == 200
    meta = response.json()
    manifest = json.loads((tiny_onnx / "manifest.json").read_text())
    assert meta["sha256"] == manifest_digest(tiny_onnx)
    assert meta["version"] == manifest_digest(tiny_onnx)[:16] and meta["model"] == "slimship-classifier"
    assert meta["labels"] == manifest["labels"] and meta["max_length"] == manifest["max_length"]
    assert meta["metrics"] == manifest["metrics"]
    assert meta["settings"]["max_queue"] == MAX_QUEUE and meta["settings"]["threads"] == 1
    assert meta["settings"]["workers"] == min(cpu_count(), 4)   # the default: a worker per core


def test_metrics_and_openapi(server):
    classify(server, {"texts": ["count me"]})
    metrics = httpx.get(server.url + "/metrics").text
    counts = [line for line in metrics.splitlines()
              if line.startswith("bentoml_service_request_total") and 'endpoint="/classify"' in line]
    assert any('http_response_code="200"' in line and float(line.rsplit(" ", 1)[1]) >= 1 for line in counts)
    assert any('http_response_code="400"' in line for line in counts)
    spec = httpx.get(server.url + "/docs.json").json()
    assert "/classify" in spec["paths"] and "post" in spec["paths"]["/classify"]


def test_overload_sheds_fast_with_retry_after(server, clf):
    """Requests that would push the queue past SLIMSHIP_MAX_QUEUE texts get 503 + Retry-After at once."""
    texts = [LONG_TEXT + str(i) for i in range(256)]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/classify", json={"texts": texts}) for _ in range(12)))

    responses = asyncio.run(main())
    shed = [r for r in responses if r.status_code == 503]
    served = [r for r in responses if r.status_code == 200]
    assert len(shed) + len(served) == len(responses), [r.status_code for r in responses]
    assert shed, "12 x 256 texts against a 600-text queue should shed"
    for r in shed:
        assert int(r.headers["retry-after"]) >= 1 and "overloaded" in r.json()["error"]
        assert r.elapsed.total_seconds() < max(s.elapsed.total_seconds() for s in served)  # shed fast
    want = clf.predict(texts)
    for r in served:
        assert_same(r.json(), want)
    assert classify(server, {"texts": ["after the storm"]}).status_code == 200
    shed_counts = [float(line.rsplit(" ", 1)[1]) for line in httpx.get(server.url + "/metrics").text.splitlines()
                   if line.startswith("slimship_shed_requests_total")]
    assert sum(shed_counts) == len(shed)   # every 503, whichever check refused it, is counted


def classify_schema(spec: dict) -> dict:
    """The request-body JSON schema of POST /classify from the OpenAPI document, $refs inlined."""
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(body)


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values valid under a JSON schema (the subset pydantic emits for this API: objects, arrays, scalars, anyOf)."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        props = {k: from_schema(v) for k, v in schema.get("properties", {}).items()}
        required = set(schema.get("required", []))
        return st.fixed_dictionaries({k: v for k, v in props.items() if k in required},
                                     optional={k: v for k, v in props.items() if k not in required})
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems", 10))
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 50))
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers()
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "null":
        return st.none()
    raise AssertionError(f"unexpected schema node {schema}")


def test_fuzz_from_the_openapi_schema_never_gets_a_5xx(server):
    """Bodies generated from the published schema must succeed; arbitrary JSON must fail with a 4xx, never 5xx."""
    schema = classify_schema(httpx.get(server.url + "/docs.json").json())
    schema["properties"]["texts"]["maxItems"] = 8            # keep each case cheap; the limit is tested above
    schema["properties"]["texts"]["items"]["maxLength"] = 200
    client = httpx.Client(base_url=server.url, timeout=30)
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
    json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                               | st.dictionaries(st.text(), inner, max_size=4), max_leaves=8)
    anything = json_values | st.fixed_dictionaries({"texts": json_values}, optional={"probs": json_values})

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(from_schema(schema))
    def valid_bodies(body):
        response = client.post("/classify", json=body)
        assert response.status_code == 200, (body, response.text)
        assert len(response.json()) == len(body["texts"])

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(anything | st.binary(max_size=64))
    def arbitrary_bodies(body):
        if isinstance(body, bytes):
            response = client.post("/classify", content=body, headers={"content-type": "application/json"})
        else:
            response = client.post("/classify", json=body)
        assert response.status_code < 500, (body, response.text)
        if response.status_code == 200:  # then it was a valid request after all
            assert isinstance(body, dict) and len(response.json()) == len(body["texts"])

    try:
        valid_bodies()
        arbitrary_bodies()
    finally:
        client.close()


def in_progress(server) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("bentoml_service_request_in_progress") and 'endpoint="/classify"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_graceful_shutdown_finishes_in_flight_requests(server, clf):
    """SIGTERM while requests are in flight: each gets its full answer, then the server exits cleanly."""
    texts = [LONG_TEXT + str(i) for i in range(256)]
    results: list = []

    def send():
        results.append(classify(server, {"texts": texts}))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while in_progress(server) < 2 and time.monotonic() < deadline:   # both requests accepted and running
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    assert server.process.wait(timeout=60) == 0
    assert [r.status_code for r in results] == [200, 200]
    for r in results:
        assert_same(r.json(), clf.predict(texts))


def test_tampered_artifact_refuses_to_start(tiny_onnx, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_onnx, tampered)
    (tampered / "tokenizer.json").write_text((tiny_onnx / "tokenizer.json").read_text().replace("[CLS]", "[CLX]"))
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    out = subprocess.run(slimship_cmd("serve", "--model", str(tampered), "--port", str(free_port())), env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "tokenizer.json does not match its sha256" in out.stderr and "Traceback" not in out.stderr


def test_build_pins_the_model_and_the_bento_serves_it(tiny_onnx, tmp_path):
    """`slimship build` prints a bento tag; serving that bento loads exactly the pinned model, even when a newer
    model of the same name is in the store."""
    home = tmp_path / "bentoml"
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    out = subprocess.run(slimship_cmd("build", "--model", str(tiny_onnx)), env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    bento_tag = out.stdout.strip()
    name, version = bento_tag.split(":")
    bento_yaml = (home / "bentos" / name / version / "bento.yaml").read_text()
    pinned = f"slimship-classifier:{manifest_digest(tiny_onnx)[:16]}"
    assert pinned in bento_yaml and "torch" not in (home / "bentos" / name / version / "env" / "python" /
                                                    "requirements.txt").read_text()

    newer = tmp_path / "newer"   # same files, different manifest: a different (and later) model version
    shutil.copytree(tiny_onnx, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["created"] = "2099-01-01T00:00:00Z"
    (newer / "manifest.json").write_text(json.dumps(manifest))
    script = f"from slimship.serve.store import import_artifact; import_artifact({str(newer)!r})"
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parent.parent)

    port = free_port()
    log = open(tmp_path / "bento.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", "127.0.0.1", "--port",
                                str(port)], env={k: v for k, v in env.items() if k != "SLIMSHIP_MODEL"},
                               stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, open(tmp_path / "bento.log").read()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        meta = httpx.get(f"http://127.0.0.1:{port}/metadata").json()
        assert meta["sha256"] == manifest_digest(tiny_onnx) != manifest_digest(newer)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
