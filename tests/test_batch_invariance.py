"""A text's label and score do not depend on its batch: the chosen model of a compress run, directly and served.

Also: the default search never chooses dynamic INT8 (its per-call activation scale makes answers depend on
batch-mates) and --allow-batch-dependent lets it in and says so; the budget counts from the best reference the
run has; a test split is checked and a chosen model that misses the budget there is flagged.
"""

from __future__ import annotations

import asyncio
import csv
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_DATA, slimship_cmd
from slimship.core import artifact
from slimship.core.errors import UserError

GRID = """
layers: []
prune: [{}]
optimize: [none]
quantize: [dynamic, static]
embedding_bits: [8]
include_teacher: true
"""
FAST = ["--max-length", "64", "--quiet", "--amp", "off", "--latency-rows", "10", "--throughput-rows", "64",
        "--calibration", "32", "--max-accuracy-drop", "100"]


def texts_of(split: str, data: Path = DEMO_DATA) -> list[str]:
    with open(data / f"{split}.csv", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def run_compress(teacher: Path, data: Path, out: Path, grid: str, *extra: str) -> subprocess.CompletedProcess:
    out.parent.mkdir(parents=True, exist_ok=True)
    grid_file = out.parent / f"{out.name}-grid.yaml"
    grid_file.write_text(grid)
    return subprocess.run(slimship_cmd("compress", "--teacher", str(teacher), "--data", str(data),
                                       "--out", str(out), "--grid", str(grid_file), *FAST, *extra),
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def data_with_test(tmp_path_factory) -> Path:
    """The demo data with a test split (the validation rows again: only the mechanics are under test here)."""
    data = tmp_path_factory.mktemp("data") / "sentiment"
    data.mkdir()
    for split in ("train", "validation"):
        shutil.copy(DEMO_DATA / f"{split}.csv", data / f"{split}.csv")
    shutil.copy(DEMO_DATA / "validation.csv", data / "test.csv")
    return data


@pytest.fixture(scope="module")
def compressed(tiny_teacher, data_with_test, tmp_path_factory):
    """A default (batch-invariant) search over the tiny teacher's dynamic and static INT8 exports."""
    out = tmp_path_factory.mktemp("invariance") / "out"
    result = run_compress(tiny_teacher, data_with_test, out, GRID)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_default_search_keeps_dynamic_int8_out(compressed):
    out, result = compressed
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    dynamic, static = rows["teacher-onnx-int8-dynamic"], rows["teacher-onnx-int8-static"]
    assert dynamic["batch_invariant"] is False and dynamic["excluded"] == "batch-dependent"
    assert static["batch_invariant"] is True and not static.get("excluded")
    # Everything is within a 100-point budget; the dynamic candidate is never the one chosen.
    assert dynamic["within_budget"] and not dynamic["chosen"]
    assert report["chosen"] == "teacher-onnx-int8-static" and report["chosen_batch_invariant"] is True
    assert report["budget"]["allow_batch_dependent"] is False
    model = artifact.load(out / "model", format="onnx")
    assert model["quantization"]["batch_invariant"] is True and model["batch_invariant"] is True
    assert "only batch-invariant candidates are chosen" in result.stdout
    assert "batch-dependent, not chosen" in result.stdout


def test_allow_batch_dependent_lets_dynamic_int8_in_and_says_so(tiny_teacher, data_with_test, compressed,
                                                                 tmp_path):
    # Only dynamic in the grid: refused by default before anything is built, chosen with the option.
    out = tmp_path / "dyn"
    refused = run_compress(tiny_teacher, data_with_test, out, GRID.replace("[dynamic, static]", "[dynamic]"))
    assert refused.returncode != 0 and "--allow-batch-dependent" in refused.stderr
    assert not (out / "candidates").exists()

    shutil.copytree(compressed[0] / "candidates", out / "candidates")    # reuse the finished candidates
    allowed = run_compress(tiny_teacher, data_with_test, out, GRID.replace("[dynamic, static]", "[dynamic]"),
                           "--allow-batch-dependent")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"] == "teacher-onnx-int8-dynamic" and report["chosen_batch_invariant"] is False
    assert report["budget"]["allow_batch_dependent"] is True
    assert "WARNING: the chosen model is batch-dependent" in allowed.stdout
    assert artifact.load(out / "model")["batch_invariant"] is False


def labels_and_scores(clf, texts: list[str], order: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Each text's label and winning probability when the texts are sent in ``order``, ``batch`` at a time."""
    from slimship.core.runtime import softmax

    probs = np.zeros((len(texts), len(clf.labels)))
    for start in range(0, len(texts), batch):
        rows = order[start:start + batch]
        probs[rows] = softmax(clf.logits([texts[i] for i in rows]))
    return probs.argmax(-1), probs.max(-1)


def test_chosen_model_answers_each_text_alike_in_any_batch(compressed):
    from slimship.core.runtime import Classifier

    clf = Classifier(compressed[0] / "model", threads=2)
    texts = texts_of("validation")[:256]
    order = np.arange(len(texts))
    single = labels_and_scores(clf, texts, order, 1)
    for name, batch_order in (("batch of 32", order),
                              ("shuffled batch of 32", np.random.default_rng(0).permutation(len(texts)))):
        labels, scores = labels_and_scores(clf, texts, batch_order, 32)
        assert (labels == single[0]).all(), f"{name}: {int((labels != single[0]).sum())} labels changed"
        np.testing.assert_allclose(scores, single[1], atol=1e-5, err_msg=name)


def test_served_answers_do_not_depend_on_concurrent_traffic(compressed, tmp_path):
    """Requests of mixed sizes sent at once are batched together by the service; every answer equals the text's
    batch-1 answer from the runtime."""
    import httpx

    from slimship.core.runtime import Classifier
    from tests.test_service import Server

    model = compressed[0] / "model"
    clf = Classifier(model, threads=1)
    texts = texts_of("validation")[:96] + texts_of("train")[:32]
    alone = {text: clf.predict([text])[0] for text in texts}
    rng = np.random.default_rng(1)
    requests = [[texts[j] for j in rng.choice(len(texts), size=1 + i % 7, replace=False)] for i in range(60)]
    server = Server(model, tmp_path, SLIMSHIP_WARMUP_S="0", SLIMSHIP_THREADS="1")
    try:
        server.wait_ready()

        async def send_all():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/classify", json={"texts": r}) for r in requests))

        for _ in range(2):          # two rounds: other batch-mates each time
            for request, response in zip(requests, asyncio.run(send_all())):
                assert response.status_code == 200, response.text
                for text, got in zip(request, response.json()):
                    assert got["label"] == alone[text]["label"], text
                    assert got["score"] == pytest.approx(alone[text]["score"], abs=1e-5)
    finally:
        server.stop()


def test_budget_counts_from_the_best_model_the_run_has():
    from slimship.compress.config import CompressConfig
    from slimship.compress.search import best_reference, choose
    from slimship.core.report import render_text

    def row(name, accuracy, rows_s, stage="quantize", invariant=True):
        return {"name": name, "stage": stage, "accuracy": accuracy, "throughput_rows_s": rows_s,
                "latency_ms_p50": 1000 / rows_s, "file_mb": 10.0, "batch_invariant": invariant}

    # An underfit teacher (80%) that a student beats (86%): a pruned student at 82% is within 1 point of the
    # teacher but 4 below the student, so it must not be chosen.
    teacher = {"name": "teacher", "stage": "teacher", "accuracy": 0.80}
    rows = [teacher, row("L3-int8-static", 0.86, 500), row("L3-pruned-int8-static", 0.82, 1500),
            row("L3-int8-dynamic", 0.858, 900, invariant=False)]
    reference = best_reference(rows)
    assert reference["name"] == "L3-int8-static" and reference["is_teacher"] is False
    assert "6.00 points above the teacher" in reference["why"]
    for r in rows:
        r["delta_points"] = round((r["accuracy"] - reference["accuracy"]) * 100, 3)
    chosen = choose(rows, CompressConfig(max_accuracy_drop=1.0))
    assert chosen["name"] == "L3-int8-static"
    assert not rows[2]["within_budget"] and rows[3]["excluded"] == "batch-dependent"
    assert choose(rows, CompressConfig(max_accuracy_drop=1.0, allow_batch_dependent=True))["name"] == \
        "L3-int8-dynamic"

    # The teacher stays the reference when nothing beats it (ties go to the teacher).
    assert best_reference([teacher, row("a", 0.80, 100), row("b", 0.7, 100)])["name"] == "teacher"

    text = render_text({"rows": rows, "reference": reference, "teacher_accuracy": 0.80,
                        "budget": {"max_accuracy_drop_points": 1.0, "objective": "throughput",
                                   "allow_batch_dependent": False}})
    assert "reference: L3-int8-static at 86.00%" in text and "points below the reference" in text


def test_test_split_is_checked_and_a_miss_is_flagged(compressed, tiny_teacher, tmp_path):
    """The demo data has a test split: the report shows the teacher's and the chosen model's test accuracy. A
    test split on which the chosen model does worse than the budget allows is flagged."""
    from slimship.compress.config import CompressConfig
    from slimship.compress.evaluate import artifact_logits
    from slimship.compress.search import test_check
    from slimship.core.config import DataConfig
    from slimship.core.report import render_text

    out, result = compressed
    report = json.loads((out / "report.json").read_text())
    test = report["test"]
    assert test["rows"] == len(texts_of("validation")) and not test["misses_budget"]   # a 100-point budget
    assert f"test split ({test['rows']} rows): teacher {test['teacher_accuracy'] * 100:.2f}%" in result.stdout

    # A test split labelled with the teacher's own answers on every text where the chosen model disagrees:
    # the teacher scores 100% there and the chosen model 0%.
    manifest = artifact.load(tiny_teacher)
    # Demo texts and seeded shuffles of their words: the shuffles put many texts near the decision boundary,
    # where INT8 and FP32 part, so some text always tells them apart.
    texts = texts_of("train") + texts_of("validation")
    rng = random.Random(0)
    words = " ".join(texts).split()
    texts += [" ".join(rng.sample(words, rng.randint(3, 12))) for _ in range(1500)]
    teacher_labels = artifact_logits(tiny_teacher, texts).argmax(-1)
    chosen_labels = artifact_logits(out / "model", texts).argmax(-1)
    differ = np.flatnonzero(teacher_labels != chosen_labels)
    if len(differ) == 0:
        pytest.skip("the chosen INT8 model agrees with the teacher on every demo text")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "validation"):
        shutil.copy(DEMO_DATA / f"{split}.csv", data_dir / f"{split}.csv")
    with open(data_dir / "test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([texts[i], manifest["labels"][teacher_labels[i]]] for i in differ)

    chosen = next(r for r in report["rows"] if r["chosen"])
    checked = test_check(tiny_teacher, chosen, report["reference"] | {"is_teacher": True, "name": "teacher"},
                         report["rows"], DataConfig(str(data_dir)), manifest["labels"],
                         CompressConfig(max_accuracy_drop=1.0))
    # The chosen (static INT8) model answers each text alike in any batch: exactly 0%. The FP32 teacher may
    # move by float noise in other batches, so a label on the edge could turn.
    assert checked["teacher_accuracy"] > 0.9 and checked["chosen_accuracy"] == 0.0
    assert checked["drop_points"] > 90 and checked["misses_budget"]
    text = render_text({**report, "test": checked, "reference": {"is_teacher": True}})
    assert "WARNING: on the test split" in text and "over the 1-point budget" in text


def test_grid_of_only_dynamic_is_refused_in_python_too(tiny_teacher, tmp_path):
    from slimship.compress.config import CompressConfig, Grid
    from slimship.compress.search import compress
    from slimship.core.config import DataConfig

    grid = Grid(layers=[], prune=[{}], optimize=["none"], quantize=["dynamic"], embedding_bits=[8])
    with pytest.raises(UserError, match="allow-batch-dependent"):
        compress(tiny_teacher, tmp_path / "c", DataConfig(str(DEMO_DATA)), CompressConfig(grid=grid))
