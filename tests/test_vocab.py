"""Vocabulary trimming: the tiny teacher keeps only the demo data's tokens; same tokens and logits where every
token is kept, no [UNK] where one is not; the trimmed artifact exports and serves; the grid's vocab axis."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_DATA, slimship_cmd
from slimship.core.config import DataConfig
from slimship.core.errors import UserError
from slimship.core import artifact

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Words that appear nowhere in the demo data: their pieces are gone, so they are spelled with shorter ones.
UNSEEN = ["photosynthesis quixotically bewildered the zookeeper", "Überraschung! naïve café, 42 km/h"]


def _texts(split: str) -> list[str]:
    with open(DEMO_DATA / f"{split}.csv", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def trimmed(tiny_teacher, tmp_path_factory) -> Path:
    from slimship.compress.vocab import VocabConfig, trim_vocab

    return trim_vocab(tiny_teacher, tmp_path_factory.mktemp("vocab") / "trimmed",
                      DataConfig(str(DEMO_DATA)), VocabConfig(quiet=True))


def _kept(path: Path) -> np.ndarray:
    return np.asarray(json.loads((path / "kept_token_ids.json").read_text())["kept"])


def test_trimming_shrinks_vocabulary_and_file(tiny_teacher, trimmed):
    m = artifact.load(trimmed, format="pytorch")
    assert m["kind"] == "vocab" and m["parent"]["manifest_sha256"] == artifact.manifest_digest(tiny_teacher)
    assert m["labels"] == artifact.load(tiny_teacher)["labels"] and m["max_length"] == 64
    v = m["vocab"]
    assert v["size_before"] == 30522 and v["size_after"] < 5000 and v["size_after"] == len(_kept(trimmed))
    assert v["train_token_share_kept"] == 1.0 and v["train_rows"] == 1400 and v["tokenization_checked_texts"] > 0
    assert json.loads((trimmed / "config.json").read_text())["vocab_size"] == v["size_after"]
    assert len((trimmed / "vocab.txt").read_text().splitlines()) == v["size_after"]
    assert m["after"]["parameters"] < 0.3 * m["before"]["parameters"]
    assert (trimmed / "model.safetensors").stat().st_size < 0.3 * (tiny_teacher / "model.safetensors").stat().st_size
    # Every validation word of the demo data also occurs in training, so nothing changes.
    assert m["agreement"]["validation"] == 1.0
    assert m["after"]["metrics"]["accuracy"] == m["before"]["metrics"]["accuracy"] \
        == m["metrics"]["validation"]["accuracy"]


def test_special_tokens_and_single_characters_are_kept(tiny_teacher, trimmed):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(trimmed))
    vocab = tokenizer.get_vocab()
    assert all(token in vocab for token in SPECIALS)
    assert vocab["[PAD]"] == 0 == tokenizer.pad_token_id
    assert json.loads((trimmed / "config.json").read_text())["pad_token_id"] == 0
    original = AutoTokenizer.from_pretrained(str(tiny_teacher)).get_vocab()
    singles = {t for t in original if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    assert len(singles) > 1900 and singles <= set(vocab) and {"q", "##q", "!", "##7"} <= singles
    # Through the serving runtime's loader: no [UNK] for unseen words, [CLS]/[SEP] ids renumbered.
    runtime = Tokenizer.from_file(str(trimmed / "tokenizer.json"))
    for text in UNSEEN:
        enc = runtime.encode(text)
        assert "[UNK]" not in enc.tokens
        assert enc.ids[0] == vocab["[CLS]"] and enc.ids[-1] == vocab["[SEP]"]
        assert enc.ids == tokenizer(text)["input_ids"]


def test_keep_top_keeps_the_vocabularys_most_frequent_pieces(tiny_teacher, trimmed, tmp_path):
    """--keep-top N adds the vocabulary's first N producible ids (BERT lists them by frequency) to what the data
    uses: a general word the training split lacks keeps its own token instead of being spelled in pieces."""
    from transformers import AutoTokenizer

    from slimship.compress.vocab import VocabConfig, trim_vocab

    original = AutoTokenizer.from_pretrained(str(tiny_teacher)).get_vocab()
    word = "mountains"  # not in the demo data; a whole-word token of bert-base's vocabulary (id 4020)
    assert word in original and original[word] < 12000 and word not in AutoTokenizer.from_pretrained(
        str(trimmed)).get_vocab()
    out = trim_vocab(tiny_teacher, tmp_path / "top", DataConfig(str(DEMO_DATA)), VocabConfig(keep_top=12000, quiet=True))
    kept = set(_kept(out).tolist())
    m = artifact.load(out, format="pytorch")
    assert set(_kept(trimmed).tolist()) < kept and original[word] in kept
    assert m["vocab"]["keep_top"] == 12000 and m["vocab"]["top_tokens_added"] == len(kept) - len(_kept(trimmed))
    # [unusedN] and "..." can never come out of the pre-tokenizer (punctuation is split off): not kept.
    assert original["[unused5]"] not in kept and original["..."] not in kept
    assert AutoTokenizer.from_pretrained(str(out)).tokenize(word) == [word]
    with pytest.raises(UserError, match="--keep-top"):
        VocabConfig(keep_top=-1).check()


def test_same_tokens_and_logits_where_every_token_is_kept(tiny_teacher, trimmed):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    kept = _kept(trimmed)
    original_tok, trimmed_tok = (AutoTokenizer.from_pretrained(str(p)) for p in (tiny_teacher, trimmed))
    texts = _texts("validation") + UNSEEN
    covered = [t for t in texts if set(original_tok(t)["input_ids"]) <= set(kept.tolist())]
    assert len(covered) >= len(texts) - len(UNSEEN)
    for text in covered:
        assert kept[trimmed_tok(text)["input_ids"]].tolist() == original_tok(text)["input_ids"]
    # An unseen word's pieces are not all kept: there the tokenization differs, by design.
    assert any(t not in covered for t in UNSEEN)

    def logits(path, tokenizer, batch):
        model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        with torch.inference_mode():
            return model(**tokenizer(batch, padding=True, truncation=True, max_length=64,
                                     return_tensors="pt")).logits.numpy()

    batch = covered[:64]
    np.testing.assert_allclose(logits(trimmed, trimmed_tok, batch), logits(tiny_teacher, original_tok, batch),
                               atol=1e-5)


def test_trimmed_artifact_exports_and_serves(trimmed, tiny_onnx, tmp_path):
    from slimship.compress.export import export
    from slimship.core.runtime import Classifier

    onnx_dir = export(trimmed, tmp_path / "onnx", DataConfig(str(DEMO_DATA)))
    m = artifact.load(onnx_dir, format="onnx")
    assert m["parity"]["passed"] and m["parity"]["max_abs_logit_diff"] < 1e-3
    assert (onnx_dir / "model.onnx").stat().st_size < 0.3 * (tiny_onnx / "model.onnx").stat().st_size
    texts = _texts("validation")[:64]
    served = Classifier(onnx_dir)
    np.testing.assert_allclose(served.logits(texts), Classifier(tiny_onnx).logits(texts), atol=1e-4)
    assert all(p["label"] in m["labels"] for p in served.predict(UNSEEN))


@pytest.mark.parametrize("tied", [True, False])
def test_an_mlm_head_is_sliced_with_the_embeddings(tied):
    """A head over the vocabulary shrinks too: its scores for kept tokens are the original ones."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from slimship.compress.vocab import slice_vocabulary

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, tie_word_embeddings=tied)
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().bias.normal_()     # zeros at initialisation would hide a misaligned bias
    kept = [0, 3, 5, 17, 42, 99]
    ids = torch.tensor([[1, 3, 2, 4]])          # positions in the kept list: tokens 3, 17, 5, 42
    with torch.inference_mode():
        before = model(input_ids=torch.tensor(kept)[ids]).logits[..., kept]
    slice_vocabulary(model, kept)
    assert model.config.vocab_size == 6 and model.get_output_embeddings().out_features == 6
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_grid_vocab_axis_plans_vocab_nodes():
    from slimship.compress.search import Grid, grid_from_dict, plan

    assert not [n for n in plan(6, Grid()) if n.stage == "vocab"]        # the default grid does not trim
    both = Grid(layers=[3], prune=[{}, {"heads": 0.5}], optimize=["none"], quantize=["dynamic"],
                vocab=["full", "train"])
    nodes = {n.name: n for n in plan(6, both)}
    assert nodes["L3-vocab"].parent.name == "L3" and nodes["L3-prune-heads0.5-vocab"].stage == "vocab"
    assert "teacher-vocab" not in nodes
    assert {"L3-onnx-int8-dynamic", "L3-vocab-onnx-int8-dynamic",
            "L3-prune-heads0.5-vocab-onnx-int8-dynamic", "teacher-onnx-int8-dynamic"} <= set(nodes)
    # train alone: the untrimmed models are built as parents but are no candidates themselves
    only = {n.name for n in plan(6, Grid(layers=[3], prune=[{}], optimize=["none"], quantize=["dynamic"],
                                         vocab=["train"]))}
    assert {"L3", "L3-vocab", "L3-vocab-onnx-int8-dynamic"} <= only and "L3-onnx-int8-dynamic" not in only
    with pytest.raises(UserError, match="vocab entries"):
        grid_from_dict({"vocab": ["bpe"]})
    with pytest.raises(UserError, match="vocab_options"):
        grid_from_dict({"vocab": ["train"], "vocab_options": {"min_cnt": 2}})


def test_compress_builds_and_measures_a_vocab_candidate(tiny_teacher, tmp_path):
    from slimship.compress.search import CompressConfig, Grid, compress
    from slimship.train.recipe import TrainConfig

    grid = Grid(layers=[], include_teacher=False, prune=[{"ffn": 0.5}], optimize=["none"], quantize=["dynamic"],
                embedding_bits=[8], vocab=["train"], prune_options={"recovery_epochs": 0, "importance": "magnitude"},
                vocab_options={"min_count": 2})
    cfg = CompressConfig(max_accuracy_drop=100.0, grid=grid, latency_rows=5, throughput_rows=32,
                         allow_batch_dependent=True, train=TrainConfig(max_length=64, quiet=True, amp="off"))
    data = DataConfig(str(DEMO_DATA), max_eval_rows=64)
    out = compress(tiny_teacher, tmp_path / "c", data, cfg)
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert report["chosen"] == "teacher-prune-ffn0.5-vocab-onnx-int8-dynamic"
    vocab_dir = out / "candidates" / "teacher-prune-ffn0.5-vocab"
    m = artifact.load(vocab_dir, format="pytorch")
    assert m["kind"] == "vocab" and m["vocab"]["min_count"] == 2
    assert rows["teacher-prune-ffn0.5-vocab"]["parameters"] < 0.3 * rows["teacher-prune-ffn0.5"]["parameters"]
    # A rerun reuses the trimmed node: same inputs, same key.
    before = (vocab_dir / "manifest.json").stat().st_mtime_ns
    compress(tiny_teacher, out, data, cfg)
    assert (vocab_dir / "manifest.json").stat().st_mtime_ns == before


def test_refusals(tiny_onnx, tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from slimship.compress.vocab import VocabConfig, tokenizer_spec, trim_vocab

    result = subprocess.run(slimship_cmd("trim-vocab", "--model", str(tmp_path / "nothing"), "--data",
                                         str(DEMO_DATA), "--out", str(tmp_path / "out")),
                            capture_output=True, text=True)
    assert result.returncode == 2 and "trim-vocab: error:" in result.stderr and "Traceback" not in result.stderr
    assert "not an artifact directory" in result.stderr and not (tmp_path / "out").exists()

    with pytest.raises(UserError, match="needs 'pytorch'"):
        trim_vocab(tiny_onnx, tmp_path / "o", DataConfig(str(DEMO_DATA)), VocabConfig())
    with pytest.raises(UserError, match="--data is needed"):
        trim_vocab(tiny_onnx, tmp_path / "o", DataConfig(), VocabConfig())
    with pytest.raises(UserError, match="--min-count"):
        trim_vocab(tiny_onnx, tmp_path / "o", DataConfig(str(DEMO_DATA)), VocabConfig(min_count=0))
    word_level = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab={"a": 0}, unk_token="a")))
    with pytest.raises(UserError, match="supports WordPiece, BPE and Unigram tokenizers; this tokenizer's model is 'WordLevel'"):
        tokenizer_spec(word_level, "word-level-model")


def test_cli_prints_a_summary(tiny_teacher, tmp_path):
    out = tmp_path / "trimmed"
    result = subprocess.run(slimship_cmd("trim-vocab", "--model", str(tiny_teacher), "--data", str(DEMO_DATA),
                                         "--out", str(out), "--min-count", "30", "--max-train-rows", "500", "--quiet"),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    v = artifact.load(out)["vocab"]
    assert v["min_count"] == 30 and v["train_rows"] == 500 and v["train_token_share_kept"] < 1.0
    assert f"vocab 30,522 -> {v['size_after']:,} tokens" in result.stdout and "accuracy" in result.stdout
