"""Decoder LLM classifiers (GPT-2, Llama, Qwen2, Qwen3) through the chain, and distillation across families.

Tiny random checkpoints with byte-level BPE tokenizers (tests/family_models.py): GPT-2 and Llama have no pad
token (training pads with EOS), Qwen has <|endoftext|>; Llama and Qwen use grouped-query attention. These models
classify from the last token that is not the pad id, so the checks are about padding: the ONNX runtime over one
mixed-length batch must give each text the logits PyTorch gives it alone, and so must batch scoring.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from family_models import MIXED_TEXTS as TEXTS, build_tiny, torch_logits_one_by_one
from family_models import chain_data as data, chain_train_config as train_config
from slimship.core.errors import UserError

FAST = ("gpt2", "llama", "qwen2")
PARAMS = [*FAST, pytest.param("qwen3", marks=pytest.mark.slow)]
LORA_RANK = {"llama": 4}    # one family is fine-tuned through LoRA (merged before saving) with gradient
                            # checkpointing, the rest in full


@pytest.fixture(scope="module")
def chains(tmp_path_factory, demo_data):
    """family -> {stage: artifact dir}: checkpoint -> train -> export -> dynamic INT8 and weight-only 4-bit."""
    built: dict[str, dict] = {}

    def chain(family: str) -> dict:
        if family in built:
            return built[family]
        import torch

        from slimship.compress.config import ExportConfig, QuantizeConfig
        from slimship.compress.export import export
        from slimship.compress.quantize import quantize
        from slimship.train.stage import train

        torch.set_num_threads(1)
        root = tmp_path_factory.mktemp(family)
        d = data(demo_data)
        paths = {"checkpoint": build_tiny(family, root / "checkpoint")}
        lora = LORA_RANK.get(family, 0)
        paths["teacher"] = train(str(paths["checkpoint"]), root / "teacher", d,
                                 train_config(lora_r=lora, gradient_checkpointing=bool(lora)))
        paths["onnx"] = export(paths["teacher"], root / "onnx", d, ExportConfig())
        paths["dynamic"] = quantize(paths["onnx"], root / "dynamic", d, QuantizeConfig(mode="dynamic"))
        paths["int4"] = quantize(paths["onnx"], root / "int4", d, QuantizeConfig(mode="weight_only", weight_bits=4))
        built[family] = paths
        return paths

    return chain


@pytest.mark.parametrize("family", PARAMS)
def test_decoder_chain_pads_with_the_models_pad_id(family, chains, tmp_path):
    from slimship.core import artifact
    from slimship.core.runtime import Classifier
    from slimship.score import ScoreConfig, score
    from slimship.train.artifacts import load_pytorch_artifact

    paths = chains(family)
    _, model, tokenizer = load_pytorch_artifact(paths["teacher"])
    # The tokenizer pads with the id the head looks for; without a pad token of its own, that is EOS.
    assert tokenizer.pad_token_id == model.config.pad_token_id is not None
    if family in ("gpt2", "llama"):
        assert tokenizer.pad_token == tokenizer.eos_token
    assert list(tokenizer.model_input_names) == ["input_ids", "attention_mask"]

    onnx = artifact.load(paths["onnx"])
    assert onnx["tokenizer"] == {"pad_token": tokenizer.pad_token, "pad_token_id": tokenizer.pad_token_id,
                                 "padding_side": "right"}
    parity = onnx["parity"]
    assert parity["passed"] and parity["agreement"] >= 0.995 and parity["agreement_batch1"] >= 0.995

    # One mixed-length batch through the runtime == PyTorch on each text alone.
    reference = torch_logits_one_by_one(paths["teacher"], TEXTS)
    clf = Classifier(paths["onnx"], threads=1)
    assert set(clf.input_names) == {"input_ids", "attention_mask"}
    np.testing.assert_allclose(clf.logits(TEXTS), reference, atol=1e-4, rtol=1e-3)

    # Batch scoring (chunks of 3, batches of 2, so rows share calls with others of other lengths).
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    score(ScoreConfig(model=str(paths["onnx"]), inputs=str(source), output=str(tmp_path / "out.jsonl"),
                      id_column="id", chunk_rows=3, batch_size=2, quiet=True))
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["label"] for r in scored] == [onnx["labels"][i] for i in reference.argmax(-1)]

    # Quantized: dynamic INT8 and 4-bit weights (MatMulNBits with bits=4) stay close to FP32.
    import onnx as onnx_lib

    graph = onnx_lib.load(str(paths["int4"] / "model.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(a.i == 4 for n in nbits for a in n.attribute if a.name == "bits")
    spread = float(np.abs(reference).max()) + 1e-6
    for mode in ("dynamic", "int4"):
        quantized = Classifier(paths[mode], threads=1)
        logits = quantized.logits(TEXTS)
        assert float(np.abs(logits - reference).max()) < 0.25 * spread + 0.05, mode
    alone = np.concatenate([Classifier(paths["int4"], threads=1).logits([t]) for t in TEXTS])
    np.testing.assert_allclose(Classifier(paths["int4"], threads=1).logits(TEXTS), alone, atol=1e-5)


def test_lora_is_merged_before_saving(chains):
    from safetensors import safe_open

    from slimship.core import artifact

    paths = chains("llama")
    manifest = artifact.load(paths["teacher"])
    assert manifest["lora"]["r"] == 4 and "q_proj" in manifest["lora"]["targets"]
    assert 0 < manifest["lora"]["trainable_parameters"] < manifest["parameters"] / 2
    with safe_open(str(paths["teacher"] / "model.safetensors"), "pt") as trained, \
            safe_open(str(paths["checkpoint"] / "model.safetensors"), "pt") as start:
        names = set(trained.keys())
        assert names == set(start.keys())
        assert not any("lora" in n or "modules_to_save" in n for n in names)
        key = "model.layers.0.self_attn.q_proj.weight"
        # The adapters' update is in the weights themselves; the embeddings LoRA did not touch are unchanged.
        assert not np.array_equal(trained.get_tensor(key).numpy(), start.get_tensor(key).numpy())
        assert np.array_equal(trained.get_tensor("model.embed_tokens.weight").numpy(),
                              start.get_tensor("model.embed_tokens.weight").numpy())


def test_decoder_layer_dropping_keeps_the_chosen_blocks(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    from slimship.train import families

    for family in ("gpt2", "llama", "qwen3"):
        teacher = AutoModelForSequenceClassification.from_pretrained(build_tiny(family, tmp_path / family))
        fam = families.family_of(teacher.config, "distill")
        student, dropped = families.student_with_layers(teacher, [1, 3])
        assert fam.depth(student.config) == 2 and not dropped
        for s, t in ((0, 1), (1, 3)):
            t_params = dict(fam.layers(teacher)[t].named_parameters())
            for name, value in fam.layers(student)[s].named_parameters():
                assert torch.equal(value, t_params[name]), (family, s, name)
        assert torch.equal(student.score.weight, teacher.score.weight)
        # It saves and reloads as what it is (Qwen's per-layer layer_types shrink with the depth).
        student.save_pretrained(tmp_path / f"{family}-student")
        reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / f"{family}-student")
        ids = torch.tensor([[5, 6, 7, 8]])
        assert torch.equal(reloaded.eval()(input_ids=ids).logits, student.eval()(input_ids=ids).logits)


def pruned_half(chains, family: str, demo_data, tmp_path):
    """The family's tiny teacher with half its heads and FFN channels pruned (no recovery), then exported:
    (pruned manifest, reloaded model, ONNX manifest)."""
    from slimship.compress.config import ExportConfig, PruneConfig
    from slimship.compress.export import export
    from slimship.compress.prune import prune
    from slimship.core import artifact
    from slimship.train.artifacts import load_pytorch_artifact

    d = data(demo_data)
    pruned = prune(chains(family)["teacher"], tmp_path / "pruned", d,
                   PruneConfig(heads=0.5, ffn=0.5, recovery_epochs=0, max_length=48, batch_size=16,
                               importance_batches=2, quiet=True))
    _, model, _ = load_pytorch_artifact(pruned)
    return artifact.load(pruned), model, artifact.load(export(pruned, tmp_path / "onnx", d, ExportConfig()))


def test_decoder_prune_keeps_kv_groups_and_reloads_identically(chains, demo_data, tmp_path):
    manifest, model, onnx = pruned_half(chains, "qwen2", demo_data, tmp_path)
    assert manifest["pruning"]["reload_max_abs_diff"] < 1e-5
    assert manifest["after"]["shape"] == {"hidden": 32, "heads": 2, "head_dim": 8, "ffn": 32}
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 2, 8)
    attention = model.model.layers[0].self_attn
    assert attention.num_key_value_groups == 1 and attention.q_proj.out_features == 16
    assert model.model.layers[0].mlp.gate_proj.out_features == 32 == model.model.layers[0].mlp.down_proj.in_features
    assert onnx["parity"]["agreement_batch1"] >= 0.995


def test_decoder_prune_refusals_name_family_and_operation(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from slimship.compress.config import PruneConfig
    from slimship.compress.prune import Shape, plan

    llama = AutoModelForSequenceClassification.from_pretrained(build_tiny("llama", tmp_path / "llama"))
    shape = Shape.of(llama)
    assert (shape.heads, shape.head_dim, shape.ffn) == (4, 8, 64)
    with pytest.raises(UserError, match="each of the 2 KV groups") as e:
        plan(shape, PruneConfig(heads=0.25), llama)    # one query head of 4: groups of 2 would differ
    assert "\n" not in str(e.value) and "llama" in str(e.value)
    with pytest.raises(UserError, match="llama: hidden pruning is not supported"):
        plan(shape, PruneConfig(hidden=0.25), llama)
    # Over several steps, heads go in whole KV-group units too: 2 heads in 3 steps is 0, 2, 0 (not 1, 0, 1).
    from slimship.compress.prune import Removal, step_removals

    steps = step_removals(Removal(heads=2, ffn=30), 3, shape.head_dim, head_unit=2)
    assert [r.heads for r in steps] == [0, 2, 0]
    assert sum(r.ffn for r in steps) == 30
    gpt2 = AutoModelForSequenceClassification.from_pretrained(build_tiny("gpt2", tmp_path / "gpt2"))
    with pytest.raises(UserError, match="gpt2: hidden pruning is not supported"):
        plan(Shape.of(gpt2), PruneConfig(hidden=0.25), gpt2)


def test_gpt2_prune_cuts_conv1d_heads_and_ffn_and_exports_with_parity(chains, demo_data, tmp_path):
    """GPT-2's projections are Conv1D with q, k and v fused: heads and FFN channels are cut by hand, and a plain
    from_pretrained rebuilds the result (the config lists the removed head slots)."""
    manifest, model, onnx = pruned_half(chains, "gpt2", demo_data, tmp_path)
    assert manifest["pruning"]["reload_max_abs_diff"] < 1e-5
    assert manifest["after"]["shape"] == {"hidden": 32, "heads": 1, "head_dim": 16, "ffn": 32}
    config, attention = model.config, model.transformer.h[0].attn
    assert (config.n_head, config.n_inner, config.pruned_heads[0]) == (2, 32, [1])
    assert (attention.num_heads, attention.split_size, tuple(attention.c_attn.weight.shape)) == (1, 16, (32, 48))
    assert tuple(model.transformer.h[0].mlp.c_fc.weight.shape) == (32, 32)
    assert onnx["parity"]["agreement_batch1"] >= 0.995


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_gpt2_pruned_in_steps_finds_the_earlier_steps_heads_gone(importance):
    """A second step ranks the heads that are left and maps them back to their slots; reload is exact."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from slimship.compress.prune import Removal, Shape, prune_step, reload_difference

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                                                     n_positions=32, pad_token_id=0, num_labels=2))
    inputs = {"input_ids": torch.randint(1, 50, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    batches = [{**inputs, "labels": torch.tensor([0, 1, 0])}]
    for _ in range(2):
        prune_step(model, Removal(heads=1, ffn=8), importance, batches, 12)
    assert Shape.of(model).__dict__ == {"hidden": 32, "heads": 2, "head_dim": 8, "ffn": 48}
    assert model.config.pruned_heads == {0: [2, 3], 1: [2, 3]} and model.config.n_inner == 48
    assert reload_difference(model, inputs) < 1e-5


def test_qwen_teacher_into_bert_student_with_its_own_tokenizer(chains, demo_data, tmp_path):
    """Cross-family: the teacher's soft targets come from its byte-level BPE, the student (the built-in `tiny`
    BERT) trains on its WordPiece tokens; the student artifact carries its own tokenizer and exports."""
    from slimship.compress.config import DistillConfig, ExportConfig
    from slimship.compress.distill import distill
    from slimship.compress.export import export
    from slimship.core import artifact
    from slimship.train.artifacts import load_pytorch_artifact

    teacher = chains("qwen2")["teacher"]
    d = data(demo_data)
    student = distill(teacher, tmp_path / "student", d, DistillConfig(**vars(train_config()), student="tiny",
                                                                     teacher_logits="online"))
    manifest, model, tokenizer = load_pytorch_artifact(student)
    assert model.config.model_type == "bert" and (student / "vocab.txt").is_file()
    assert json.loads((student / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"
    assert manifest["distillation"]["teacher_logits"] == "cache"   # per text: the tokenizations differ
    assert manifest["labels"] == artifact.load(teacher)["labels"]
    assert manifest["metrics"]["validation"]["accuracy"] > 0
    onnx = export(student, tmp_path / "onnx", d, ExportConfig())
    assert artifact.load(onnx)["tokenizer"]["pad_token"] == "[PAD]"

    with pytest.raises(UserError, match="own tokenizer"):
        distill(teacher, tmp_path / "refused", d, DistillConfig(**vars(train_config()), student="tiny",
                                                                hidden_weight=1.0))
    # A student already trained for other labels is refused before anything trains.
    other = build_tiny("bert", tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config.update(id2label={"0": "spam", "1": "ham"}, label2id={"spam": 0, "ham": 1})
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="trained for labels \\['spam', 'ham'\\]") as e:
        distill(teacher, tmp_path / "refused", d, DistillConfig(**vars(train_config()), student=str(other)))
    assert "\n" not in str(e.value)


def test_unsupported_family_is_one_line_naming_it():
    from transformers import OPTConfig

    from slimship.train import families

    with pytest.raises(UserError) as e:
        families.family_of(OPTConfig(num_hidden_layers=1), "train")
    assert "\n" not in str(e.value) and "'opt'" in str(e.value) and "train" in str(e.value)


def test_grid_students_join_the_search_tree_in_their_own_family(tmp_path):
    """`students: [...]` adds students of any family beside the layer-dropped ones; a family ONNX Runtime's
    optimizer does not know (a decoder) is exported unfused only; a bad entry is refused in one line."""
    from slimship.compress.config import grid_from_dict
    from slimship.compress.search import plan, student_node_names, students_without_fusion

    qwen = build_tiny("qwen2", tmp_path / "qwen")
    grid = grid_from_dict({"layers": [2], "students": ["tiny", str(qwen)], "prune": [{}, {"ffn": 0.5}],
                           "optimize": ["none", "O2"], "quantize": ["static"]})
    names = student_node_names(grid.students)
    assert names == {"tiny": "S-tiny", str(qwen): "S-qwen"}
    nodes = {n.name: n for n in plan(4, grid, students_without_fusion(grid.students))}
    assert nodes["S-tiny"].options == {"student": "tiny"} and nodes["S-qwen"].stage == "distill"
    assert {"S-tiny-onnx", "S-tiny-onnx-O2", "S-qwen-onnx", "S-qwen-onnx-int8-static"} <= set(nodes)
    assert "S-qwen-onnx-O2" not in nodes and "L2-onnx-O2" in nodes
    assert "L2-prune-ffn0.5" in nodes and not any(n.startswith("S-") and "prune" in n for n in nodes)
    # weight_bits: weight-only candidates in 8 and 4 bits, each quantized with its own bits.
    grid = grid_from_dict({"layers": [2], "prune": [{}], "optimize": ["none"],
                           "quantize": ["static", "weight_only"], "weight_bits": [8, 4]})
    quantized = {n.name: n.options for n in plan(4, grid) if n.stage == "quantize"}
    assert quantized["L2-onnx-int4-weight_only"] == {"mode": "weight_only", "weight_bits": 4}
    assert quantized["L2-onnx-int8-weight_only"] == {"mode": "weight_only"}
    assert "L2-onnx-int4-static" not in quantized and "L2-onnx-int8-static" in quantized
    with pytest.raises(UserError, match="weight_bits entries"):
        grid_from_dict({"weight_bits": [2]})
    with pytest.raises(UserError, match="students must be"):
        grid_from_dict({"students": [""]})
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "config.json").write_text('{"model_type": "opt", "num_hidden_layers": 2}')
    with pytest.raises(UserError, match="compress --students: model type 'opt' is not supported"):
        students_without_fusion([str(tmp_path / "opt")])


def test_runtime_pads_on_the_recorded_side(chains, tmp_path):
    """A manifest saying left: short rows get their pad ids first, and each call keeps the rightmost columns."""
    import shutil

    from slimship.core.runtime import Classifier

    onnx_dir = tmp_path / "left"
    shutil.copytree(chains("gpt2")["onnx"], onnx_dir)
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    manifest["tokenizer"]["padding_side"] = "left"
    (onnx_dir / "manifest.json").write_text(json.dumps(manifest))
    clf = Classifier(onnx_dir, threads=1, verify=False)
    feeds = clf.encode(["meh", "the plot is thin and the jokes fall flat"])
    mask, ids = feeds["attention_mask"], feeds["input_ids"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and ids[0, 0] == manifest["tokenizer"]["pad_token_id"]
    short = int(mask[0].sum())
    assert clf._columns(ids, short).tolist()[0] == ids[0, -short:].tolist()
    # Run alone, the short row sees only its own tokens: the same logits as encoding it by itself.
    np.testing.assert_allclose(clf.run({k: v[:1] for k, v in feeds.items()}), clf.logits(["meh"]), atol=1e-6)


def test_option_refusals_are_one_line(chains, demo_data, tmp_path):
    from slimship.compress.config import DistillConfig, QuantizeConfig
    from slimship.compress.distill import distill

    with pytest.raises(UserError, match="--weight-bits 4 applies to --mode weight_only, not dynamic"):
        QuantizeConfig(mode="dynamic", weight_bits=4).check()
    with pytest.raises(UserError, match="distill: --lora-r is for slimship train"):
        distill(chains("qwen2")["teacher"], tmp_path / "s", data(demo_data),
                DistillConfig(**{**vars(train_config()), "lora_r": 4}))


def test_export_carries_external_weights(chains, demo_data, tmp_path, monkeypatch):
    """A graph over ONNX's 2 GB limit (a real decoder teacher) keeps its weights in model.onnx_data: optimum's
    FORCE_ONNX_EXTERNAL_DATA writes a tiny model that way, and the artifact must carry the file and run."""
    from slimship.compress.config import ExportConfig, QuantizeConfig
    from slimship.compress.export import export
    from slimship.compress.quantize import quantize
    from slimship.core import artifact
    from slimship.core.runtime import Classifier

    paths = chains("qwen2")
    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
    onnx = export(paths["teacher"], tmp_path / "onnx", data(demo_data), ExportConfig())
    manifest = artifact.load(onnx)                      # verifies every file's digest, the weights' too
    assert "model.onnx_data" in manifest["files"] and manifest["file_mb"] > 0.3
    np.testing.assert_allclose(Classifier(onnx, threads=1).logits(TEXTS),
                               Classifier(paths["onnx"], threads=1).logits(TEXTS), atol=1e-6)
    int4 = quantize(onnx, tmp_path / "int4", None, QuantizeConfig(mode="weight_only", weight_bits=4))
    assert "model.onnx_data" not in artifact.load(int4)["files"]
    assert Classifier(int4, threads=1).logits(TEXTS).shape == (len(TEXTS), 2)


def test_bert_teacher_into_gpt2_student_pads_with_its_eos(demo_data, tmp_path):
    """The other direction: a WordPiece teacher into an untrained GPT-2 checkpoint with no pad token; the
    student pads with its EOS, its config says so, and its export passes the gate at batch 1."""
    from slimship.compress.config import DistillConfig, ExportConfig
    from slimship.compress.distill import distill
    from slimship.compress.export import export
    from slimship.core import artifact
    from slimship.train.artifacts import load_pytorch_artifact
    from slimship.train.stage import train

    d = data(demo_data)
    teacher = train(str(build_tiny("bert", tmp_path / "bert")), tmp_path / "teacher", d, train_config())
    student = distill(teacher, tmp_path / "student", d,
                      DistillConfig(**vars(train_config()), student=str(build_tiny("gpt2", tmp_path / "gpt2"))))
    _, model, tokenizer = load_pytorch_artifact(student)
    assert model.config.model_type == "gpt2" and (student / "merges.txt").is_file()
    assert tokenizer.pad_token == tokenizer.eos_token and model.config.pad_token_id == tokenizer.pad_token_id
    assert artifact.load(export(student, tmp_path / "onnx", d, ExportConfig()))["parity"]["agreement_batch1"] >= 0.995
