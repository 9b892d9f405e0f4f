"""Export: the tiny teacher to ONNX through the parity gate; tampered artifacts refused; a failed gate writes nothing."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import DEMO_DATA, slimship_cmd
from slimship.core.config import DataConfig
from slimship.core import artifact
from slimship.core.artifact import ArtifactError


def test_export_passes_parity_gate_and_evaluates_like_pytorch(tiny_teacher, tiny_onnx):
    m = artifact.load(tiny_onnx, format="onnx")
    assert {"model.onnx", "tokenizer.json", "config.json"} <= set(m["files"])
    assert m["parity"]["passed"] and m["parity"]["agreement"] >= 0.995
    assert m["parity"]["rows"] == 200              # the demo validation split the teacher was trained with
    assert m["parity"]["max_abs_logit_diff"] < 1e-3
    assert m["labels"] == artifact.load(tiny_teacher)["labels"] and m["max_length"] == 64

    from slimship.core.runtime import Classifier

    clf = Classifier(tiny_onnx)
    assert clf.input_names[:2] == ["input_ids", "attention_mask"]
    assert clf.predict(["a wonderful film"])[0]["label"] in m["labels"]

    # `slimship evaluate` on the ONNX artifact gives the PyTorch artifact's metrics.
    from slimship.compress.evaluate import evaluate

    onnx_metrics = evaluate(tiny_onnx, DEMO_DATA, write=False)
    torch_metrics = evaluate(tiny_teacher, DEMO_DATA, write=False)
    assert onnx_metrics["n"] == torch_metrics["n"] == 200
    assert abs(onnx_metrics["accuracy"] - torch_metrics["accuracy"]) <= 1 / 200
    assert onnx_metrics["accuracy"] == pytest.approx(m["metrics"]["accuracy"] if "accuracy" in m["metrics"]
                                                     else m["metrics"]["validation"]["accuracy"], abs=1 / 200)


def test_corrupted_onnx_byte_is_refused(tiny_onnx, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_onnx, broken)
    data = bytearray((broken / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))

    from slimship.core.runtime import Classifier

    with pytest.raises(ArtifactError, match="model.onnx does not match its sha256"):
        Classifier(broken)
    result = subprocess.run(slimship_cmd("evaluate", "--model", str(broken), "--data", str(DEMO_DATA)),
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "sha256" in result.stderr and "Traceback" not in result.stderr


def test_failed_parity_gate_writes_nothing(tiny_teacher, tmp_path):
    # A zero logit tolerance: float32 ONNX and PyTorch never agree to the last bit, so the gate must refuse.
    out = tmp_path / "refused"
    result = subprocess.run(slimship_cmd("export", "--model", str(tiny_teacher), "--out", str(out),
                                         "--data", str(DEMO_DATA), "--max-eval-rows", "32", "--max-logit-diff", "0"),
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "parity gate" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]   # no temp dir left behind


def test_fused_export(tiny_teacher, tmp_path):
    from slimship.compress.export import ExportConfig, export

    out = export(tiny_teacher, tmp_path / "o2", DataConfig(str(DEMO_DATA), max_eval_rows=64), ExportConfig(optimize="O2"))
    m = artifact.load(out, format="onnx")
    assert m["optimize"] == "O2" and m["parity"]["passed"] and m["parity"]["rows"] == 64
    assert m["fused_operators"].get("Attention", 0) == 2          # one fused attention per layer


def test_export_refuses_an_onnx_input(tiny_onnx, tmp_path):
    from slimship.compress.export import export

    with pytest.raises(ArtifactError, match="needs 'pytorch'"):
        export(tiny_onnx, tmp_path / "again")
