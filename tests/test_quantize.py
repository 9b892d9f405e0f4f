"""INT8: dynamic and static quantization of the tiny ONNX artifact; smaller files, mostly the same predictions."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from conftest import DEMO_DATA, slimship_cmd
from slimship import UserError
from slimship import manifest as artifact


def _validation_texts() -> list[str]:
    import csv

    with open(DEMO_DATA / "validation.csv", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_is_smaller_and_agrees(tiny_onnx, tmp_path, mode):
    from compress.quantize import QuantizeConfig, cpu_preset, quantize
    from serve.runtime import Classifier

    out = quantize(tiny_onnx, tmp_path / mode, QuantizeConfig(mode=mode, data=str(DEMO_DATA), calibration=64))
    m = artifact.load(out, format="onnx")
    q = m["quantization"]
    assert q["mode"] == mode and q["preset"] == cpu_preset()
    assert q["size_mb_after"] < 0.5 * q["size_mb_before"]
    assert (out / "model.onnx").stat().st_size < 0.5 * (tiny_onnx / "model.onnx").stat().st_size
    assert q["agreement"] >= 0.9
    assert q["accuracy_after"] >= q["accuracy_before"] - 0.05
    assert m["metrics"]["validation"]["n"] == 200

    texts = _validation_texts()
    before = Classifier(tiny_onnx).logits(texts).argmax(-1)
    after = Classifier(out).logits(texts).argmax(-1)
    assert np.mean(before == after) >= 0.9


def test_quantize_cli_and_refusals(tiny_onnx, tmp_path):
    out = tmp_path / "dyn"
    result = subprocess.run(slimship_cmd("quantize", "--model", str(tiny_onnx), "--out", str(out),
                                         "--mode", "dynamic", "--per-channel"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "dynamic INT8" in result.stdout and artifact.load(out)["quantization"]["per_channel"] is True

    # Static needs calibration rows; an INT8 model is not quantized twice.
    from compress.quantize import QuantizeConfig, quantize

    with pytest.raises(UserError, match="needs --data"):
        quantize(tiny_onnx, tmp_path / "s", QuantizeConfig(mode="static"))

    with pytest.raises(UserError, match="already quantized"):
        quantize(out, tmp_path / "twice", QuantizeConfig())
    assert not (tmp_path / "twice").exists()
