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
from slimship.core.data import LabelledData, load_data
from slimship.core.metrics import classification_metrics


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def work_dir_for(out: Path) -> Path:
    """Checkpoints live beside the artifact, so --resume finds them after a crash; removed on success."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.work"


def load_stage_data(data: DataConfig, labels: list[str] | None = None) -> LabelledData:
    """The splits a stage reads, as ``data`` says: columns, split, training sample, evaluation rows."""
    loaded = load_data(data.path, text_column=data.text_column, label_column=data.label_column, labels=labels,
                       validation_fraction=data.validation_fraction, seed=data.split_seed,
                       max_train_rows=data.max_train_rows)
    for name, split in loaded.splits.items():
        if split.skipped_empty:
            stage_log(f"{split.source}: skipped {split.skipped_empty} rows with empty text")
    if data.max_eval_rows:
        for name in ("validation", "test"):
            if name in loaded.splits:
                split = loaded.splits[name]
                split.texts, split.labels = split.texts[:data.max_eval_rows], split.labels[:data.max_eval_rows]
    return loaded


def predict_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """Logits for texts, batched, sorted by length so each batch pads little; returned in input order."""
    import torch

    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(**batch).logits.float().cpu().numpy()
            for i, row in zip(idx, logits):
                out[i] = row
    return np.stack(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)


def evaluate_model(model, tokenizer, data: LabelledData, max_length: int, batch_size: int = 64) -> dict[str, Any]:
    """Metrics of a model on each evaluation split present (validation, test)."""
    results = {}
    for name in ("validation", "test"):
        if name in data.splits:
            split = data.splits[name]
            logits = predict_logits(model, tokenizer, split.texts, max_length, batch_size)
            results[name] = classification_metrics(logits.argmax(-1), split.labels, data.labels)
    return results


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

