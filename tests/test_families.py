"""Every supported model family through the chain: train -> distill -> export -> quantize -> runtime.

Each family gets a tiny random checkpoint with a tokenizer of its own kind (tests/family_models.py). The checks
are numbers, not "it ran": the ONNX runtime's logits over a batch of mixed-length texts (so padding is in play)
equal PyTorch's on each text alone; static INT8 gives the same labels at batch 1 and in a batch; dynamic and
static INT8 stay close to the FP32 export.
"""

from __future__ import annotations

import numpy as np
import pytest

from family_models import MIXED_TEXTS as TEXTS, build_tiny, torch_logits_one_by_one
from family_models import chain_data as data, chain_train_config as train_config
from slimship.core.errors import UserError

# Each family's chain takes ~20 s on a busy 2-core box: three run by default, the rest are marked slow.
FAST = ("bert", "distilbert", "roberta")
SLOW = ("xlm-roberta", "electra", "deberta-v2", "modernbert", "mpnet", "albert")
PARAMS = [*FAST, *(pytest.param(f, marks=pytest.mark.slow) for f in SLOW)]


@pytest.fixture(scope="module")
def chains(tmp_path_factory, demo_data):
    """family -> {stage: artifact dir}, built once per family and shared by the tests below."""
    built: dict[str, dict] = {}

    def chain(family: str) -> dict:
        if family in built:
            return built[family]
        from slimship.compress.config import DistillConfig, ExportConfig, QuantizeConfig
        from slimship.compress.distill import distill
        from slimship.compress.export import export
        from slimship.compress.quantize import quantize
        from slimship.train.stage import train

        import torch

        torch.set_num_threads(1)   # tiny matrices: a second thread only contends on a shared 2-core box
        root = tmp_path_factory.mktemp(family)
        d = data(demo_data)
        paths = {"checkpoint": build_tiny(family, root / "checkpoint")}
        paths["teacher"] = train(str(paths["checkpoint"]), root / "teacher", d, train_config())
        paths["student"] = distill(paths["teacher"], root / "student", d,
                                   DistillConfig(**vars(train_config()), layers=2, hidden_weight=0.5))
        paths["onnx"] = export(paths["student"], root / "onnx", d, ExportConfig())
        paths["dynamic"] = quantize(paths["onnx"], root / "dynamic", d, QuantizeConfig(mode="dynamic"))
        paths["static"] = quantize(paths["onnx"], root / "static", d, QuantizeConfig(mode="static", calibration=32))
        built[family] = paths
        return paths

    return chain


@pytest.mark.parametrize("family", PARAMS)
def test_chain_runtime_equals_pytorch(family, chains):
    from slimship.core import artifact
    from slimship.core.runtime import Classifier
    from slimship.train import families

    paths = chains(family)
    fam = families.FAMILIES[family]
    teacher, student = artifact.load(paths["teacher"]), artifact.load(paths["student"])
    assert teacher["metrics"]["validation"]["accuracy"] > 0
    assert student["student"]["layers"] == 2 and teacher.get("amp")

    # The student reloads as a 2-block model of the teacher's class, with the blocks it was given.
    from slimship.train.artifacts import load_pytorch_artifact

    _, model, tokenizer = load_pytorch_artifact(paths["student"])
    assert fam.depth(model.config) == 2
    assert list(tokenizer.model_input_names) == list(fam.inputs)

    # FP32 ONNX over one mixed-length batch == PyTorch on each text alone.
    reference = torch_logits_one_by_one(paths["student"], TEXTS)
    onnx = artifact.load(paths["onnx"])
    assert onnx["tokenizer"]["pad_token_id"] == tokenizer.pad_token_id
    clf = Classifier(paths["onnx"], threads=1)
    assert clf.tokenizer.padding["pad_id"] == tokenizer.pad_token_id   # RoBERTa/XLM-R/MPNet: 1, ModernBERT: 4
    assert set(clf.input_names) <= set(fam.inputs)
    batched = clf.logits(TEXTS)
    np.testing.assert_allclose(batched, reference, atol=1e-4, rtol=1e-3)
    assert [r["label"] for r in clf.predict(TEXTS)] == [onnx["labels"][i] for i in reference.argmax(-1)]

    # Static INT8: the same labels and logits whether a text runs alone or in a padded batch.
    static = Classifier(paths["static"], threads=1)
    alone = np.concatenate([static.logits([t]) for t in TEXTS])
    np.testing.assert_allclose(static.logits(TEXTS), alone, atol=1e-5)
    # Both INT8 models stay close to FP32 (tiny models' logits are small: a loose absolute bound).
    spread = float(np.abs(reference).max()) + 1e-6
    for mode in ("dynamic", "static"):
        quantized = Classifier(paths[mode], threads=1).logits(TEXTS)
        assert float(np.abs(quantized - reference).max()) < 0.25 * spread + 0.05, mode
        assert artifact.load(paths[mode])["quantization"]["mode"] == mode


@pytest.mark.parametrize("family", FAST)
def test_export_carries_the_familys_tokenizer_files(family, chains):
    import json

    from slimship.train import families

    paths = chains(family)
    onnx_files = set(json.loads((paths["onnx"] / "manifest.json").read_text())["files"])
    assert "tokenizer.json" in onnx_files
    for name in families.FAMILIES[family].tokenizer_files:
        if (paths["student"] / name).is_file():
            assert name in onnx_files


def test_layer_dropping_keeps_the_chosen_blocks():
    """Student block i is teacher block kept[i], weight for weight, for every family with a block list."""
    import torch

    from family_models import FAMILIES as BUILDABLE
    from slimship.train import families
    import tempfile
    from transformers import AutoModelForSequenceClassification

    for family in ("bert", "distilbert", "deberta-v2", "modernbert"):
        assert family in BUILDABLE
        with tempfile.TemporaryDirectory() as tmp:
            teacher = AutoModelForSequenceClassification.from_pretrained(build_tiny(family, tmp))
        fam = families.family_of(teacher.config, "distill")
        student, _ = families.student_with_layers(teacher, [1, 3])
        assert fam.depth(student.config) == 2 and fam.depth(teacher.config) == 4
        # The hidden-state loss maps student state i+1 to teacher state kept[i]+1: state 0 is the embeddings.
        ids = torch.tensor([[2, 10, 11, 12, 3]])
        assert len(student(input_ids=ids, output_hidden_states=True).hidden_states) == 3
        assert len(teacher(input_ids=ids, output_hidden_states=True).hidden_states) == 5
        for s, t in ((0, 1), (1, 3)):
            s_block, t_block = fam.layers(student)[s], fam.layers(teacher)[t]
            s_params, t_params = dict(s_block.named_parameters()), dict(t_block.named_parameters())
            for name, value in s_params.items():
                assert torch.equal(value, t_params[name]), (family, s, name)


def test_unknown_family_is_one_line_user_error(tmp_path):
    from transformers import AutoModelForSequenceClassification, OPTConfig

    from slimship.train import families

    with pytest.raises(UserError) as e:
        families.family_of(OPTConfig(num_hidden_layers=1), "distill")
    message = str(e.value)
    assert "\n" not in message and "'opt'" in message and "distill" in message

    from slimship.compress.search import depth_of_checkpoint

    (tmp_path / "config.json").write_text('{"model_type": "opt", "num_hidden_layers": 2}')
    with pytest.raises(UserError, match="compress.*'opt'"):
        depth_of_checkpoint(tmp_path)
    del AutoModelForSequenceClassification


def test_search_reads_depth_through_the_family(tmp_path):
    from slimship.compress.search import depth_of_checkpoint

    (tmp_path / "config.json").write_text('{"model_type": "distilbert", "n_layers": 6}')
    assert depth_of_checkpoint(tmp_path) == 6
