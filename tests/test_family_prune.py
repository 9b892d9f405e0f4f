"""Structured pruning and trim-vocab for every encoder family: tiny random checkpoints of each family (with a
tokenizer of its own kind, tests/family_models.py) are pruned, saved and reloaded with identical logits; what a
family's config cannot describe is refused in one line naming the family and the operation; trimmed
vocabularies give the same predictions on texts whose tokens are all kept."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from conftest import DEMO_DATA, slimship_cmd
from family_models import build_tiny
from slimship.compress.prune import PruneConfig, Shape, plan, prune_step
from slimship.core.errors import UserError

TEXTS = ["A delight from start to finish.", "The battery died after a day; never again.", "ok",
         "The museum tour was superb, the guide funny and the coffee awful, but I would go back."]

# What each family can prune, with a config that from_pretrained rebuilds. DeBERTa-v2's attention output is
# hidden x hidden, so its heads go only together with as much hidden size.
SUPPORTED = {
    "bert": ("heads", "ffn", "hidden"),
    "distilbert": ("heads", "ffn", "hidden"),
    "roberta": ("heads", "ffn", "hidden"),
    "xlm-roberta": ("heads", "ffn", "hidden"),
    "electra": ("heads", "ffn", "hidden"),
    "albert": ("heads", "ffn", "hidden"),
    "deberta-v2": ("ffn", "heads+hidden"),
    "mpnet": ("ffn",),
    "modernbert": ("ffn",),
}
REFUSED = {"modernbert": ("heads", "modernbert: heads pruning is not supported"),
           "mpnet": ("heads", "mpnet: heads pruning is not supported"),
           "deberta-v2": ("heads", "deberta-v2: its config needs heads x head size = hidden size")}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny(family, tmp_path_factory.mktemp(family))
        return cache[family]
    return get


def _model(path, widen: bool = False):
    """The tiny checkpoint; ``widen``: the same family at hidden 64 with 4 heads and 16-wide embeddings, so that
    half the hidden size still differs from the embedding size (ELECTRA/ALBERT keep their projection)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not widen:
        return AutoModelForSequenceClassification.from_pretrained(str(path)).eval(), tokenizer
    config = AutoConfig.from_pretrained(str(path))
    for key, value in (("hidden_size", 64), ("num_attention_heads", 4), ("intermediate_size", 128)):
        setattr(config, key, value)
    if getattr(config, "model_type", "") == "distilbert":
        config.hidden_dim = 128
    if hasattr(config, "embedding_size"):
        config.embedding_size = 16
    if hasattr(config, "pooler_hidden_size"):
        config.pooler_hidden_size = 64
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval(), tokenizer


def _prune_and_reload(model, tokenizer, cfg: PruneConfig, tmp_path, importance="taylor"):
    from transformers import AutoModelForSequenceClassification

    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    shape = Shape.of(model)
    removal = plan(shape, cfg, model)
    prune_step(model, removal, importance, [{**batch, "labels": torch.tensor([1, 0, 1, 1])}], 32)
    after = Shape.of(model)
    assert after.heads == shape.heads - removal.heads and after.ffn == shape.ffn - removal.ffn
    assert after.hidden == shape.hidden - removal.hidden
    model.eval().save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    assert Shape.of(reloaded) == after
    with torch.inference_mode():
        np.testing.assert_allclose(reloaded(**batch).logits.numpy(), model(**batch).logits.numpy(), atol=1e-5)
    return after


@pytest.mark.parametrize("family", sorted(SUPPORTED))
def test_heads_and_ffn_pruned_model_reloads_with_identical_logits(family, tiny_dirs, tmp_path):
    model, tokenizer = _model(tiny_dirs(family))
    ratios = {"ffn": 0.5}
    if "heads" in SUPPORTED[family]:
        ratios["heads"] = 0.5
    _prune_and_reload(model, tokenizer, PruneConfig(**ratios), tmp_path)


@pytest.mark.parametrize("family", [f for f, ops in sorted(SUPPORTED.items()) if "hidden" in ops or "heads+hidden" in ops])
def test_hidden_pruned_model_reloads_with_identical_logits(family, tiny_dirs, tmp_path):
    model, tokenizer = _model(tiny_dirs(family), widen=True)
    after = _prune_and_reload(model, tokenizer, PruneConfig(heads=0.5, ffn=0.25, hidden=0.5), tmp_path,
                              importance="magnitude")
    assert after.hidden == 32 and after.heads == 2 and after.ffn == 96


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_an_operation_the_family_cannot_do_is_refused_in_one_line(family, tiny_dirs):
    model, _ = _model(tiny_dirs(family))
    operation, message = REFUSED[family]
    with pytest.raises(UserError, match=message) as refused:
        plan(Shape.of(model), PruneConfig(**{operation: 0.5}), model)
    assert "\n" not in str(refused.value)


def _artifact(checkpoint, out):
    """A tiny checkpoint wrapped as a PyTorch artifact, as the train stage writes one."""
    import shutil

    from slimship.core import artifact

    with artifact.create(out, "train", format="pytorch") as art:
        for path in checkpoint.iterdir():
            shutil.copy(path, art.dir / path.name)
        art.manifest.update(labels=["negative", "positive"], max_length=32)
    return out


def test_cli_refuses_modernbert_heads_without_a_traceback(tiny_dirs, tmp_path):
    result = subprocess.run(slimship_cmd("prune", "--model", str(_artifact(tiny_dirs("modernbert"), tmp_path / "m")),
                                         "--data", str(DEMO_DATA), "--out", str(tmp_path / "p"), "--heads", "0.5"),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr[-1500:]
    assert "modernbert: heads pruning is not supported" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "p").exists()


# --- trim-vocab per tokenizer kind -----------------------------------------------------------------------------

UNSEEN = ["photosynthesis quixotically bewildered the zookeeper", "Überraschung! naïve café, 42 km/h"]


@pytest.mark.parametrize("family, kind", [("bert", "WordPiece"), ("roberta", "BPE"), ("xlm-roberta", "Unigram"),
                                          ("modernbert", "BPE")])
def test_trimmed_vocabulary_predicts_the_same_on_covered_texts(family, kind, tiny_dirs, tmp_path):
    import csv
    import json

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slimship.compress.config import VocabConfig
    from slimship.compress.vocab import trim_vocab
    from slimship.core import artifact
    from slimship.core.config import DataConfig

    checkpoint = tiny_dirs(family)
    out = trim_vocab(_artifact(checkpoint, tmp_path / "model"), tmp_path / "trimmed",
                     DataConfig(str(DEMO_DATA), max_train_rows=200, max_eval_rows=32), VocabConfig(quiet=True))
    record = artifact.load(out)["vocab"]
    kept = np.asarray(json.loads((out / "kept_token_ids.json").read_text())["kept"])
    assert record["tokenizer_model"] == kind and record["size_after"] == len(kept) < record["size_before"]
    original, trimmed = (AutoTokenizer.from_pretrained(str(p)) for p in (checkpoint, out))
    # The pad token survives with its id renumbered consistently in tokenizer, config and manifest.
    assert trimmed.pad_token == original.pad_token and kept[trimmed.pad_token_id] == original.pad_token_id
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == trimmed.pad_token_id \
        == record["pad_token_id"]
    with open(DEMO_DATA / "validation.csv", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:80] + UNSEEN
    covered = [t for t in texts if set(original(t)["input_ids"]) <= set(kept.tolist())]
    assert len(covered) >= 10
    for text in covered:            # the same tokens, renumbered
        assert kept[trimmed(text)["input_ids"]].tolist() == original(text)["input_ids"]
    for text in UNSEEN:             # unseen words still tokenize, spelled with kept pieces, without unknowns
        assert trimmed.unk_token_id not in trimmed(text)["input_ids"] or \
            original.unk_token_id in original(text)["input_ids"]

    def logits(path, tokenizer):
        model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        with torch.inference_mode():
            return model(**tokenizer(covered, padding=True, truncation=True, max_length=64,
                                     return_tensors="pt")).logits.numpy()

    np.testing.assert_allclose(logits(out, trimmed), logits(checkpoint, original), atol=1e-5)


def test_search_skips_and_reports_what_a_family_cannot_prune():
    """The search leaves out grid entries a family cannot do, with the reason, instead of failing later."""
    from slimship.compress.config import Grid
    from slimship.compress.search import grid_for_family

    grid = Grid(prune=[{}, {"heads": 0.5, "ffn": 0.5}, {"heads": 0.25, "hidden": 0.25}, {"ffn": 0.5}],
                optimize=["none", "O2"])
    kept, skipped = grid_for_family({"model_type": "deberta-v2"}, grid)
    assert kept.prune == [{}, {"heads": 0.25, "hidden": 0.25}, {"ffn": 0.5}]
    assert [s["grid"] for s in skipped] == ["prune {'heads': 0.5, 'ffn': 0.5}"]
    assert "same fraction" in skipped[0]["reason"]
    kept, skipped = grid_for_family({"model_type": "modernbert"}, grid)
    assert kept.prune == [{}, {"ffn": 0.5}] and kept.optimize == ["none"]
    assert {s["grid"] for s in skipped} == {"optimize O2", "prune {'heads': 0.5, 'ffn': 0.5}",
                                            "prune {'heads': 0.25, 'hidden': 0.25}"}
    kept, skipped = grid_for_family({"model_type": "bert"}, grid)
    assert kept.prune == grid.prune and not skipped
