"""INT8: dynamic and static quantization of the tiny ONNX artifact; smaller files, mostly the same predictions."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from conftest import DEMO_DATA, slimship_cmd
from slimship.core.config import DataConfig
from slimship.core.errors import UserError
from slimship.core import artifact


def _validation_texts() -> list[str]:
    import csv

    with open(DEMO_DATA / "validation.csv", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def served_agreement(fp32_dir, quantized_dir) -> float:
    """Share of validation texts on which the serving runtime predicts the same label for both artifacts."""
    from slimship.core.runtime import Classifier

    texts = _validation_texts()
    before = Classifier(fp32_dir).logits(texts).argmax(-1)
    return float(np.mean(before == Classifier(quantized_dir).logits(texts).argmax(-1)))


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_is_smaller_and_agrees(tiny_onnx, tmp_path, mode):
    from slimship.compress.quantize import QuantizeConfig, cpu_preset, quantize

    out = quantize(tiny_onnx, tmp_path / mode, DataConfig(str(DEMO_DATA)), QuantizeConfig(mode=mode, calibration=64))
    m = artifact.load(out, format="onnx")
    q = m["quantization"]
    assert q["mode"] == mode and q["preset"] == cpu_preset()
    assert q["size_mb_after"] < 0.5 * q["size_mb_before"]
    assert (out / "model.onnx").stat().st_size < 0.5 * (tiny_onnx / "model.onnx").stat().st_size
    assert q["agreement"] >= 0.9
    assert q["accuracy_after"] >= q["accuracy_before"] - 0.05
    assert m["metrics"]["validation"]["n"] == 200

    assert served_agreement(tiny_onnx, out) >= 0.9


def test_quantize_cli_and_refusals(tiny_onnx, tmp_path):
    out = tmp_path / "dyn"
    result = subprocess.run(slimship_cmd("quantize", "--model", str(tiny_onnx), "--out", str(out),
                                         "--mode", "dynamic", "--per-channel"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "dynamic INT8" in result.stdout and artifact.load(out)["quantization"]["per_channel"] is True

    # Static needs calibration rows; an INT8 model is not quantized twice.
    from slimship.compress.quantize import QuantizeConfig, quantize

    with pytest.raises(UserError, match="needs --data"):
        quantize(tiny_onnx, tmp_path / "s", None, QuantizeConfig(mode="static"))

    with pytest.raises(UserError, match="already quantized"):
        quantize(out, tmp_path / "twice", None, QuantizeConfig())
    assert not (tmp_path / "twice").exists()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_4bit_word_embeddings_shrink_the_file_and_agree(tiny_onnx, tmp_path, mode):
    """The tiny model's word table (30522 x 64) is most of its file, as in a MiniLM student."""
    import onnx

    from slimship.compress.quantize import QuantizeConfig, quantize

    def run(bits: int):
        cfg = QuantizeConfig(mode=mode, calibration=32, embedding_bits=bits)
        return quantize(tiny_onnx, tmp_path / f"{mode}-emb{bits}", DataConfig(str(DEMO_DATA)), cfg)

    int8, emb4 = run(8), run(4)
    q8, q4 = artifact.load(int8)["quantization"], artifact.load(emb4)["quantization"]
    assert q8["embedding_bits"] == 8 and q4["embedding_bits"] == 4 and q4["embedding_block_size"] == 128
    assert q4["embedding_table"].endswith("word_embeddings.weight") and q4["embedding_shape"][0] == 30522
    assert (emb4 / "model.onnx").stat().st_size < 0.75 * (int8 / "model.onnx").stat().st_size
    assert q4["agreement"] >= 0.9 and q4["accuracy_after"] >= q4["accuracy_before"] - 0.05

    # Only the word table is 4-bit: the INT8 pass left the contrib op alone and quantized the rest as before.
    ops = [n.op_type for n in onnx.load(str(emb4 / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("GatherBlockQuantized") == 1
    assert ops.count("MatMulInteger" if mode == "dynamic" else "DequantizeLinear") > 0

    assert served_agreement(tiny_onnx, emb4) >= 0.9


def test_embedding_bits_cli_and_refusals(tiny_onnx, tmp_path):
    out = tmp_path / "emb4"
    result = subprocess.run(slimship_cmd("quantize", "--model", str(tiny_onnx), "--out", str(out),
                                         "--embedding-bits", "4", "--embedding-block-size", "32"),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "word embeddings 4-bit" in result.stdout
    q = artifact.load(out)["quantization"]
    assert q["embedding_bits"] == 4 and q["embedding_block_size"] == 32

    from slimship.compress.quantize import QuantizeConfig, quantize

    with pytest.raises(UserError, match="--embedding-bits must be one of 8, 4"):
        quantize(tiny_onnx, tmp_path / "b", None, QuantizeConfig(embedding_bits=2))
    with pytest.raises(UserError, match="power of two"):
        quantize(tiny_onnx, tmp_path / "s", None, QuantizeConfig(embedding_bits=4, embedding_block_size=100))
    with pytest.raises(UserError, match="--ffn-output weight8 applies to --mode static, not dynamic"):
        quantize(tiny_onnx, tmp_path / "f", None, QuantizeConfig(mode="dynamic", ffn_output="weight8"))


@pytest.mark.parametrize("mode,ffn_output", [("static", "fp32"), ("static", "weight8"), ("weight_only", "fp32")])
def test_batch_invariant_modes_answer_each_text_alike_in_any_batch(tiny_onnx, tmp_path, mode, ffn_output):
    """Static QDQ (fixed scales), with the FFN output projections in FP32 or in 8-bit weights with int8 products
    per row, and weight-only (float activations) give a text the same label and score alone and among 31 others;
    the manifest says so. Dynamic INT8 is recorded as batch-dependent."""
    import onnx

    from slimship.compress.quantize import QuantizeConfig, batch_invariant, quantize
    from slimship.core.runtime import Classifier, softmax

    out = quantize(tiny_onnx, tmp_path / f"{mode}-{ffn_output}", DataConfig(str(DEMO_DATA)),
                   QuantizeConfig(mode=mode, calibration=32, ffn_output=ffn_output))
    q = artifact.load(out)["quantization"]
    assert q["mode"] == mode and q["batch_invariant"] is True and batch_invariant("dynamic") is False
    if mode == "static":
        # The tiny model's 2 FFN output projections: kept FP32 (excluded from the static pass) or MatMulNBits.
        ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
        assert q["operators"] == ["MatMul", "Gather"] and q["ffn_output"] == ffn_output and "QuantizeLinear" in ops
        fp32 = ffn_output == "fp32"
        assert (len(q["kept_fp32"]), len(q["weight_only_8bit"]), ops.count("MatMulNBits")) == \
            ((2, 0, 0) if fp32 else (0, 2, 2))
    clf = Classifier(out, threads=2)
    texts = _validation_texts()[:64]
    alone = softmax(np.concatenate([clf.logits([t]) for t in texts]))
    batched = softmax(np.concatenate([clf.logits(texts[i:i + 32]) for i in (0, 32)]))
    assert (alone.argmax(-1) == batched.argmax(-1)).all()
    np.testing.assert_allclose(alone, batched, atol=1e-5)
