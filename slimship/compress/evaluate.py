"""Metrics of any artifact (PyTorch or ONNX) on a data split, with the same metric code for both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slimship.core.errors import UserError
from slimship.core import artifact
from slimship.core.data import load_data
from slimship.core.metrics import task_metrics
from slimship.core.tasks import input_length, takes_pairs, task_of, thresholds_of


def artifact_logits(path: str | Path, texts: list, batch_size: int = 64) -> np.ndarray:
    """Logits of an artifact of either format for inputs (texts, or (text, text_pair) tuples for a pair model);
    PyTorch artifacts need the train extra."""
    manifest = artifact.load(path)
    if manifest["format"] == "onnx":
        from slimship.core.runtime import Classifier

        clf = Classifier(path, verify=False)  # verified just above
        order = sorted(range(len(texts)), key=lambda i: input_length(texts[i]))
        out = np.zeros((len(texts), len(manifest["labels"])), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = clf.logits([texts[i] for i in idx])
        return out
    if manifest["format"] == "pytorch":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from slimship.train.artifacts import predict_logits

        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
        return predict_logits(model, tokenizer, texts, manifest["max_length"], batch_size)
    raise UserError(f"{path}: unknown artifact format {manifest['format']!r}")


def evaluate(path: str | Path, data: str | Path, *, split: str = "validation", text_column: str = "text",
             label_column: str = "label", max_rows: int | None = None, batch_size: int = 64,
             seed: int = 42, validation_fraction: float = 0.1, write: bool = True,
             text_pair_column: str | None = None) -> dict[str, Any]:
    manifest = artifact.load(path)
    loaded = load_data(data, text_column=text_column, label_column=label_column, labels=manifest["labels"],
                       seed=seed, validation_fraction=validation_fraction, splits=(split,),
                       task=task_of(manifest), text_pairs=takes_pairs(manifest), text_pair_column=text_pair_column)
    if split not in loaded.splits:
        raise UserError(f"{data}: has no {split!r} split")
    part = loaded.splits[split]
    part.take(slice(None, max_rows))
    logits = artifact_logits(path, part.inputs, batch_size)
    metrics = task_metrics(task_of(manifest), logits, part.labels, manifest["labels"], thresholds_of(manifest))
    metrics["split"], metrics["data"] = split, str(data)
    if write:
        # Beside the files the manifest lists, so the artifact's digests stay valid.
        (Path(path) / f"evaluation-{split}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
