"""serve/runtime.py (the one inference path), the adaptive batcher, and the model-store import, without a server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimship.serve.batcher import AdaptiveBatcher, Overloaded
from slimship.core.runtime import Classifier, length_groups
from slimship.core.artifact import ArtifactError, manifest_digest

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["a wonderful, moving film", "dull and far too long", "ok", "I loved every minute of it!"]


@pytest.fixture(scope="module")
def clf(tiny_onnx) -> Classifier:
    return Classifier(tiny_onnx, threads=1)


def test_predictions_have_labels_scores_and_probs_in_order(clf):
    out = clf.predict(TEXTS, probs=True)
    assert len(out) == len(TEXTS)
    for item in out:
        assert item["label"] in clf.labels
        assert set(item["probs"]) == set(clf.labels)
        assert sum(item["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert item["score"] == pytest.approx(max(item["probs"].values()))
        assert item["probs"][item["label"]] == item["score"]
    assert "probs" not in clf.predict(TEXTS[:1])[0]
    # Each text alone gives the same answer as inside a padded batch (the attention mask hides padding).
    for text, batched in zip(TEXTS, out):
        alone = clf.predict([text], probs=True)[0]
        assert alone["label"] == batched["label"]
        assert alone["score"] == pytest.approx(batched["score"], abs=1e-5)


def test_public_api_and_settings(clf, tiny_onnx):
    manifest = json.loads((tiny_onnx / "manifest.json").read_text())
    assert clf.labels == manifest["labels"] and clf.max_length == manifest["max_length"]
    assert clf.manifest["files"] == manifest["files"]
    assert clf.threads == 1 and clf.session.get_session_options().intra_op_num_threads == 1
    assert clf.logits([]).shape == (0, len(clf.labels))
    logits = clf.logits(TEXTS)
    assert logits.shape == (len(TEXTS), len(clf.labels))
    assert clf.results(logits) == clf.predict(TEXTS)


def test_length_groups_cover_every_row_once_and_cut_where_padding_costs_more_than_a_call():
    lengths = np.array([40, 5, 6, 41, 5, 39, 7, 42])
    groups = length_groups(lengths, call_overhead=32)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    assert [sorted(lengths[g].tolist()) for g in groups] == [[5, 5, 6, 7], [39, 40, 41, 42]]
    assert len(length_groups(lengths, call_overhead=10_000)) == 1       # a call dearer than any padding: one
    assert len(length_groups(np.full(32, 12), call_overhead=0)) == 1     # equal lengths: nothing to save
    assert length_groups(np.array([9]))[0].tolist() == [0]


def test_split_batches_give_the_logits_of_one_padded_call(clf):
    texts = ["ok", "word " * 60, "fine", "a rather longer sentence about a film " * 4, "no"] * 3
    feeds = clf.encode(texts)
    assert len(length_groups(feeds["attention_mask"].sum(axis=1))) > 1   # the split really happens here
    one_call = clf.session.run(["logits"], feeds)[0]
    np.testing.assert_allclose(clf.logits(texts), one_call, atol=1e-5)


def test_several_threads_run_a_batch_data_parallel_with_the_same_logits(clf, tiny_onnx):
    """threads > 1: a batch's calls run side by side on one-thread sessions (a lone group is halved first);
    a single text still runs on the multi-thread session. Same logits as one thread (an FP32 model)."""
    parallel = Classifier(tiny_onnx, threads=3)
    mixed = ["ok", "word " * 60, "fine", "a rather longer sentence about a film " * 4, "no"] * 3
    alike = ["a sentence of six words here"] * 7        # one length group, split across the threads
    for texts in (mixed, alike, mixed[:1]):
        np.testing.assert_allclose(parallel.logits(texts), clf.logits(texts), atol=1e-5)
    assert parallel._parallel_session is not None and parallel._pool._max_workers == 3
    single = Classifier(tiny_onnx, threads=1)
    single.logits(mixed)
    assert single._parallel_session is None            # one thread: the plain path, no second session


def test_parallel_false_runs_on_the_calling_thread_alone_with_the_same_logits(clf, tiny_onnx):
    """What the server's low-priority thread runs while shedding: no pool and no multi-thread session, whose
    threads would keep their normal priority; the answers are the parallel path's."""
    texts = ["ok", "word " * 60, "fine", "a rather longer sentence about a film " * 4, "no"] * 3
    parallel = Classifier(tiny_onnx, threads=3)
    for batch in (texts, texts[:1]):
        np.testing.assert_allclose(parallel.logits(batch, parallel=False), clf.logits(batch), atol=1e-5)
    assert parallel._pool is None and parallel._parallel_session is not None
    np.testing.assert_allclose(parallel.logits(texts), parallel.logits(texts, parallel=False), atol=1e-5)
    assert parallel._pool is not None


def test_providers_are_chosen_once_for_every_session_of_a_classifier(tiny_onnx, monkeypatch):
    """The one-thread sessions a batch opens on first use run where the classifier's first session runs, even if
    SLIMSHIP_DEVICE changed in between (a CPU classifier's batches must not move to CUDA)."""
    calls = []
    choose = Classifier.providers
    monkeypatch.setattr(Classifier, "providers", staticmethod(lambda ort: calls.append(1) or choose(ort)))
    parallel = Classifier(tiny_onnx, threads=2)
    monkeypatch.setenv("SLIMSHIP_DEVICE", "cuda")
    parallel.logits(["ok", "word " * 60, "fine", "a rather longer sentence about a film " * 4])
    assert parallel._parallel_session is not None and len(calls) == 1
    assert parallel._parallel_session.get_providers() == parallel.session.get_providers()


def test_encoded_rows_run_in_length_sorted_batches_give_the_same_logits_in_input_order(clf, tiny_onnx):
    """Batch scoring encodes a whole chunk at once, then runs it batch_size rows at a time (each batch cut to its
    own longest row): the same logits, in input order, as the texts run one request at a time."""
    texts = ["ok", "word " * 60, "fine", "a rather longer sentence about a film " * 4, "no", "a b c d e f"] * 5
    feeds = clf.encode(texts)
    want = np.concatenate([clf.logits(texts[i:i + 4]) for i in range(0, len(texts), 4)])
    for runtime in (clf, Classifier(tiny_onnx, threads=2)):
        for batch_size in (1, 4, 7, 64):
            np.testing.assert_allclose(runtime.run(feeds, batch_size=batch_size), want, atol=1e-5)
    assert clf.run(clf.encode([]), batch_size=4).shape == (0, len(clf.labels))
    # A lone row is cut to its own length too (here it carries the padding of a longer batch-mate).
    np.testing.assert_allclose(clf.run(feeds, batch_size=1)[:1], clf.logits(texts[:1]), atol=1e-5)


def test_long_text_is_truncated_to_max_length(clf):
    feeds = clf.encode(["word " * 5000, "short"])
    assert feeds["input_ids"].shape == (2, clf.max_length)
    assert feeds["attention_mask"][1].sum() < clf.max_length   # the short one is padded, not stretched
    assert len(clf.predict(["word " * 5000])) == 1


def test_tampered_or_incomplete_artifact_is_refused(tiny_onnx, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_onnx, tampered)
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="model.onnx does not match its sha256"):
        Classifier(tampered)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_onnx, incomplete)
    (incomplete / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json is missing"):
        Classifier(incomplete)
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        Classifier(tmp_path / "nowhere")


def test_batcher_answers_concurrent_requests_like_direct_calls(clf):
    calls = []

    def infer(texts):
        calls.append(len(texts))
        return clf.logits(texts)

    batcher = AdaptiveBatcher(infer, max_batch_size=8, max_latency_ms=10_000, max_queue=10_000)
    requests = [TEXTS[i % 4:i % 4 + 1 + i % 3] for i in range(40)]

    async def main():
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.drain()
        return results

    results = asyncio.run(main())
    for request, logits in zip(requests, results):
        np.testing.assert_allclose(logits, clf.logits(request), atol=1e-5)
    assert sum(calls) == sum(len(r) for r in requests)
    assert len(calls) < len(requests)          # requests were batched together
    assert max(calls) <= 8


def test_batcher_sheds_fast_when_the_queue_is_full(clf):
    batcher = AdaptiveBatcher(clf.logits, max_batch_size=4, max_latency_ms=10_000, max_queue=6)

    async def main():
        return await asyncio.gather(*(batcher.submit(TEXTS[:3]) for _ in range(6)), return_exceptions=True)

    results = asyncio.run(main())
    shed = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, np.ndarray)]
    assert shed and served and len(shed) + len(served) == 6
    assert all(e.retry_after >= 1 for e in shed) and batcher.shed == len(shed)

    # Predicted wait: behind 4 queued texts at 0.1 s each, a 50 ms bound sheds; an idle batcher admits anything.
    slow = AdaptiveBatcher(clf.logits, max_batch_size=4, max_latency_ms=50, max_queue=1000, seconds_per_text=0.1)

    async def two():
        return await asyncio.gather(slow.submit(TEXTS), slow.submit(TEXTS[:1]), return_exceptions=True)

    first, second = asyncio.run(two())
    assert isinstance(first, np.ndarray) and first.shape == (4, len(clf.labels))
    assert isinstance(second, Overloaded) and "predicted queue wait 400 ms" in str(second)


def test_batches_run_at_lower_priority_only_while_shedding(clf):
    """While the server sheds (and briefly after), inference runs on a thread with a higher nice value, so the
    event loop that refuses requests goes first; at normal load it keeps the normal one."""
    import os
    import threading

    seen = []

    def infer(texts, path="normal"):
        seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
                     path))
        return clf.logits(texts)

    batcher = AdaptiveBatcher(infer, max_batch_size=4, max_latency_ms=10_000, max_queue=4, infer_nice=7,
                              low_priority_infer=lambda texts: infer(texts, "low"))

    async def main():
        await batcher.submit(TEXTS[:2])                 # normal load
        await asyncio.gather(*(batcher.submit(TEXTS[:4]) for _ in range(3)), return_exceptions=True)  # sheds
        await batcher.submit(TEXTS[:2])                 # right after shedding
        await batcher.drain()

    asyncio.run(main())
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen[0] == ("slimship-infer_0", base, "normal") and batcher.shed >= 1
    assert seen[-1][0].startswith("slimship-infer-low") and seen[-1][1:] == (min(19, base + 7), "low")


def test_import_into_model_store_and_serve_imports_no_torch(tiny_onnx, tmp_path):
    """The store import verifies and pins the artifact; the serving modules never load torch or transformers."""
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    script = f"""
import sys
from slimship.serve.store import import_artifact
tag = import_artifact({str(tiny_onnx)!r})
assert import_artifact({str(tiny_onnx)!r}) == tag  # idempotent
import os; os.environ["SLIMSHIP_MODEL"] = tag
import slimship.core.runtime, slimship.serve.service, slimship.serve.batcher, slimship.serve.limits, slimship.serve.settings
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum"))
ours = sorted(m.__file__ for name, m in sys.modules.items() if name.split(".")[0] in ("serve", "slimship"))
print("OURS", *ours)
print(tag); print("HEAVY", bad)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "HEAVY []"
    # Every project file the service imports goes into the bento (bentofile.yaml's include list), or the image
    # fails to start with a ModuleNotFoundError that only the container tests would see.
    import yaml

    included = set(yaml.safe_load((ROOT / "slimship" / "serve" / "bentofile.yaml").read_text())["include"])
    imported = {str(Path(f).resolve().relative_to(ROOT)) for f in next(l for l in lines if l.startswith("OURS"))
                .split()[1:] if "serve/store.py" not in f}
    assert imported <= included, f"not in bentofile.yaml's include: {sorted(imported - included)}"
    assert lines[-2] == f"slimship-classifier:{manifest_digest(tiny_onnx)[:16]}"
    stored = tmp_path / "bentoml" / "models" / "slimship-classifier" / manifest_digest(tiny_onnx)[:16]
    assert (stored / "manifest.json").read_bytes() == (tiny_onnx / "manifest.json").read_bytes()
    Classifier(stored)  # the stored copy verifies


def test_request_timeout_answers_504_and_leaves_no_timer_behind():
    """serve/request_timeout.py (applied by serve/bentoml_patches.py): BentoML's per-request timeout, with its timer cancelled once a request is done
    (BentoML 1.4's own keeps every finished request reachable for the whole timeout)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from slimship.serve import bentoml_patches

    bentoml_patches.cancel_request_timers()
    scope = {"type": "http", "method": "POST", "path": "/classify", "headers": []}

    async def fast_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"[]"})

    async def slow_app(scope, receive, send):
        await asyncio.sleep(30)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def main():
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        loop = asyncio.get_running_loop()
        for _ in range(50):
            await TimeoutMiddleware(fast_app, timeout=30)(scope, receive, send)
        pending = [h for h in loop._scheduled if not h.cancelled()]
        statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
        sent.clear()
        await TimeoutMiddleware(slow_app, timeout=0.05)(scope, receive, send)
        return pending, statuses, sent

    pending, statuses, timed_out = asyncio.run(main())
    assert statuses == [200] * 50 and pending == []
    assert timed_out[0]["status"] == 504 and b"0.05 seconds" in timed_out[1]["body"]
