"""The distill stage: a `tiny` teacher distilled to fewer layers; the KD loss falls; the student reloads."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from slimship.compress.distill import (DistillConfig, KDDataset, distill, distill_trainer_class, kd_loss, layer_indices,
                              student_from_teacher)
from conftest import slimship_cmd
from slimship.core.config import DataConfig
from slimship.core.errors import UserError
from slimship.core import artifact


def test_layer_indices_keep_the_last_layer_and_refuse_bad_lists():
    assert layer_indices(6, 3) == [1, 3, 5]
    assert layer_indices(12, 6) == [1, 3, 5, 7, 9, 11]
    assert layer_indices(2, 1) == [1]
    assert layer_indices(6, [0, 2, 5]) == [0, 2, 5]
    for bad in (0, 7, [], [0, 6], [3, 1], [1, 1]):
        with pytest.raises(UserError):
            layer_indices(6, bad)


def _texts_and_labels(loaded, n=128):
    split = loaded.splits["train"]
    return split.texts[:n], split.labels[:n]


def _kd_loss_of(model, teacher, tokenizer, texts, labels, cfg):
    batch = tokenizer(texts, truncation=True, max_length=cfg.max_length, padding=True, return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        return float(kd_loss(model(**batch).logits, teacher(**batch).logits, torch.tensor(labels),
                             cfg.temperature, cfg.alpha))


@pytest.fixture(scope="module")
def tiny_student(tiny_teacher, demo_data, tmp_path_factory):
    cfg = DistillConfig(layers=1, epochs=1, learning_rate=1e-3, max_length=64, quiet=True, patience=0)
    out = distill(tiny_teacher, tmp_path_factory.mktemp("distill") / "student",
                  DataConfig(str(demo_data), max_train_rows=640), cfg)
    return out, cfg


def test_distill_tiny_to_one_layer_records_both_models_and_reloads(tiny_teacher, tiny_student):
    from transformers import AutoModelForSequenceClassification

    out, cfg = tiny_student
    manifest = artifact.load(out, format="pytorch")
    assert manifest["kind"] == "distill"
    assert manifest["parent"]["manifest_sha256"] == artifact.manifest_digest(tiny_teacher)
    assert manifest["labels"] == artifact.load(tiny_teacher)["labels"]
    assert manifest["student"]["layers"] == 1 and manifest["student"]["kept_layers"] == [1]
    assert manifest["teacher"]["layers"] == 2
    # the student does about half the teacher's work per row (one of two encoder layers)
    assert 0.4 < manifest["student"]["macs"] / manifest["teacher"]["macs"] < 0.6
    assert manifest["student"]["parameters"] < manifest["teacher"]["parameters"]
    assert manifest["macs"] == manifest["student"]["macs"] and manifest["file_size"] > 0
    student_acc = manifest["metrics"]["validation"]["accuracy"]
    teacher_acc = manifest["teacher"]["metrics"]["validation"]["accuracy"]
    assert manifest["delta"]["validation"]["accuracy"] == pytest.approx(student_acc - teacher_acc)
    assert student_acc > 0.8   # the demo data is easy; a working student keeps most of the teacher's skill
    assert manifest["distillation"]["teacher_logits"] == "cache"

    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert reloaded.config.num_hidden_layers == 1
    assert not any(name.startswith("teacher") for name in reloaded.state_dict())


def test_kd_loss_decreases_for_a_student_given_as_a_config(tiny_teacher, demo_data, tmp_path):
    """A randomly initialised 1-layer student (--student config.json) learns to match the teacher."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slimship.compress.distill import load_student
    from slimship.train.artifacts import load_stage_data

    teacher = AutoModelForSequenceClassification.from_pretrained(str(tiny_teacher)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_teacher))
    config = teacher.config.to_dict()
    config.update(num_hidden_layers=1, id2label=None, label2id=None)
    (tmp_path / "student.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    cfg = DistillConfig(student=str(tmp_path / "student.json"), epochs=2, learning_rate=3e-3, max_length=64,
                        quiet=True, patience=0, temperature=1.0, augment=0)   # the loss on the labelled rows
    out = distill(tiny_teacher, tmp_path / "student", DataConfig(str(demo_data)), cfg)
    labels = artifact.load(out)["labels"]
    texts, gold = _texts_and_labels(load_stage_data(DataConfig(str(demo_data)), labels=labels))
    initial = load_student(cfg.student, labels, cfg.seed)      # the same initialisation distill started from
    trained = AutoModelForSequenceClassification.from_pretrained(str(out))
    before = _kd_loss_of(initial, teacher, tokenizer, texts, gold, cfg)
    after = _kd_loss_of(trained, teacher, tokenizer, texts, gold, cfg)
    assert after < 0.5 * before, (before, after)
    assert artifact.load(out)["student"]["student"] == cfg.student


def test_cached_and_online_teacher_logits_give_the_same_loss(tiny_teacher, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from slimship.train import recipe
    from slimship.train.artifacts import predict_logits

    teacher = AutoModelForSequenceClassification.from_pretrained(str(tiny_teacher)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_teacher))
    texts = ["a great film", "the worst service ever, never again", "fine", "superb and moving from start to end"]
    labels = [1, 0, 1, 1]
    cfg = DistillConfig(layers=1, max_length=32, quiet=True, amp="off")
    logits = predict_logits(teacher, tokenizer, texts, cfg.max_length)
    cached = KDDataset(tokenizer, texts, labels, cfg.max_length, logits)
    trainer = recipe.build_trainer(student_from_teacher(teacher, [0]), tokenizer, cached, None, cfg, tmp_path,
                                   ["negative", "positive"], "off", trainer_class=distill_trainer_class(),
                                   teacher=teacher, temperature=2.0, alpha=0.5)
    trainer.model.train()
    batch = DataCollatorWithPadding(tokenizer)([cached[i] for i in range(len(texts))])
    assert "teacher_logits" in batch
    torch.manual_seed(0)
    with_cache = trainer.compute_loss(trainer.model, dict(batch)).detach()
    online = {k: v for k, v in batch.items() if k != "teacher_logits"}
    torch.manual_seed(0)  # same dropout mask for the student
    without = trainer.compute_loss(trainer.model, online).detach()
    assert float(with_cache) == pytest.approx(float(without), abs=1e-5)


def test_cli_distill_with_hidden_loss_runs_the_teacher_online(tiny_teacher, demo_data, tmp_path):
    out = tmp_path / "student"
    result = subprocess.run(slimship_cmd("distill", "--teacher", str(tiny_teacher), "--data", str(demo_data),
                                         "--out", str(out), "--layers", "0,", "--hidden-weight", "1",
                                         "--max-steps", "6", "--max-length", "32", "--quiet", "--patience", "0"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["student"]["kept_layers"] == [0]
    assert manifest["distillation"]["teacher_logits"] == "online"
    assert manifest["distillation"]["layer_map"] == [[0, 0], [1, 1]]
    assert manifest["early_stopping"]["steps"] == 6
    assert "student/teacher" in result.stdout


def test_cli_distill_refuses_more_layers_than_the_teacher_has(tiny_teacher, demo_data, tmp_path):
    result = subprocess.run(slimship_cmd("distill", "--teacher", str(tiny_teacher), "--data", str(demo_data),
                                         "--out", str(tmp_path / "s"), "--layers", "5"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "the teacher has 2 layers" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()
