"""The prune stage: heads / FFN / hidden pruning of `tiny` reloads with identical logits, MACs fall about as
asked, bad ratios are refused, the artifact records the three validation points and exports to ONNX; and on
SST-2 the minilm chain teacher -> 3-layer student -> pruned stays clearly above chance."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from slimship.compress.profile import model_profile
from slimship.core.config import DataConfig
from slimship.compress.prune import PruneConfig, Removal, Shape, plan, prune, prune_step, reload_difference
from conftest import slimship_cmd
from slimship.core.errors import UserError
from slimship.core import artifact

TEXTS = ["A delight from start to finish.", "The battery died after a day; never again.", "ok",
         "The museum tour was superb, the guide funny and the coffee awful, but I would go back."]


def _model_and_batches(teacher_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    return model, batch, [{**batch, "labels": torch.tensor([1, 0, 1, 1])}]


def test_plan_turns_ratios_into_whole_units_and_refuses_impossible_ones():
    minilm = Shape(hidden=384, heads=12, head_dim=32, ffn=1536)
    assert plan(minilm, PruneConfig(heads=1 / 3, ffn=0.5)) == Removal(heads=4, ffn=768, hidden=0)
    assert plan(minilm, PruneConfig(heads=0.5, hidden=0.25)) == Removal(heads=6, ffn=0, hidden=96)
    bad = {
        "would leave no attention head": PruneConfig(heads=0.99),
        "removes no head": PruneConfig(heads=0.01),
        "would leave no FFN channel": PruneConfig(ffn=0.9999),
        "cannot describe that": PruneConfig(hidden=0.5),            # 6 head slots for 12 kept heads
        "whole multiples of the head size": PruneConfig(hidden=0.02),
    }
    for message, cfg in bad.items():
        with pytest.raises(UserError, match=message):
            plan(minilm, cfg)
    for cfg in (PruneConfig(heads=1.0), PruneConfig(ffn=-0.1), PruneConfig(), PruneConfig(ffn=0.5, steps=0),
                PruneConfig(ffn=0.5, importance="random")):
        with pytest.raises(UserError):
            cfg.check()


@pytest.mark.parametrize("ratios, importance", [
    (dict(heads=0.5), "taylor"),
    (dict(ffn=0.5), "magnitude"),
    (dict(heads=0.5, ffn=0.5), "taylor"),
    (dict(heads=0.25, hidden=0.25), "magnitude"),
    (dict(heads=0.5, ffn=0.5, hidden=0.5), "taylor"),
])
def test_pruned_tiny_reloads_with_identical_logits(tiny_teacher, tmp_path, ratios, importance):
    from transformers import AutoModelForSequenceClassification

    model, batch, grad_batches = _model_and_batches(tiny_teacher)
    before = model_profile(model, 64)
    cfg = PruneConfig(importance=importance, **ratios)
    shape = Shape.of(model)
    prune_step(model, plan(shape, cfg), importance, grad_batches, 64)
    after_shape = Shape.of(model)
    assert after_shape.heads == shape.heads - round(cfg.heads * shape.heads)
    assert after_shape.ffn == shape.ffn - round(cfg.ffn * shape.ffn)
    assert after_shape.hidden == shape.hidden - round(cfg.hidden * shape.hidden)

    model.eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    with torch.inference_mode():
        np.testing.assert_allclose(reloaded(**batch).logits.numpy(), model(**batch).logits.numpy(), atol=1e-5)
    assert reload_difference(model, batch) <= 1e-5

    after = model_profile(model, 64)
    assert after["parameters"] < before["parameters"]
    if not cfg.hidden:
        # heads and FFN channels carry nearly all of an encoder layer's MACs, each linearly: a uniform ratio r
        # removes about r of them (attention projections and FFN are 1/3 and 2/3 of a layer's MACs)
        expected = 1 - (cfg.heads * 1 / 3 + cfg.ffn * 2 / 3)
        assert after["macs"] / before["macs"] == pytest.approx(expected, abs=0.05)
    else:
        assert after["macs"] < 0.75 * before["macs"]


@pytest.fixture(scope="module")
def tiny_pruned(tiny_teacher, demo_data, tmp_path_factory):
    cfg = PruneConfig(heads=0.5, ffn=0.5, steps=2, recovery_epochs=1.0, learning_rate=1e-3, max_length=64,
                      quiet=True, patience=0, importance_batches=2, teacher=str(tiny_teacher))
    data = DataConfig(str(demo_data), max_train_rows=480)
    return prune(tiny_teacher, tmp_path_factory.mktemp("prune") / "pruned", data, cfg), cfg


def test_prune_stage_records_before_after_and_recovery(tiny_teacher, tiny_pruned):
    out, cfg = tiny_pruned
    manifest = artifact.load(out, format="pytorch")
    assert manifest["kind"] == "prune" and manifest["format"] == "pytorch"
    assert manifest["parent"]["manifest_sha256"] == artifact.manifest_digest(tiny_teacher)
    assert manifest["labels"] == artifact.load(tiny_teacher)["labels"] and manifest["max_length"] == 64
    assert manifest["after"]["shape"] == {"hidden": 64, "heads": 2, "head_dim": 16, "ffn": 128}
    assert manifest["after"]["macs"] < 0.6 * manifest["before"]["macs"]
    assert manifest["after"]["parameters"] < manifest["before"]["parameters"]
    assert 0 < manifest["file_size"] < manifest["before"]["file_size"]
    steps = manifest["pruning"]["steps"]
    assert [s["shape"]["heads"] for s in steps] == [3, 2] and [s["shape"]["ffn"] for s in steps] == [192, 128]
    trace = manifest["validation_trace"]
    assert set(trace) == {"before", "after_pruning", "after_recovery"}
    assert all(0.0 <= trace[k]["accuracy"] <= 1.0 for k in trace)
    assert trace["after_recovery"]["accuracy"] == manifest["metrics"]["validation"]["accuracy"]
    assert manifest["metrics"]["validation"]["accuracy"] > 0.8
    assert manifest["pruning"]["reload_max_abs_diff"] <= 1e-5
    assert manifest["pruning"]["teacher"] is not None


def test_pruned_artifact_exports_to_onnx_with_matching_logits(tiny_pruned, tmp_path):
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slimship.compress.export import export

    out, _ = tiny_pruned
    onnx_dir = export(out, tmp_path / "onnx")
    assert artifact.load(onnx_dir)["format"] == "onnx"
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    onnx_logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in batch.items() if k in names})[0]
    with torch.inference_mode():
        torch_logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


def test_cli_prune_refuses_bad_ratios_without_a_traceback(tiny_teacher, demo_data, tmp_path):
    for option, value, message in (("--heads", "0.9", "would leave no attention head"),
                                   ("--hidden", "0.5", "cannot describe that")):
        result = subprocess.run(slimship_cmd("prune", "--model", str(tiny_teacher), "--data", str(demo_data),
                                             "--out", str(tmp_path / "p"), option, value),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-1000:]
        assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
@pytest.mark.sst2
def test_minilm_chain_on_sst2_stays_above_chance(sst2_dir, tmp_path):
    """minilm teacher (briefly fine-tuned) -> 3-layer student -> pruned (1/3 heads, 1/2 FFN), a few hundred rows."""
    from slimship.compress.distill import DistillConfig, distill
    from slimship.train.recipe import TrainConfig
    from slimship.train.stage import train

    common = dict(max_length=64, batch_size=16, quiet=True, patience=0)
    data = DataConfig(str(sst2_dir), max_train_rows=640, max_eval_rows=200)
    # minilm's CLS head needs some 80 steps to get going on SST-2 (one epoch of 480 rows stayed at chance)
    teacher = train("minilm", tmp_path / "teacher", data, TrainConfig(epochs=2, learning_rate=1e-4, **common))
    student = distill(teacher, tmp_path / "student", data,
                      DistillConfig(layers=3, epochs=1, learning_rate=2e-4, **common))
    pruned = prune(student, tmp_path / "pruned", data,
                   PruneConfig(heads=1 / 3, ffn=0.5, recovery_epochs=1, learning_rate=1e-4, importance_batches=4,
                               teacher=str(teacher), **common))
    accuracy = {name: artifact.load(path)["metrics"]["validation"]["accuracy"]
                for name, path in (("teacher", teacher), ("student", student), ("pruned", pruned))}
    print("SST-2 validation accuracy (200 rows):", json.dumps(accuracy))
    trace = artifact.load(pruned)["validation_trace"]
    print("pruning trace:", json.dumps(trace))
    assert all(value > 0.6 for value in accuracy.values()), accuracy
    assert artifact.load(pruned)["after"]["macs"] < 0.6 * artifact.load(student)["macs"]


def test_a_crashed_prune_resumes_without_redoing_finished_steps(tiny_teacher, demo_data, tmp_path, monkeypatch):
    import slimship.compress.prune as prune_module

    real_step, calls = prune_module.prune_step, []

    def crash_on_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(prune_module, "prune_step", crash_on_second_step)
    cfg = PruneConfig(heads=0.5, ffn=0.5, steps=2, recovery_epochs=0, max_length=32, importance="magnitude")
    data = DataConfig(str(demo_data), max_eval_rows=50)
    out = tmp_path / "pruned"
    with pytest.raises(KeyboardInterrupt):
        prune(tiny_teacher, out, data, cfg)
    assert not out.exists()                                            # no half-written artifact
    calls.clear()
    prune(tiny_teacher, out, data, PruneConfig(**{**cfg.as_dict(), "resume": True}))
    assert len(calls) == 1                                             # step 1 came from the work dir
    manifest = artifact.load(out)
    assert manifest["after"]["shape"]["heads"] == 2 and manifest["after"]["shape"]["ffn"] == 128
    assert [s["step"] for s in manifest["pruning"]["steps"]] == [1, 2]
