"""Tiny random checkpoints of every supported model family, each with a tokenizer of the family's own kind.

    build_tiny("roberta", tmp_path / "roberta") -> Path  (config.json, model.safetensors, tokenizer files)

Nothing is downloaded: the model is ``AutoModelForSequenceClassification.from_config`` (4 blocks, hidden 32)
and the tokenizer is trained with the ``tokenizers`` library on the demo data's sentences:

    bert, distilbert, electra, mpnet  WordPiece, [PAD]=0 ... (mpnet: <s> <pad>=1 </s>, like the real one)
    roberta                           byte-level BPE, <s>=0 <pad>=1 </s>=2
    xlm-roberta                       Unigram (SentencePiece-style, Metaspace), <s>=0 <pad>=1 </s>=2
    deberta-v2                        Unigram (SentencePiece-style), [PAD]=0 [CLS]=1 [SEP]=2, v3's layout
    albert                            Unigram (SentencePiece-style), <pad>=0 <unk>=1 [CLS]=2 [SEP]=3
    modernbert                        byte-level BPE with [CLS]/[SEP]/[PAD] after other specials (pad id 4)
    gpt2                              byte-level BPE, <|endoftext|>=0 is BOS/EOS/UNK, no pad token (like the real
                                      one: training pads with EOS), no special tokens added
    llama                             byte-level BPE, <s>=1 added before each text, </s>=2, no pad token;
                                      grouped-query attention (4 query heads, 2 KV heads)
    qwen2, qwen3                      byte-level BPE, <|endoftext|>=0 is the pad token, <|im_end|>=1 EOS, nothing
                                      added; grouped-query attention (qwen3: head_dim 8 with q/k norms)

Used by tests/test_families.py, the pruning tests and bench/bench_families.py.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = ROOT / "examples" / "sentiment"
FAMILIES = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "deberta-v2", "modernbert", "mpnet",
            "albert", "gpt2", "llama", "qwen2", "qwen3")
DECODERS = ("gpt2", "llama", "qwen2", "qwen3")
VOCAB_SIZE = 800
LAYERS = 4
HIDDEN = 32


@functools.cache
def corpus() -> tuple[str, ...]:
    with open(DEMO_DATA / "train.csv", newline="", encoding="utf-8") as f:
        return tuple(row["text"] for row in csv.DictReader(f))[:600]


def _train(tokenizer, trainer):
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer


def _wordpiece(specials: list[str], cls: str, sep: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]" if "[UNK]" in specials else "<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    _train(tok, trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


def _byte_bpe(specials: list[str], cls: str | None, sep: str | None, roberta: bool, bos: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    _train(tok, trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials,
                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if cls is None:     # a decoder: nothing around the text, or only a BOS before it (Llama)
        if bos is not None:
            tok.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))])
    elif roberta:
        tok.post_processor = processors.RobertaProcessing(sep=(sep, tok.token_to_id(sep)),
                                                          cls=(cls, tok.token_to_id(cls)))
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


def _unigram(specials: list[str], unk: str, cls: str, sep: str, pair_double_sep: bool = False):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    _train(tok, trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, unk_token=unk))
    pair = f"{cls} $A {sep} {sep} $B {sep}" if pair_double_sep else f"{cls} $A {sep} $B:1 {sep}:1"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair,
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


def _tokenizer(family: str):
    """(Hugging Face fast tokenizer of the family's class, special-token ids for the model config)."""
    import transformers as T

    bert_specials = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                         mask_token="[MASK]")
    roberta_specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>",
                            cls_token="<s>", pad_token="<pad>", mask_token="<mask>")
    if family in ("bert", "distilbert", "electra"):
        tok = _wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS]", "[SEP]")
        cls = {"bert": T.BertTokenizerFast, "distilbert": T.DistilBertTokenizerFast,
               "electra": T.ElectraTokenizerFast}[family]
        hf = cls(tokenizer_object=tok, **bert_specials)
    elif family == "mpnet":
        tok = _wordpiece(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s>", "</s>")
        hf = T.MPNetTokenizerFast(tokenizer_object=tok, **roberta_specials)
    elif family == "roberta":
        tok = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s>", "</s>", roberta=True)
        hf = T.RobertaTokenizerFast(tokenizer_object=tok, **roberta_specials)
    elif family == "xlm-roberta":
        tok = _unigram(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>", "<s>", "</s>", pair_double_sep=True)
        hf = T.XLMRobertaTokenizerFast(tokenizer_object=tok, **roberta_specials)
    elif family == "deberta-v2":
        tok = _unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[UNK]", "[CLS]", "[SEP]")
        hf = T.DebertaV2TokenizerFast(tokenizer_object=tok, **bert_specials)
    elif family == "albert":
        tok = _unigram(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], "<unk>", "[CLS]", "[SEP]")
        hf = T.AlbertTokenizerFast(tokenizer_object=tok, **{**bert_specials, "unk_token": "<unk>",
                                                             "pad_token": "<pad>"})
    elif family == "modernbert":
        tok = _byte_bpe(["<|endoftext|>", "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"], "[CLS]", "[SEP]",
                        roberta=False)
        hf = T.PreTrainedTokenizerFast(tokenizer_object=tok, **bert_specials,
                                       model_input_names=["input_ids", "attention_mask"])
    elif family == "gpt2":
        tok = _byte_bpe(["<|endoftext|>"], None, None, roberta=False)
        hf = T.GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 unk_token="<|endoftext|>")
    elif family == "llama":
        tok = _byte_bpe(["<unk>", "<s>", "</s>"], None, None, roberta=False, bos="<s>")
        hf = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    elif family in ("qwen2", "qwen3"):
        tok = _byte_bpe(["<|endoftext|>", "<|im_end|>"], None, None, roberta=False)
        hf = T.Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token=None, bos_token=None)
    else:
        raise ValueError(f"no tiny builder for {family!r}")
    if family in DECODERS:
        return hf, {"pad_token_id": hf.pad_token_id, "bos_token_id": hf.bos_token_id, "eos_token_id": hf.eos_token_id}
    ids = {"pad_token_id": hf.pad_token_id, "cls_token_id": hf.cls_token_id, "sep_token_id": hf.sep_token_id}
    if family in ("roberta", "xlm-roberta", "mpnet"):
        ids.update(bos_token_id=hf.cls_token_id, eos_token_id=hf.sep_token_id)
    if family == "modernbert":
        ids.update(bos_token_id=hf.cls_token_id, eos_token_id=hf.sep_token_id)
    return hf, ids


def _config(family: str, vocab_size: int, ids: dict):
    import transformers as T

    common = dict(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=130, num_labels=2, **ids)
    if family == "bert":
        return T.BertConfig(**common)
    if family == "distilbert":
        return T.DistilBertConfig(vocab_size=vocab_size, dim=HIDDEN, n_layers=LAYERS, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=130, num_labels=2, **ids)
    if family == "roberta":
        return T.RobertaConfig(**common, type_vocab_size=1)
    if family == "xlm-roberta":
        return T.XLMRobertaConfig(**common, type_vocab_size=1)
    if family == "electra":
        return T.ElectraConfig(**common, embedding_size=16)   # a real ELECTRA projects its embeddings up
    if family == "deberta-v2":                                 # DeBERTa-v3's layout
        return T.DebertaV2Config(**common, type_vocab_size=0, relative_attention=True, position_biased_input=False,
                                 pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_buckets=32,
                                 norm_rel_ebd="layer_norm", share_att_key=True)
    if family == "modernbert":
        return T.ModernBertConfig(**common, global_attn_every_n_layers=2, local_attention=16,
                                  attn_implementation="eager")
    if family == "mpnet":
        return T.MPNetConfig(**common)
    if family == "albert":
        return T.AlbertConfig(**common, embedding_size=16)
    decoder = dict(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=130, num_labels=2,
                   tie_word_embeddings=False, **ids)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=vocab_size, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_inner=64,
                            n_positions=130, num_labels=2, **ids)
    if family == "llama":
        return T.LlamaConfig(**decoder)
    if family == "qwen2":
        return T.Qwen2Config(**decoder)
    if family == "qwen3":
        return T.Qwen3Config(**decoder, head_dim=8)
    raise ValueError(f"no tiny builder for {family!r}")


def build_tiny(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random ``family`` checkpoint with its own kind of tokenizer in ``out_dir`` (made if needed)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = _tokenizer(family)
    config = _config(family, len(tokenizer), ids)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# --- what the per-family chain tests share (tests/test_families.py, tests/test_decoders.py) --------------------

# Mixed lengths, so a batch of them pads: one word up to a long sentence.
MIXED_TEXTS = ["great", "the plot is thin and the jokes fall flat", "I loved every minute of it, truly a gem",
               "a tedious, overlong mess that goes on and on about nothing in particular, padding the runtime",
               "not bad", "Surprisingly moving; the cast is superb and the score lingers long after the credits roll.",
               "meh"]


def chain_data(demo_data):
    """The small slice of the templated demo data a family chain trains and evaluates on."""
    from slimship.core.config import DataConfig

    return DataConfig(str(demo_data), max_train_rows=128, max_eval_rows=32)


def chain_train_config(**extra):
    """One short epoch: enough for a tiny model to be a trained artifact, not to be accurate."""
    from slimship.train.config import TrainConfig

    return TrainConfig(epochs=1, batch_size=32, eval_batch_size=64, learning_rate=1e-3, max_length=48,
                       patience=1, quiet=True, **extra)


def torch_logits_one_by_one(model_dir, texts):
    """PyTorch logits of each text alone: no padding anywhere, the reference for any batched path."""
    import numpy as np

    from slimship.train.artifacts import load_pytorch_artifact, predict_logits

    manifest, model, tokenizer = load_pytorch_artifact(model_dir)
    return np.concatenate([predict_logits(model, tokenizer, [t], manifest["max_length"]) for t in texts])
