"""Task shapes through the chain: sentence pairs (and /rerank), multi-label and regression.

Data rules, metrics and losses run without a trained model. Each task then trains the tiny model once (module
fixtures) on the generated sets of tests/task_data.py and exports it; the runtime, batch scoring and (for pairs)
the HTTP service must give the answers PyTorch gives.
"""

from __future__ import annotations

import csv
import json

import httpx
import numpy as np
import pytest

from slimship.core import artifact
from slimship.core.config import DataConfig
from slimship.core.data import DataError, load_data
from slimship.core.errors import UserError
from slimship.core.metrics import multilabel_metrics, regression_metrics, sigmoid, task_metrics, tune_thresholds
from slimship.core.tasks import task_of, takes_pairs, thresholds_of
from tests.task_data import make_task_data


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- data ----------------------------------------------------------------------------------------------------


def test_pairs_are_read_from_text_pair_by_default_and_from_a_named_column(tmp_path):
    rows = [("q1", "d1", "1"), ("q2", "d2", "0"), ("q3", "d3", "1"), ("q4", "d4", "0")]
    write_csv(tmp_path / "train.csv", ["text", "text_pair", "label"], rows)
    data = load_data(tmp_path)
    assert data.text_pairs and data.task == "classification"
    assert data.splits["train"].inputs[0] == ("q1", "d1")
    named = tmp_path / "named"
    named.mkdir()
    write_csv(named / "train.csv", ["text", "other", "label"], rows)
    assert not load_data(named).text_pairs                            # no text_pair column: single texts
    assert load_data(named, text_pair_column="other").splits["train"].inputs[1] == ("q2", "d2")
    assert not load_data(tmp_path, text_pairs=False).text_pairs       # a single-text model ignores the column


def test_a_missing_pair_names_file_and_row(tmp_path):
    write_csv(tmp_path / "train.csv", ["text", "text_pair", "label"],
              [("q1", "d1", "1"), ("q2", "d2", "0"), ("q3", "", "1")])
    with pytest.raises(DataError, match=r"train.csv: row 3: column 'text_pair' is empty"):
        load_data(tmp_path)
    write_csv(tmp_path / "train.csv", ["text", "label"], [("q1", "1"), ("q2", "0")])
    with pytest.raises(DataError, match=r"train.csv: missing column\(s\) 'text_pair'"):
        load_data(tmp_path, text_pairs=True)                          # a pair model needs the column


def test_multilabel_from_csv_jsonl_and_parquet_is_the_same(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("a", ["sports"]), ("b", ["music", "food"]), ("c", []), ("d", ["food"])]
    csv_dir, jsonl_dir, parquet_dir = (tmp_path / n for n in ("csv", "jsonl", "parquet"))
    for d in (csv_dir, jsonl_dir, parquet_dir):
        d.mkdir()
    write_csv(csv_dir / "train.csv", ["text", "labels"], [(t, ";".join(ls) if ls else ";") for t, ls in rows])
    write_jsonl(jsonl_dir / "train.jsonl", [{"text": t, "labels": ls} for t, ls in rows])
    pq.write_table(pa.table({"text": [t for t, _ in rows], "labels": [ls for _, ls in rows]}),
                   parquet_dir / "train.parquet")
    loaded = [load_data(d, label_column="labels") for d in (csv_dir, jsonl_dir, parquet_dir)]
    for data in loaded:
        assert data.task == "multilabel" and data.labels == ["food", "music", "sports"]
        assert data.splits["train"].labels == [[0, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]]


def test_an_unknown_label_in_a_list_names_file_and_row(tmp_path):
    write_csv(tmp_path / "train.csv", ["text", "labels"], [("a", "x;y"), ("b", "y")])
    write_csv(tmp_path / "validation.csv", ["text", "labels"], [("c", "x"), ("d", "y;zed")])
    with pytest.raises(DataError, match=r"validation.csv: label 'zed' \(row 2, column 'labels'\) training never saw"):
        load_data(tmp_path, label_column="labels")


def test_regression_is_inferred_forced_and_checked(tmp_path):
    write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "0.5"), ("b", "3.8"), ("c", "5")])
    data = load_data(tmp_path)
    assert data.task == "regression" and data.labels == ["score"]
    assert data.splits["train"].labels == [0.5, 3.8, 5.0]
    whole = tmp_path / "whole"
    whole.mkdir()
    write_csv(whole / "train.csv", ["text", "label"], [("a", "1"), ("b", "4"), ("c", "5")])
    assert load_data(whole).task == "classification"                  # whole numbers: labels, unless forced
    assert load_data(whole, task="regression").splits["train"].labels == [1.0, 4.0, 5.0]
    write_csv(tmp_path / "validation.csv", ["text", "label"], [("d", "2.5"), ("e", "high")])
    with pytest.raises(DataError, match=r"validation.csv: row 2: column 'label': 'high' is not a number"):
        load_data(tmp_path)
    write_jsonl(tmp_path / "lists.jsonl", [{"text": "a", "label": ["x"]}, {"text": "b", "label": "y"}])
    with pytest.raises(DataError, match=r"lists.jsonl: row 1: column 'label' holds a list"):
        load_data(tmp_path / "lists.jsonl", task="classification")


def test_the_task_option_reaches_the_loader():
    from slimship.core.data import load_configured

    cfg = DataConfig("unused", task="regression", text_pair_column="b")
    assert cfg.options()["task"] == "regression" and cfg.options()["text_pair_column"] == "b"
    with pytest.raises(DataError, match="the model is a classification model"):
        load_configured(cfg, {"labels": ["a", "b"]})


def test_a_manifest_without_task_is_single_text_classification():
    old = {"labels": ["neg", "pos"], "max_length": 64}
    assert task_of(old) == "classification" and not takes_pairs(old) and thresholds_of(old) is None


# --- metrics and losses ----------------------------------------------------------------------------------------


def test_per_label_thresholds_are_tuned_on_each_label():
    probs = np.array([[0.9, 0.30], [0.8, 0.25], [0.2, 0.10], [0.6, 0.28], [0.1, 0.05]])
    truth = np.array([[1, 1], [1, 1], [0, 0], [0, 1], [0, 0]])
    first, second = tune_thresholds(probs, truth)
    assert 0.6 <= first < 0.8                     # over 0.6 (a false positive), under 0.8
    assert 0.10 <= second < 0.25                  # a label whose probabilities never reach 0.5
    assert tune_thresholds(probs, np.zeros_like(truth)) == [0.5, 0.5]   # nothing to tune on
    at_half = multilabel_metrics(probs > 0.5, truth, ["a", "b"])
    tuned = multilabel_metrics(probs > np.array([first, second]), truth, ["a", "b"])
    assert tuned["micro_f1"] > at_half["micro_f1"] and tuned["micro_f1"] == 1.0


def test_training_scores_a_multilabel_model_at_thresholds_tuned_on_the_evaluated_rows():
    """A model that ranks every label right but is not yet sure of any (all probabilities under 0.5) scores
    what it would ship with, not 0.0: early stopping must not end training on that plateau."""
    from transformers import EvalPrediction

    from slimship.train.recipe import compute_metrics_for

    probs = np.array([[0.40, 0.05], [0.35, 0.30], [0.05, 0.02], [0.10, 0.28], [0.08, 0.03]])
    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    logits = np.log(probs / (1 - probs))
    assert multilabel_metrics(probs > 0.5, truth, ["a", "b"])["micro_f1"] == 0.0
    scores = compute_metrics_for(["a", "b"], "multilabel")(EvalPrediction(predictions=logits, label_ids=truth))
    assert scores["micro_f1"] == pytest.approx(1.0) and scores["f1"] == pytest.approx(1.0)
    single = compute_metrics_for(["a", "b"])(EvalPrediction(predictions=np.array([[2.0, 0.0], [0.0, 1.0]]),
                                                             label_ids=np.array([0, 0])))
    assert single["accuracy"] == 0.5                      # classification: unchanged, argmax


def test_multilabel_and_regression_metrics_by_hand():
    pred = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=bool)
    true = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    m = multilabel_metrics(pred, true, ["a", "b", "c"])
    # tp 3 (a1, b2, b3), fp 2 (c1, a3), fn 1 (c3): micro-F1 = 6 / (6 + 3)
    assert m["micro_f1"] == pytest.approx(6 / 9)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert m["exact_match"] == pytest.approx(1 / 3)
    r = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 1.5, 3.5, 5.0])
    assert r["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1.5, 1.5, 3.5, 5.0])[0, 1])
    assert r["spearman"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1.5, 1.5, 3, 4])[0, 1])   # tied ranks
    assert r["mse"] == pytest.approx((0.25 + 0.25 + 0.25 + 1.0) / 4)
    logits = np.array([[2.0, -2.0], [-1.0, 0.3]])
    # sigmoid(0.3) = 0.57: over the default 0.5, under a tuned 0.6
    assert task_metrics("multilabel", logits, [[1, 0], [0, 1]], ["x", "y"])["micro_f1"] == pytest.approx(1.0)
    decided = task_metrics("multilabel", logits, [[1, 0], [0, 1]], ["x", "y"], thresholds=[0.5, 0.6])
    assert decided["micro_f1"] == pytest.approx(2 / 3) and 0.5 < sigmoid(0.3) < 0.6


def test_distillation_loss_per_task():
    import torch

    from slimship.compress.losses import kd_loss

    s = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    soft = kd_loss("multilabel", s, s.clone(), labels, 2.0, 1.0)
    # Soft targets through a sigmoid: the student equal to the teacher is at the minimum of the soft part
    expected = torch.nn.functional.binary_cross_entropy_with_logits(s / 2, (s / 2).sigmoid()) * 4
    assert float(soft) == pytest.approx(float(expected))
    nudged = s.clone().requires_grad_(True)
    kd_loss("multilabel", nudged, s, labels, 2.0, 1.0).backward()
    assert float(nudged.grad.abs().max()) < 1e-6
    scores = torch.tensor([[1.0], [3.0]])
    assert float(kd_loss("regression", scores, scores, torch.tensor([1.0, 3.0]), 2.0, 0.5)) == 0.0
    assert float(kd_loss("regression", scores, scores + 2, torch.tensor([1.0, 3.0]), 2.0, 1.0)) == pytest.approx(4.0)
    classes = kd_loss("classification", s, s, torch.tensor([0, 1]), 2.0, 0.0)
    assert float(classes) == pytest.approx(float(torch.nn.functional.cross_entropy(s, torch.tensor([0, 1]))))


# --- each task through the chain -------------------------------------------------------------------------------

TRAIN = dict(learning_rate=5e-3, batch_size=16, max_length=24, quiet=True, patience=0)


def trained_and_exported(kind: str, root, epochs: int = 3, **data_options):
    """(data dir, PyTorch artifact, ONNX artifact) of the tiny model trained on ``kind``."""
    from slimship.compress.export import export
    from slimship.train.recipe import TrainConfig
    from slimship.train.stage import train

    data_dir = make_task_data(kind, root / "data", train_rows=160, eval_rows=32)
    data = DataConfig(str(data_dir), **data_options)
    model = train("tiny", root / "model", data, TrainConfig(**TRAIN, epochs=epochs))
    return data_dir, model, export(model, root / "onnx")


def torch_logits(model_dir, inputs):
    from slimship.train.artifacts import load_pytorch_artifact, predict_logits

    manifest, model, tokenizer = load_pytorch_artifact(model_dir)
    return predict_logits(model, tokenizer, inputs, manifest["max_length"])


def read_output(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory):
    return trained_and_exported("pairs", tmp_path_factory.mktemp("pairs"), epochs=2)


@pytest.fixture(scope="module")
def multilabel_model(tmp_path_factory):
    return trained_and_exported("multilabel", tmp_path_factory.mktemp("multilabel"), label_column="labels")


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory):
    return trained_and_exported("regression", tmp_path_factory.mktemp("regression"))


def test_pairs_train_export_and_score(pair_model, tmp_path):
    from slimship.core.runtime import Classifier
    from slimship.score import ScoreConfig, score

    data_dir, model, onnx = pair_model
    manifest = artifact.load(onnx)
    assert manifest["task"] == "classification" and manifest["text_pairs"] is True
    assert manifest["metrics"]["validation"]["accuracy"] >= 0.9      # the signal is in the second text only
    assert manifest["parity"]["passed"] and manifest["parity"]["rows"] == 32
    clf = Classifier(onnx, threads=1)
    inputs = [("we talked about the goal", "it was superb"), ("we talked about the soup", "it was awful")]
    want = torch_logits(model, inputs)
    assert np.abs(clf.logits(inputs) - want).max() < 1e-4
    assert [r["label"] for r in clf.predict(inputs)] == ["1", "0"]
    with pytest.raises(Exception, match="takes \\(text, text_pair\\) pairs"):
        clf.predict(["a single text"])
    summary = score(ScoreConfig(model=str(onnx), inputs=str(data_dir / "test.csv"), output=str(tmp_path / "o.csv"),
                                quiet=True, probs=True))
    assert summary.rows_out == 32 and summary.rejected == 0
    rows = read_output(tmp_path / "o.csv")
    assert list(rows[0]) == ["row", "label", "score", "prob_0", "prob_1"]
    truth = [r["label"] for r in read_output(data_dir / "test.csv")]
    assert np.mean([r["label"] == t for r, t in zip(rows, truth)]) >= 0.9
    # A row without its second text is rejected with the reason; the others are scored.
    write_csv(tmp_path / "some.csv", ["text", "text_pair"], [("we talked about the song", "it was great"),
                                                             ("we talked about the soup", "")])
    summary = score(ScoreConfig(model=str(onnx), inputs=str(tmp_path / "some.csv"), output=str(tmp_path / "s.csv"),
                                quiet=True))
    assert (summary.rows_out, summary.rejected) == (1, 1)
    assert read_output(tmp_path / "s.rejects.csv")[0]["reason"] == "empty text (column 'text_pair')"


def test_multilabel_thresholds_answers_and_score(multilabel_model, tmp_path):
    from slimship.core.runtime import Classifier
    from slimship.score import ScoreConfig, score

    data_dir, model, onnx = multilabel_model
    manifest = artifact.load(onnx)
    assert manifest["task"] == "multilabel" and manifest["labels"] == ["food", "music", "sports"]
    assert set(manifest["thresholds"]) == {"food", "music", "sports"}
    assert manifest["thresholds"] == artifact.load(model)["thresholds"]     # export carries them over
    assert {"micro_f1", "macro_f1", "exact_match"} <= set(manifest["metrics"]["validation"])
    clf = Classifier(onnx, threads=1)
    texts = ["today it was all about the song and the pizza", "today it was all about the team",
             "today it was all about the bread"]
    probs = sigmoid(torch_logits(model, texts))
    limits = np.array([manifest["thresholds"][label] for label in manifest["labels"]])
    answers = clf.predict(texts, probs=True)
    for answer, row in zip(answers, probs):
        over = [manifest["labels"][j] for j in np.argsort(-row) if row[j] > limits[j]]
        assert [item["label"] for item in answer["labels"]] == over     # every label over its threshold, best first
        assert [item["score"] for item in answer["labels"]] == pytest.approx(sorted(row[row > limits], reverse=True),
                                                                              abs=1e-4)
        assert answer["probs"] == pytest.approx(dict(zip(manifest["labels"], row)), abs=1e-4)
    score(ScoreConfig(model=str(onnx), inputs=str(data_dir / "test.csv"), output=str(tmp_path / "o.csv"),
                      quiet=True, text_column="text"))
    rows = read_output(tmp_path / "o.csv")
    assert list(rows[0]) == ["row", "labels"]
    test_rows = read_output(data_dir / "test.csv")
    direct = clf.predict([r["text"] for r in test_rows])
    assert [r["labels"] for r in rows] == [";".join(item["label"] for item in d["labels"]) for d in direct]
    def hot(names):
        return [[label in value.split(";") for label in manifest["labels"]] for value in names]
    scored = multilabel_metrics(hot(r["labels"] for r in rows), hot(r["labels"] for r in test_rows), manifest["labels"])
    assert scored["micro_f1"] >= 0.7


def test_multilabel_distils_with_its_thresholds_retuned(multilabel_model, tmp_path):
    from slimship.compress.distill import DistillConfig, distill

    data_dir, model, _ = multilabel_model
    cfg = DistillConfig(layers=1, max_steps=4, max_length=24, batch_size=16, quiet=True, patience=0)
    student = artifact.load(distill(model, tmp_path / "student", DataConfig(str(data_dir), label_column="labels"), cfg))
    assert student["task"] == "multilabel" and set(student["thresholds"]) == {"food", "music", "sports"}
    assert set(student["delta"]["validation"]) == {"micro_f1", "macro_f1"}
    assert student["transfer"]["augment"] == 2 and student["transfer"]["augmented"] > 100   # auto: every task


def test_compress_refuses_unlabeled_single_texts_for_a_pair_teacher(pair_model, tmp_path):
    from slimship.compress.search import CompressConfig, compress

    data_dir, model, _ = pair_model
    more = tmp_path / "more.csv"
    more.write_text("text\nsome unlabeled text\n")
    with pytest.raises(UserError, match="reads sentence pairs"):
        compress(model, tmp_path / "c", DataConfig(str(data_dir)), CompressConfig(unlabeled=str(more)))
    assert not (tmp_path / "c").exists()


def test_regression_pairs_distil_on_augmented_pairs_scored_by_the_teacher(regression_model, tmp_path):
    from slimship.compress.distill import DistillConfig, distill, kd_train_set, transfer_texts
    from slimship.train.artifacts import load_pytorch_artifact

    data_dir, model, _ = regression_model
    _, teacher, tokenizer = load_pytorch_artifact(model)
    cfg = DistillConfig(max_length=24, augment=1, augment_methods="substitute")
    inputs = [("a story about the goal", "it was superb"), ("a story about the drum", "it was awful")]
    extra, counts = transfer_texts(teacher, tokenizer, inputs, [], cfg)
    assert counts["augmented"] == len(extra) > 0 and all(isinstance(x, tuple) for x in extra)
    dataset, _ = kd_train_set(teacher, tokenizer, inputs, [4.5, 0.5], cfg, "cache", extra)
    scores = torch_logits(model, extra)[:, 0]
    assert [dataset[2 + i]["labels"] for i in range(len(extra))] == pytest.approx(scores.tolist(), abs=1e-4)
    with pytest.raises(UserError, match="sentence pairs"):
        transfer_texts(teacher, tokenizer, inputs, ["an unlabeled text"], cfg)
    cfg = DistillConfig(layers=1, max_steps=4, max_length=24, batch_size=16, quiet=True, patience=0)
    student = artifact.load(distill(model, tmp_path / "student", DataConfig(str(data_dir)), cfg))
    assert student["task"] == "regression" and student["transfer"]["augmented"] > 100


def test_regression_scores_rerank_and_quantize(regression_model, tmp_path):
    from slimship.compress.quantize import QuantizeConfig, quantize
    from slimship.core.runtime import Classifier
    from slimship.score import ScoreConfig, score

    data_dir, model, onnx = regression_model
    manifest = artifact.load(onnx)
    assert manifest["task"] == "regression" and manifest["labels"] == ["score"] and manifest["text_pairs"]
    assert manifest["parity"]["agreement_of"].startswith("score")
    assert manifest["metrics"]["validation"]["pearson"] > 0.7
    clf = Classifier(onnx, threads=1)
    inputs = [("a story about the goal", "it was superb"), ("a story about the goal", "it was awful")]
    answers = clf.predict(inputs)
    assert [a["score"] for a in answers] == pytest.approx(torch_logits(model, inputs)[:, 0].tolist(), abs=1e-4)
    assert set(answers[0]) == {"score"} and answers[0]["score"] > answers[1]["score"]
    documents = ["it was awful", "it was superb", "it was okay"]
    ranking = clf.rerank("a story about the drum", documents)
    assert [r["index"] for r in ranking] == [1, 2, 0]                 # superb > okay > awful
    assert [r["index"] for r in clf.rerank("a story about the drum", documents, top_k=1)] == [1]
    score(ScoreConfig(model=str(onnx), inputs=str(data_dir / "test.csv"), output=str(tmp_path / "o.jsonl"),
                      quiet=True))
    first = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert set(first) == {"row", "score"}
    quantized = artifact.load(quantize(onnx, tmp_path / "int8", DataConfig(str(data_dir)), QuantizeConfig()))
    q = quantized["quantization"]
    assert quantized["task"] == "regression" and q["metric"] == "pearson" and q["metric_after"] > 0.5


# --- the service on a pair model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair_server(pair_model, tmp_path_factory):
    from tests.test_service import Server

    srv = Server(pair_model[2], tmp_path_factory.mktemp("serve-pairs"), SLIMSHIP_WARMUP_S="0", SLIMSHIP_THREADS="1")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def post(server, route, body):
    return httpx.post(server.url + route, json=body, timeout=30)


def test_served_pair_answers_equal_pytorch(pair_server, pair_model):
    from slimship.core.runtime import softmax

    texts = ["we talked about the goal", "we talked about the soup", "we talked about the drum"]
    pairs = ["it was superb", "it was awful", "it was dull, really quite boring"]
    response = post(pair_server, "/classify", {"texts": texts, "text_pairs": pairs, "probs": True})
    assert response.status_code == 200, response.text
    want = softmax(torch_logits(pair_model[1], list(zip(texts, pairs))))
    labels = artifact.load(pair_model[2])["labels"]
    for got, row in zip(response.json(), want):
        assert got["label"] == labels[int(row.argmax())]
        assert got["score"] == pytest.approx(float(row.max()), abs=1e-4)
        assert got["probs"] == pytest.approx(dict(zip(labels, row.tolist())), abs=1e-4)
    meta = httpx.get(pair_server.url + "/metadata").json()
    assert meta["task"] == "classification" and meta["text_pairs"] is True
    spec = httpx.get(pair_server.url + "/docs.json").json()
    assert "text_pairs" in json.dumps(spec["paths"]["/classify"]) and "/rerank" in spec["paths"]


def test_rerank_orders_cuts_and_refuses_bad_input(pair_server, pair_model):
    from slimship.core.runtime import Classifier

    documents = ["it was awful", "it was superb", "it was dull", "it was great"]
    query = "we talked about the concert"
    response = post(pair_server, "/rerank", {"query": query, "documents": documents})
    assert response.status_code == 200, response.text
    ranking = response.json()
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True) and sorted(r["index"] for r in ranking) == [0, 1, 2, 3]
    assert {ranking[0]["index"], ranking[1]["index"]} == {1, 3}       # the praising documents first
    want = Classifier(pair_model[2], threads=1).rerank(query, documents)
    assert [r["index"] for r in ranking] == [r["index"] for r in want]
    assert scores == pytest.approx([r["score"] for r in want], abs=1e-5)
    top = post(pair_server, "/rerank", {"query": query, "documents": documents, "top_k": 2}).json()
    assert top == ranking[:2]
    bad = [{"query": query, "documents": []}, {"query": "", "documents": ["x"]}, {"documents": ["x"]},
           {"query": query, "documents": ["x"], "top_k": 0}, {"query": query, "documents": "it was great"}]
    for body in bad:
        answer = post(pair_server, "/rerank", body)
        assert answer.status_code == 400 and "error" in answer.json(), (body, answer.text)
    for body in ({"texts": ["a"]}, {"texts": ["a", "b"], "text_pairs": ["c"]},
                 {"texts": ["a"], "text_pairs": ["b"], "prob": True}):              # an unknown key too
        answer = post(pair_server, "/classify", body)
        assert answer.status_code == 400 and "error" in answer.json(), (body, answer.text)
    assert post(pair_server, "/rerank", {"query": query, "documents": ["it was superb"]}).status_code == 200


def test_compress_searches_on_pearson_points_and_prune_recovers_regression(regression_model, tmp_path):
    from slimship.compress.config import CompressConfig, Grid, PruneConfig
    from slimship.compress.prune import prune
    from slimship.compress.search import compress
    from slimship.core.report import load_report, render_text
    from slimship.train.recipe import TrainConfig

    data_dir, model, _ = regression_model
    data = DataConfig(str(data_dir))
    pruned = artifact.load(prune(model, tmp_path / "pruned", data, PruneConfig(
        heads=0.5, ffn=0.5, recovery_epochs=0.4, max_length=24, learning_rate=5e-3, quiet=True, amp="off")))
    assert pruned["task"] == "regression" and set(pruned["validation_trace"]["before"]) == {"pearson", "spearman"}
    grid = Grid(layers=[1], prune=[{}], optimize=["none"], quantize=["dynamic"], include_teacher=True,
                embedding_bits=[8], distill={"learning_rate": 5e-3})
    cfg = CompressConfig(max_accuracy_drop=100.0, grid=grid, allow_batch_dependent=True, latency_rows=10,
                         throughput_rows=32, threads=1,
                         train=TrainConfig(epochs=0.4, max_length=24, batch_size=16, quiet=True, amp="off"))
    out = compress(model, tmp_path / "compressed", data, cfg)
    report = load_report(out)
    assert report["metric"] == "pearson" and "teacher_accuracy" not in report
    teacher_row = report["rows"][0]
    assert teacher_row["metric"] == teacher_row["pearson"] and "spearman" in teacher_row
    chosen = next(r for r in report["rows"] if r.get("chosen"))
    assert chosen["delta_points"] == pytest.approx((chosen["pearson"] - report["reference"]["metric"]) * 100, abs=1e-3)
    assert report["test"]["chosen_metric"] is not None
    text = render_text(report)
    assert "Pearson r %" in text and "Spearman rho %" in text and "accuracy" not in text
    assert artifact.load(out / "model")["task"] == "regression"
