"""Metrics per task from model outputs and references (numpy only, shared by PyTorch and ONNX paths).

    classification  accuracy, macro-F1, per-class precision/recall/F1, confusion matrix (argmax of logits)
    multilabel      micro-F1, macro-F1, exact-match ratio, per-label precision/recall/F1 (sigmoid > threshold)
    regression      Pearson r, Spearman rho, MSE (the single output is the prediction)

``task_metrics`` dispatches on the task; ``main_value`` reads the task's main metric back out of the result.
"""

from __future__ import annotations

import numpy as np

from slimship.core.tasks import CLASSIFICATION, DEFAULT_THRESHOLD, MAIN_METRIC, METRIC_NAMES, MULTILABEL, REGRESSION


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


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def _f1(tp, fp, fn):
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def multilabel_metrics(decisions, references, labels: list[str]) -> dict:
    """micro-/macro-F1 (macro over the labels that occur), exact-match ratio and per-label P/R/F1/support from
    0/1 decisions and 0/1 references, both (rows, labels)."""
    pred = np.asarray(decisions, dtype=bool).reshape(-1, len(labels))
    true = np.asarray(references, dtype=float).reshape(-1, len(labels)) > 0.5
    tp = (pred & true).sum(axis=0)
    fp = (pred & ~true).sum(axis=0)
    fn = (~pred & true).sum(axis=0)
    support = true.sum(axis=0)
    precision = np.divide(tp, tp + fp, out=np.zeros(len(labels)), where=(tp + fp) > 0)
    recall = np.divide(tp, support, out=np.zeros(len(labels)), where=support > 0)
    f1 = _f1(tp, fp, fn)
    present = support > 0
    return {
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "exact_match": float((pred == true).all(axis=1).mean()) if len(pred) else 0.0,
        "n": int(len(pred)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(labels)
        },
    }


def rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (as scipy.stats.rankdata's default)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def regression_metrics(predictions, references) -> dict:
    """Pearson r, Spearman rho (0 when either side is constant) and mean squared error."""
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    true = np.asarray(references, dtype=np.float64).reshape(-1)
    if len(pred) == 0:
        return {"pearson": 0.0, "spearman": 0.0, "mse": 0.0, "n": 0}
    return {
        "pearson": _pearson(pred, true),
        "spearman": _pearson(rankdata(pred), rankdata(true)),
        "mse": float(((pred - true) ** 2).mean()),
        "n": int(len(pred)),
    }


THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def tune_thresholds(probabilities, references, grid=THRESHOLD_GRID) -> list[float]:
    """Per label, the threshold on the grid with the best F1 of that label on these rows (the smallest of
    equals, which favours recall; 0.5 for a label with no positive row, where F1 says nothing)."""
    p = np.asarray(probabilities, dtype=np.float64)
    true = np.asarray(references, dtype=float) > 0.5
    chosen = []
    for j in range(p.shape[1]):
        if not true[:, j].any():
            chosen.append(DEFAULT_THRESHOLD)
            continue
        over = p[:, j][None, :] > np.asarray(grid)[:, None]          # (thresholds, rows)
        tp = (over & true[:, j]).sum(axis=1)
        fp = (over & ~true[:, j]).sum(axis=1)
        fn = (~over & true[:, j]).sum(axis=1)
        chosen.append(float(grid[int(np.argmax(_f1(tp, fp, fn)))]))
    return chosen


def multilabel_decisions(logits, thresholds) -> np.ndarray:
    p = sigmoid(logits)
    limits = np.full(p.shape[1], DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, dtype=float)
    return p > limits


def task_metrics(task: str, logits, references, labels: list[str], thresholds=None) -> dict:
    """The task's metrics from raw model outputs (logits; the single output of a regression model)."""
    logits = np.asarray(logits, dtype=np.float32)
    if task == CLASSIFICATION:
        return classification_metrics(logits.argmax(-1), references, labels)
    if task == MULTILABEL:
        return multilabel_metrics(multilabel_decisions(logits, thresholds), references, labels)
    if task == REGRESSION:
        return regression_metrics(logits.reshape(len(logits), -1)[:, 0], references)
    raise ValueError(f"unknown task {task!r}")


def main_metric_of(metrics: dict | None) -> str:
    """The name of the main metric in a metrics dict, told by its keys (accuracy when it is empty)."""
    return next((name for name in MAIN_METRIC.values() if metrics and name in metrics), "accuracy")


def main_value(metrics: dict, task: str | None = None) -> float:
    """The task's main metric from a metrics dict (the task is read from its keys when not given)."""
    return metrics[MAIN_METRIC[task] if task else main_metric_of(metrics)]


def summary_line(metrics: dict) -> str:
    if "pearson" in metrics:
        return (f"Pearson {metrics['pearson'] * 100:.2f}  Spearman {metrics['spearman'] * 100:.2f}  "
                f"MSE {metrics['mse']:.4f}  (n={metrics['n']})")
    if "micro_f1" in metrics:
        return (f"micro-F1 {metrics['micro_f1'] * 100:.2f}%  macro-F1 {metrics['macro_f1'] * 100:.2f}%  "
                f"exact match {metrics['exact_match'] * 100:.2f}%  (n={metrics['n']})")
    return f"accuracy {metrics['accuracy'] * 100:.2f}%  macro-F1 {metrics['macro_f1'] * 100:.2f}%  (n={metrics['n']})"


def metric_label(name: str) -> str:
    return METRIC_NAMES.get(name, name)


HEADLINE = {CLASSIFICATION: ("accuracy", "macro_f1"), MULTILABEL: ("micro_f1", "macro_f1"),
            REGRESSION: ("pearson", "spearman")}


def headline(metrics: dict | None) -> dict | None:
    """The two numbers a summary shows of one split's metrics: the main metric first, then a second one."""
    if not metrics:
        return None
    task = next((t for t, name in MAIN_METRIC.items() if name in metrics), CLASSIFICATION)
    return {name: metrics[name] for name in HEADLINE[task]}


def shown(metrics: dict | None) -> str:
    """The main metric of a headline or full metrics dict, for a table cell (accuracy, micro-F1 or Pearson, %)."""
    return f"{main_value(metrics) * 100:.2f}%" if metrics else "n/a"
