"""The HTTP service, against a real `bentoml serve` process on 127.0.0.1 (one per module, started here).

The server runs the tiny ONNX artifact with a 2 s warm-up (so /readyz can be seen saying "not ready") and a small
queue (so overload can be provoked with a handful of requests). Its latency bound is generous: on a busy test
machine a 256-text batch can take longer than the default 500 ms, and then a second such request would be shed
by the predicted wait where a test expects it served; the queue bound alone decides here.
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
                 SLIMSHIP_MAX_QUEUE=str(MAX_QUEUE), SLIMSHIP_THREADS="1", SLIMSHIP_MAX_LATENCY_MS="5000")
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
    ("probs a number", {"json": {"texts": ["ok"], "probs": 1}}, 400),     # the schema says boolean: no coercion
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


def status_counts(server) -> dict[str, float]:
    """Requests answered so far, by status code, over every endpoint (BentoML's request counter)."""
    counts: dict[str, float] = {}
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("bentoml_service_request_total"):
            code = line.split('http_response_code="', 1)[1].split('"', 1)[0]
            counts[code] = counts.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_schemathesis_finds_nothing_and_no_request_gets_a_5xx(server, tmp_path):
    """The schema-driven fuzzer with all its checks against the served OpenAPI document: requests valid under
    the schema must succeed, invalid ones must be refused with a documented 4xx, every answer must match its
    documented schema, status and headers, and nothing may answer 5xx or leave a traceback in the log."""
    before = status_counts(server)
    run = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", server.url + "/docs.json", "--checks",
                          "all", "--max-examples", "40", "--seed", "18", "--request-timeout", "30"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "No issues found" in run.stdout, run.stdout[-6000:]
    after = status_counts(server)
    assert sum(after.values()) - sum(before.values()) > 100          # it really sent requests
    assert all(after.get(code, 0) == before.get(code, 0) for code in after if code.startswith("5")), after
    assert "Traceback" not in server.output()


NOT_JSON = [
    ("multipart form", {"files": {"texts": ("texts.txt", b"great film")}}),
    ("url-encoded form", {"data": {"texts": "great film"}}),
    ("plain text", {"content": b'{"texts": ["great film"]}', "headers": {"content-type": "text/plain"}}),
    ("pickle", {"content": b"\x80\x04N.", "headers": {"content-type": "application/vnd.bentoml+pickle"}}),
]


@pytest.mark.parametrize("name,kwargs", NOT_JSON, ids=[n[0] for n in NOT_JSON])
def test_a_body_that_is_not_json_gets_415(server, name, kwargs):
    response = httpx.post(server.url + "/classify", timeout=30, **kwargs)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"]
    assert classify(server, {"texts": ["still serving"]}).status_code == 200


def test_the_openapi_document_describes_every_error_answer(server):
    """Generated clients read the error bodies from /docs.json: each status /classify answers is documented with
    the {"error", "detail"} schema, and real answers validate against it."""
    import jsonschema

    spec = httpx.get(server.url + "/docs.json").json()
    operation = spec["paths"]["/classify"]["post"]
    assert operation["requestBody"]["required"] is True
    error_schema = spec["components"]["schemas"]["ErrorBody"]
    for status in ("400", "413", "415", "503", "504"):
        assert operation["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"}, status
    assert operation["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert "/metadata" in spec["paths"]
    answers = [classify(server, {"texts": [""]}),                                    # pydantic's 400, with detail
               httpx.post(server.url + "/classify", content=b"\xff", headers={"content-type": "application/json"}),
               httpx.post(server.url + "/classify", content=b"x" * 1_000_001),
               httpx.post(server.url + "/classify", data={"texts": "x"})]
    assert [r.status_code for r in answers] == [400, 400, 413, 415]
    for response in answers:
        jsonschema.validate(response.json(), error_schema)
    assert answers[0].json()["detail"][0]["loc"] == ["texts", 0]


def test_pairs_or_unknown_keys_sent_to_a_single_text_model_get_400(server):
    """A body key the endpoint does not know is refused, not ignored: text_pairs sent to a single-text model
    would otherwise be answered about the texts alone."""
    for body in ({"texts": ["a film"], "text_pairs": ["a plot"]}, {"texts": ["a film"], "prob": True}):
        response = classify(server, body)
        assert response.status_code == 400 and response.json()["detail"][0]["type"] == "extra_forbidden"
    assert httpx.post(server.url + "/rerank", json={"query": "q", "documents": ["d"]}, timeout=30).status_code == 404


def test_bentoml_version_check_names_both_versions(monkeypatch):
    """The patches of BentoML's private modules refuse to run on any BentoML but the one they were written for,
    before they change anything."""
    import bentoml
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from slimship.serve import bentoml_patches

    bentoml_patches.check_bentoml_version()    # the installed one is the one they were written for
    monkeypatch.setattr(bentoml, "__version__", "1.5.0")
    original = TimeoutMiddleware.__call__
    with pytest.raises(RuntimeError, match=r"written for BentoML 1\.4\.40, but BentoML 1\.5\.0 is installed"):
        bentoml_patches.cancel_request_timers()
    with pytest.raises(RuntimeError, match="1.5.0"):
        bentoml_patches.allow_outermost_middleware()
    assert TimeoutMiddleware.__call__ is original


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


def test_bentoml_serve_refuses_a_tampered_stored_model_before_any_worker_starts(tiny_onnx, tmp_path):
    """`bentoml serve` on a model whose stored copy was changed: the deployment check (in the supervisor, once)
    stops it with the reason, instead of workers failing and being restarted again and again."""
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    script = f"from slimship.serve.store import import_artifact; print(import_artifact({str(tiny_onnx)!r}))"
    tag = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    stored = tmp_path / "bentoml" / "models" / "slimship-classifier" / tag.split(":")[1]
    (stored / "tokenizer.json").write_text((stored / "tokenizer.json").read_text().replace("[CLS]", "[CLX]"))
    out = subprocess.run([sys.executable, "-m", "bentoml", "serve", "slimship.serve.service:Classify", "--port",
                          str(free_port())], env=dict(env, SLIMSHIP_MODEL=tag), capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 1
    assert "tokenizer.json does not match its sha256" in out.stderr.strip().splitlines()[-1]
    assert "initialized" not in out.stderr + out.stdout        # no worker ever started


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
