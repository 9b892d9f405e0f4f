"""Classification metrics from predicted and true label ids (numpy only, shared by PyTorch and ONNX paths)."""

from __future__ import annotations

import numpy as np


def classification_metrics(predictions, references, labels: list[str]) -> dict:
    """accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = true)."""
    pred = np.asarray(predictions, dtype=np.int64)
    true = np.asarray(references, dtype=np.int64)
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    tp = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    actual = confusion.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(n), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    present = actual > 0  # macro-F1 over the classes that occur, as scikit-learn does with labels=present
    return {
        "accuracy": float(tp.sum() / max(1, len(true))),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "n": int(len(true)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(actual[i])}
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion.tolist(),
    }


def summary_line(metrics: dict) -> str:
    return f"accuracy {metrics['accuracy'] * 100:.2f}%  macro-F1 {metrics['macro_f1'] * 100:.2f}%  (n={metrics['n']})"
