"""PyTorch artifacts: load and save them, predict with them, and the data a torch stage reads.

Shared by every torch stage (train, distill, prune, trim-vocab, export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slimship.core import artifact
from slimship.core.artifact import stage_log
from slimship.core.config import DataConfig
from slimship.core.data import LabelledData, load_configured
from slimship.core.metrics import sigmoid, task_metrics, tune_thresholds
from slimship.core.tasks import MULTILABEL, input_length, split_pairs


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def work_dir_for(out: Path) -> Path:
    """Checkpoints live beside the artifact, so --resume finds them after a crash; removed on success."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.work"


def load_stage_data(data: DataConfig, labels: list[str] | None = None,
                    manifest: dict[str, Any] | None = None) -> LabelledData:
    """The splits a stage reads, as ``data`` says: columns, task, split, training sample, evaluation rows.
    A stage that starts from a model passes its ``manifest``: its labels, task and pair input are kept."""
    if manifest is None and labels is not None:
        manifest = {"labels": labels}
    loaded = load_configured(data, manifest)
    for name, split in loaded.splits.items():
        if split.skipped_empty:
            stage_log(f"{split.source}: skipped {split.skipped_empty} rows with empty text")
    if data.max_eval_rows:
        for name in ("validation", "test"):
            if name in loaded.splits:
                loaded.splits[name].take(slice(None, data.max_eval_rows))
    return loaded


def tokenize(tokenizer, inputs: list, max_length: int, **kwargs):
    """The tokenizer over inputs that are texts or (text, text_pair) tuples (pairs truncated longest first)."""
    texts, pairs = split_pairs(inputs)
    return tokenizer(texts, pairs, truncation=True, max_length=max_length, **kwargs)


def predict_logits(model, tokenizer, texts: list, max_length: int, batch_size: int = 64) -> np.ndarray:
    """Logits for inputs (texts, or (text, text_pair) tuples), batched, sorted by length so each batch pads
    little; returned in input order."""
    import torch

    model.eval()
    order = sorted(range(len(texts)), key=lambda i: input_length(texts[i]))
    out = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenize(tokenizer, [texts[i] for i in idx], max_length, padding=True, return_tensors="pt")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(**batch).logits.float().cpu().numpy()
            for i, row in zip(idx, logits):
                out[i] = row
    return np.stack(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)


def evaluate_with_thresholds(model, tokenizer, data: LabelledData, max_length: int,
                             batch_size: int = 64) -> tuple[dict[str, Any], dict[str, float] | None]:
    """Metrics of a model on each evaluation split present (validation, test), and for a multi-label model the
    per-label thresholds, tuned on validation (0.5 without one) and used for every split's metrics."""
    logits = {name: predict_logits(model, tokenizer, data.splits[name].inputs, max_length, batch_size)
              for name in ("validation", "test") if name in data.splits}
    thresholds = None
    if data.task == MULTILABEL:
        if "validation" in logits:
            values = tune_thresholds(sigmoid(logits["validation"]), data.splits["validation"].labels)
        else:
            values = [0.5] * len(data.labels)
        thresholds = dict(zip(data.labels, values))
    results = {name: task_metrics(data.task, value, data.splits[name].labels, data.labels,
                                  None if thresholds is None else list(thresholds.values()))
               for name, value in logits.items()}
    return results, thresholds


def evaluate_model(model, tokenizer, data: LabelledData, max_length: int, batch_size: int = 64) -> dict[str, Any]:
    """Metrics of a model on each evaluation split present (validation, test)."""
    return evaluate_with_thresholds(model, tokenizer, data, max_length, batch_size)[0]


def task_record(data: LabelledData, thresholds: dict[str, float] | None) -> dict[str, Any]:
    """The manifest fields of a model's task shape: task, text_pairs and (multilabel) thresholds."""
    record = data.manifest_fields()
    if thresholds is not None:
        record["thresholds"] = thresholds
    return record


def save_model_artifact(builder, model, tokenizer) -> None:
    model.save_pretrained(builder.dir, safe_serialization=True)
    tokenizer.save_pretrained(builder.dir)


def load_pytorch_artifact(path: str | Path):
    """(manifest, model, tokenizer) of a verified PyTorch artifact."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest = artifact.load(path, format="pytorch")
    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    return manifest, model, tokenizer

