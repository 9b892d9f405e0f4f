"""The vocab stage: keep only the tokens the training data uses, and the word-embedding rows behind them.

    trim_vocab("runs/pruned", "runs/pruned-vocab", DataConfig("data/"), VocabConfig()) -> Path("runs/pruned-vocab")

A small student is mostly word-embedding table (MiniLM: 30522 x 384, 11.7M of a pruned 3-layer student's
14.7M parameters), and most of those tokens never occur in one domain's text. This stage counts the token ids
of the training texts with the artifact's own fast tokenizer and keeps, in their original order:

- every id seen at least ``min_count`` times;
- a fixed set that is always kept: the special tokens ([PAD] [UNK] [CLS] [SEP] [MASK] and whatever else the
  tokenizer declares) and every single-character token with its continuation form (``a`` and ``##a``);
- with ``keep_top`` N, the first N ids of the vocabulary as well: BERT's WordPiece vocabularies (bert-base,
  MiniLM, ...) list their pieces, after the reserved and single-character ones, in order of frequency in the
  pretraining corpus ("the", "of", "and", "in", ...), so this keeps the words of general text that the
  training split happens not to contain -- the words a validation or production text brings. Pieces that
  the tokenizer can never produce (``[unused12]``: the pre-tokenizer splits punctuation off every word) are
  not kept by this rule.

WordPiece is a greedy longest match over the vocabulary, so with the single characters kept any word that
tokenized without [UNK] before still does: where a longer piece is gone it falls back to shorter ones. And when
every token of a text's original tokenization is kept, the trimmed tokenizer produces exactly the same tokens
(the longest match in a subset that still holds the original match is that match), so the model sees the same
embeddings and gives the same logits. The stage checks this on the counted training texts before it writes.

The tokenizer is rewritten from its own ``tokenizer.json`` (the WordPiece vocabulary, the added tokens, the
post-processor's [CLS]/[SEP] ids and the padding id renumbered; normalizer and pre-tokenizer untouched), so
``tokenizers.Tokenizer.from_file`` in the torch-free runtime and the ONNX export need nothing new. The table of
kept ids (new id -> original id) is written as ``kept_token_ids.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from slimship.core.errors import UserError
from slimship.core import artifact
from slimship.core.artifact import stage_log
from slimship.core.config import DataConfig
from slimship.compress.config import VocabConfig  # noqa: F401 (the stage's options)

KEPT_IDS_FILE = "kept_token_ids.json"
COUNT_CHUNK = 4096      # texts per encode_batch call: keeps the progress bar moving and memory flat
CHECK_TEXTS = 2000      # counted texts re-tokenized by the trimmed tokenizer as a self-check


# --- the tokenizer -------------------------------------------------------------------------------------------


TRIMMABLE = ("WordPiece", "BPE", "Unigram")


def vocab_of(spec: dict[str, Any]) -> dict[str, int]:
    """token -> id of the tokenizer model's own vocabulary (Unigram lists [piece, score] pairs by id)."""
    model = spec["model"]
    if model["type"] == "Unigram":
        return {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
    return {token: int(i) for token, i in model["vocab"].items()}


def _merge_pairs(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """BPE merges as (left, right) pairs, from either serialization ("a b" strings or [a, b] lists)."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"].get("merges") or []]


def _merge_result(spec: dict[str, Any], left: str, right: str) -> str:
    prefix = spec["model"].get("continuing_subword_prefix") or ""
    return left + (right[len(prefix):] if prefix and right.startswith(prefix) else right)


def merge_closure(spec: dict[str, Any], kept: set[int]) -> set[int]:
    """BPE reaches a token only through the merges that build it, so every token a kept token is merged from is
    kept too (recursively). Then, on a text whose tokens are all kept, the trimmed merges apply the same merges
    in the same order: every token formed on the way is kept, and no removed merge was one of them."""
    if spec["model"]["type"] != "BPE":
        return kept
    vocab = vocab_of(spec)
    parts = {}
    for left, right in _merge_pairs(spec):
        result = vocab.get(_merge_result(spec, left, right))
        if result is not None and result not in parts and left in vocab and right in vocab:
            parts[result] = (vocab[left], vocab[right])
    closed, todo = set(kept), list(kept)
    while todo:
        for part in parts.get(todo.pop(), ()):
            if part not in closed:
                closed.add(part)
                todo.append(part)
    return closed


def tokenizer_spec(tokenizer, where: str) -> dict[str, Any]:
    """The serialized fast tokenizer (tokenizer.json's content), refused unless its model is WordPiece, BPE
    (byte-level or not) or Unigram (SentencePiece-style)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{where}: trimming needs a fast tokenizer (tokenizer.json); this artifact has "
                        f"{type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") not in TRIMMABLE or not isinstance(model.get("vocab"), (dict, list)):
        raise UserError(f"{where}: trim-vocab supports WordPiece, BPE and Unigram tokenizers; this tokenizer's "
                        f"model is {model.get('type')!r}")
    if model.get("dropout"):
        raise UserError(f"{where}: trim-vocab cannot keep a BPE tokenizer with dropout {model['dropout']} "
                        f"deterministic; save it without dropout first")
    return spec


wordpiece_spec = tokenizer_spec     # the name before BPE and Unigram were supported


def id_to_token(spec: dict[str, Any]) -> dict[int, str]:
    """Every id the tokenizer can produce: the WordPiece vocabulary and the added tokens."""
    tokens = {i: token for token, i in vocab_of(spec).items()}
    tokens.update({int(t["id"]): t["content"] for t in spec.get("added_tokens") or []})
    return tokens


def _post_processor_ids(processor: dict[str, Any] | None) -> list[int]:
    """The token ids a post-processor inserts ([CLS], [SEP], ...): they must survive trimming."""
    if not processor:
        return []
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        return [int(i) for special in processor.get("special_tokens", {}).values() for i in special["ids"]]
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [int(processor["sep"][1]), int(processor["cls"][1])]
    if kind == "Sequence":
        return [i for p in processor.get("processors", []) for i in _post_processor_ids(p)]
    return []


def _remap_post_processor(processor: dict[str, Any] | None, new_id: dict[int, int]) -> None:
    if not processor:
        return
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for special in processor.get("special_tokens", {}).values():
            special["ids"] = [new_id[int(i)] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], new_id[int(processor[key][1])]]
    elif kind == "Sequence":
        for p in processor.get("processors", []):
            _remap_post_processor(p, new_id)
    elif kind not in ("ByteLevel",):
        raise UserError(f"trimming cannot renumber a {kind!r} post-processor")


def fixed_ids(spec: dict[str, Any], tokenizer, model_config) -> set[int]:
    """Ids kept whatever the data says: special tokens, and single characters in both word positions."""
    prefix = spec["model"].get("continuing_subword_prefix") or "##"
    keep = {int(t["id"]) for t in spec.get("added_tokens") or []}
    keep.update(int(i) for i in tokenizer.all_special_ids)
    keep.update(_post_processor_ids(spec.get("post_processor")))
    if spec.get("padding"):
        keep.add(int(spec["padding"]["pad_id"]))
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value >= 0:
            keep.add(value)
    model = spec["model"]
    vocab = vocab_of(spec)
    if model.get("unk_token") in vocab:
        keep.add(vocab[model["unk_token"]])
    if model["type"] == "Unigram" and model.get("unk_id") is not None:
        keep.add(int(model["unk_id"]))
    # A word can always be spelled out one character at a time (WordPiece's longest-match fallback; BPE's
    # alphabet, every byte for byte-level BPE; Unigram's single-character pieces, also after the "▁" word mark),
    # and byte-fallback pieces (<0x41>) stand in for any other character.
    for token, i in vocab.items():
        if (len(token) == 1 or (token.startswith(prefix) and len(token) == len(prefix) + 1)
                or (token.startswith("\u2581") and len(token) == 2)
                or (token.startswith("<0x") and token.endswith(">") and len(token) == 6)):
            keep.add(i)
    return keep


def producible(token: str, prefix: str) -> bool:
    """Whether WordPiece can emit ``token``: BERT's pre-tokenizer makes every punctuation character a word of its
    own, so a longer piece holding one (``[unused3]``, ``[MASK]`` as plain text) never matches."""
    import unicodedata

    body = token[len(prefix):] if token.startswith(prefix) and len(token) > len(prefix) else token
    return len(body) == 1 or not any(unicodedata.category(ch).startswith("P") or ch in "$+<=>^`|~"
                                     for ch in body)


def top_ids(spec: dict[str, Any], keep_top: int) -> set[int]:
    """The vocabulary's first ``keep_top`` ids that the tokenizer can produce (WordPiece: see producible)."""
    if keep_top <= 0:
        return set()
    prefix = spec["model"].get("continuing_subword_prefix") or "##"
    wordpiece = spec["model"]["type"] == "WordPiece"
    return {i for token, i in vocab_of(spec).items() if i < keep_top and (not wordpiece or producible(token, prefix))}


def counting_tokenizer(spec: dict[str, Any]):
    """The artifact's tokenizer without truncation or padding, and without [CLS]/[SEP] when encoding with
    ``add_special_tokens=False``: every token of every text counts, also past max_length."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def count_tokens(spec: dict[str, Any], texts: list[str], id_space: int, quiet: bool = False) -> np.ndarray:
    """How often each id occurs in ``texts`` (special tokens left out)."""
    from tqdm.auto import tqdm

    tokenizer = counting_tokenizer(spec)
    counts = np.zeros(id_space, dtype=np.int64)
    with tqdm(total=len(texts), desc="count tokens", unit="row", disable=quiet, dynamic_ncols=True) as bar:
        for start in range(0, len(texts), COUNT_CHUNK):
            chunk = texts[start:start + COUNT_CHUNK]
            ids = [i for enc in tokenizer.encode_batch(chunk, add_special_tokens=False) for i in enc.ids]
            if ids:
                counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=id_space)[:id_space]
            bar.update(len(chunk))
    return counts


def trimmed_spec(spec: dict[str, Any], kept: list[int]) -> dict[str, Any]:
    """tokenizer.json's content with only ``kept`` ids (in their order), every id reference renumbered."""
    new_id = {old: new for new, old in enumerate(kept)}
    out = json.loads(json.dumps(spec))
    model = out["model"]
    if model["type"] == "Unigram":     # ids are positions; the scores stay, so the best segmentation of a text
        model["vocab"] = [piece for i, piece in enumerate(spec["model"]["vocab"]) if i in new_id]   # of kept
        if model.get("unk_id") is not None:                                       # pieces is still the best
            model["unk_id"] = new_id[int(model["unk_id"])]
    else:
        model["vocab"] = {token: new_id[i] for token, i in sorted(vocab_of(spec).items(), key=lambda item: item[1])
                          if i in new_id}
    if model["type"] == "BPE":         # merges whose parts and result are all kept, in their original order
        kept_tokens = model["vocab"]
        string_form = any(isinstance(m, str) for m in spec["model"].get("merges") or [])
        model["merges"] = [f"{left} {right}" if string_form else [left, right]
                           for left, right in _merge_pairs(spec)
                           if left in kept_tokens and right in kept_tokens
                           and _merge_result(spec, left, right) in kept_tokens]
    for token in out.get("added_tokens") or []:
        token["id"] = new_id[int(token["id"])]
    _remap_post_processor(out.get("post_processor"), new_id)
    if out.get("padding"):
        out["padding"]["pad_id"] = new_id[int(out["padding"]["pad_id"])]
    return out


def rebuild_tokenizer(old, spec: dict[str, Any]):
    """A fast tokenizer of the same class and options as ``old`` over the trimmed tokenizer.json content."""
    from tokenizers import Tokenizer

    # File paths point at the old files, and the added-token table carries the old ids: the backend has the
    # renumbered ones, and save_pretrained writes vocab.txt and tokenizer_config.json from it.
    options = {k: v for k, v in old.init_kwargs.items()
               if k not in ("vocab_file", "merges_file", "tokenizer_file", "added_tokens_decoder", "name_or_path")}
    return type(old)(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **options)


def check_same_tokens(old_spec: dict[str, Any], new_tokenizer, kept: list[int], texts: list[str]) -> int:
    """On texts whose every token is kept, the trimmed tokenizer (special tokens included) must produce the
    original ids once mapped back through ``kept``. Returns how many texts were compared."""
    old = counting_tokenizer(old_spec)
    new = counting_tokenizer(json.loads(new_tokenizer.backend_tokenizer.to_str()))
    kept_set = set(kept)
    table = np.asarray(kept)
    compared = 0
    for text, before, after in zip(texts, old.encode_batch(texts), new.encode_batch(texts)):
        if not kept_set.issuperset(before.ids):
            continue
        compared += 1
        if list(table[after.ids]) != list(before.ids):
            raise RuntimeError(f"the trimmed tokenizer changed the tokens of a text whose tokens were all kept: "
                               f"{text[:80]!r}: {before.tokens} -> {after.tokens}")
    return compared


# --- the model -----------------------------------------------------------------------------------------------


def slice_vocabulary(model, kept: list[int]) -> None:
    """Keep only the ``kept`` rows of the input word embeddings (and of an output head over the vocabulary,
    such as an MLM decoder), and make the config describe the new vocabulary; in place."""
    import torch

    index = torch.as_tensor(kept, dtype=torch.long)
    new_id = {old: new for new, old in enumerate(kept)}
    old_in = model.get_input_embeddings()
    out_emb = model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is old_in.weight
    padding = old_in.padding_idx
    new_in = torch.nn.Embedding(len(kept), old_in.embedding_dim, padding_idx=new_id.get(padding),
                                dtype=old_in.weight.dtype)
    with torch.no_grad():
        new_in.weight.copy_(old_in.weight[index])
    model.set_input_embeddings(new_in)
    if out_emb is not None:
        # A new head with the kept rows of weight and bias, even when the weight is tied: tie_weights() would
        # only cut the old bias to the new length (its first rows, not the kept ones).
        head = torch.nn.Linear(out_emb.in_features, len(kept), bias=out_emb.bias is not None,
                               dtype=out_emb.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(out_emb.weight[index])
            if out_emb.bias is not None:
                head.bias.copy_(out_emb.bias[index])
        model.set_output_embeddings(head)
        if tied:
            model.tie_weights()
    config = model.config
    config.vocab_size = len(kept)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= 0:   # an id no kept token has is gone with its row
            setattr(config, name, new_id.get(value))


# --- the stage -----------------------------------------------------------------------------------------------


def _evaluate(model, tokenizer, loaded, max_length: int, batch_size: int,
              thresholds: list[float] | None = None) -> tuple[dict, dict]:
    """(metrics, logits) per evaluation split, through the same prediction code as the other stages; a
    multi-label model keeps its source's thresholds (trimming should not change a single answer)."""
    from slimship.core.metrics import task_metrics
    from slimship.train.artifacts import predict_logits

    metrics, logits = {}, {}
    for name in ("validation", "test"):
        if name in loaded.splits:
            split = loaded.splits[name]
            logits[name] = predict_logits(model, tokenizer, split.inputs, max_length, batch_size)
            metrics[name] = task_metrics(loaded.task, logits[name], split.labels, loaded.labels, thresholds)
    return metrics, logits


def _summary(metrics: dict) -> dict | None:
    from slimship.core.metrics import headline

    return headline(metrics.get("validation"))


def trim_vocab(model_dir: str | Path, out: str | Path, data: DataConfig, cfg: VocabConfig) -> Path:
    """PyTorch artifact -> PyTorch artifact whose vocabulary holds only the tokens the training data uses."""
    cfg.check()
    if not data.path:
        raise UserError("--data is needed: the tokens to keep are counted on its training rows")
    model_dir, out = Path(model_dir), Path(out)
    artifact.load(model_dir, format="pytorch")      # a missing or non-PyTorch artifact fails before torch loads

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slimship.compress.config import ExportConfig
    from slimship.compress.distill import metric_delta
    from slimship.compress.export import row_agreement, task_fields
    from slimship.core.metrics import summary_line
    from slimship.core.tasks import thresholds_of
    from slimship.compress.profile import weights_size
    from slimship.train.artifacts import count_parameters
    from slimship.train.artifacts import load_pytorch_artifact, load_stage_data, save_model_artifact

    source, model, tokenizer = load_pytorch_artifact(model_dir)
    labels, max_length = source["labels"], source["max_length"]
    spec = tokenizer_spec(tokenizer, str(model_dir))
    tokens = id_to_token(spec)
    rows = model.get_input_embeddings().num_embeddings
    if max(tokens) >= rows:
        raise UserError(f"{model_dir}: the tokenizer has ids up to {max(tokens)} but the model's word embeddings "
                        f"have only {rows} rows; tokenizer and model do not belong together")

    loaded = load_stage_data(data, manifest=source)
    thresholds = thresholds_of(source)
    train_split = loaded.splits.get("train")
    if train_split is None or not train_split.texts:
        raise UserError(f"{data.path}: no training rows to count tokens on")
    if "validation" not in loaded.splits:
        stage_log(f"{data.path}: no validation split; accuracy before and after is not measured")

    stage_log(f"trim vocabulary of {model_dir}: {len(tokens):,} tokens, counting {len(train_split):,} training "
              f"rows of {train_split.source} (min count {cfg.min_count})")
    counts = count_tokens(spec, train_split.texts + (train_split.text_pairs or []), rows, cfg.quiet)
    # Only ids the tokenizer can produce: embedding rows no token maps to are never looked up.
    fixed = {i for i in fixed_ids(spec, tokenizer, model.config) if i in tokens}
    seen = {int(i) for i in np.nonzero(counts >= cfg.min_count)[0] if int(i) in tokens}
    top = top_ids(spec, cfg.keep_top)
    kept = sorted(merge_closure(spec, fixed | seen | top))
    total_tokens = int(counts.sum())
    kept_tokens = int(counts[kept].sum())
    from_top = f", {len(top - seen - fixed):,} more from the first {cfg.keep_top:,}" if cfg.keep_top else ""
    stage_log(f"keeping {len(kept):,} of {len(tokens):,} tokens ({len(seen):,} seen >= {cfg.min_count}x, "
              f"{len(fixed):,} always kept{from_top}); {kept_tokens / max(1, total_tokens) * 100:.2f}% of "
              f"{total_tokens:,} training tokens keep their own embedding")

    before_params, before_size = count_parameters(model), weights_size(model_dir)
    before_metrics, before_logits = _evaluate(model, tokenizer, loaded, max_length, cfg.eval_batch_size, thresholds)
    if before_metrics:
        stage_log(f"before: {_summary(before_metrics)}")

    new_spec = trimmed_spec(spec, kept)
    new_tokenizer = rebuild_tokenizer(tokenizer, new_spec)
    compared = check_same_tokens(spec, new_tokenizer, kept, train_split.texts[:CHECK_TEXTS])
    pad_agreed = tokenizer.pad_token_id is not None and tokenizer.pad_token_id == model.config.pad_token_id
    slice_vocabulary(model, kept)
    # The embedding's padding row is config.pad_token_id; the tokenizer pads with its own [PAD] id.
    if pad_agreed and new_tokenizer.pad_token_id != model.config.pad_token_id:
        raise RuntimeError(f"[PAD] is id {new_tokenizer.pad_token_id} in the trimmed tokenizer but "
                           f"{model.config.pad_token_id} in the trimmed model's config")

    config = {"model": str(model_dir), **data.options(), **asdict(cfg)}
    with artifact.create(out, "vocab", format="pytorch", parent=model_dir, config=config) as art:
        save_model_artifact(art, model, new_tokenizer)
        (art.dir / KEPT_IDS_FILE).write_text(json.dumps({"source_vocab_size": rows, "kept": kept}) + "\n")
        # Measure what was written, reloaded the way every later stage reloads it.
        written = AutoModelForSequenceClassification.from_pretrained(str(art.dir)).eval()
        written_tokenizer = AutoTokenizer.from_pretrained(str(art.dir), use_fast=True)
        after_metrics, after_logits = _evaluate(written, written_tokenizer, loaded, max_length,
                                                cfg.eval_batch_size, thresholds)
        after_params, after_size = count_parameters(written), weights_size(art.dir)
        agreement = None
        if "validation" in after_logits:
            agreement = row_agreement(before_logits["validation"], after_logits["validation"], loaded.task,
                                      thresholds, ExportConfig().max_score_diff)
        vocab = {"size_before": len(tokens), "size_after": len(kept), "embedding_rows_before": rows,
                 "min_count": cfg.min_count, "fixed_tokens": len(fixed), "seen_tokens": len(seen),
                 "keep_top": cfg.keep_top, "top_tokens_added": len(top - seen - fixed),
                 "train_rows": len(train_split), "train_tokens": total_tokens, "train_tokens_kept": kept_tokens,
                 "train_token_share_kept": kept_tokens / max(1, total_tokens),
                 "tokenization_checked_texts": compared, "kept_ids_file": KEPT_IDS_FILE,
                 "tokenizer_model": spec["model"]["type"], "pad_token_id": written_tokenizer.pad_token_id}
        art.manifest.update(
            labels=labels, **task_fields(source), max_length=max_length, metrics=after_metrics,
            parameters=after_params,
            file_size=after_size, vocab=vocab,
            before={"parameters": before_params, "file_size": before_size, "metrics": _summary(before_metrics)},
            after={"parameters": after_params, "file_size": after_size, "metrics": _summary(after_metrics)},
            delta={"validation": metric_delta(_summary(after_metrics), _summary(before_metrics))},
            agreement={"validation": agreement},
            data={name: {"source": s.source, "rows": len(s), "skipped_empty": s.skipped_empty}
                  for name, s in loaded.splits.items()},
        )
        # MACs do not change (an embedding lookup multiplies nothing); the base model is still the same.
        for key in ("macs", "base_model"):
            if key in source:
                art.manifest[key] = source[key]
    stage_log(f"vocabulary {len(tokens):,} -> {len(kept):,}, parameters {before_params:,} -> {after_params:,}, "
              f"weights {before_size / 1e6:.1f} MB -> {after_size / 1e6:.1f} MB"
              + (f"; {summary_line(before_metrics['validation'])} -> {summary_line(after_metrics['validation'])}"
                 if "validation" in after_metrics else ""))
    return out
