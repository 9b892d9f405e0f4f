"""The task shapes a model can have, and what each means for heads, losses, metrics and answers.

    classification  one label per input (softmax over the labels); sentence pairs are classification too
    multilabel      any number of labels per input (a sigmoid per label, each with its own threshold)
    regression      one number per input (a single output; the manifest's labels are ["score"])

Any of them may take sentence pairs (text, text_pair): that is a property of the inputs, recorded in a manifest
as ``text_pairs: true``. A manifest without ``task`` is single-label classification (artifacts made before
task shapes existed still load and answer as they did).
"""

from __future__ import annotations

from typing import Any

TASKS = ("classification", "multilabel", "regression")
CLASSIFICATION, MULTILABEL, REGRESSION = TASKS
REGRESSION_LABELS = ["score"]

# The metric early stopping, the search's budget and the reports go by: its points are hundredths of it.
MAIN_METRIC = {CLASSIFICATION: "accuracy", MULTILABEL: "micro_f1", REGRESSION: "pearson"}
METRIC_NAMES = {"accuracy": "accuracy", "micro_f1": "micro-F1", "macro_f1": "macro-F1", "pearson": "Pearson r",
                "spearman": "Spearman rho", "mse": "MSE"}
# transformers' config.problem_type: picks the loss of *ForSequenceClassification (CE, BCE-with-logits, MSE).
PROBLEM_TYPE = {CLASSIFICATION: "single_label_classification", MULTILABEL: "multi_label_classification",
                REGRESSION: "regression"}
# Multi-label decisions before thresholds have been tuned (and for a label validation never shows).
DEFAULT_THRESHOLD = 0.5


def task_of(manifest: dict[str, Any]) -> str:
    return manifest.get("task") or CLASSIFICATION


def takes_pairs(manifest: dict[str, Any]) -> bool:
    return bool(manifest.get("text_pairs"))


def main_metric(task: str) -> str:
    return MAIN_METRIC[task]


def thresholds_of(manifest: dict[str, Any]) -> list[float] | None:
    """Per-label thresholds of a multi-label model, in label order (0.5 for any label not recorded)."""
    if task_of(manifest) != MULTILABEL:
        return None
    recorded = manifest.get("thresholds") or {}
    return [float(recorded.get(label, DEFAULT_THRESHOLD)) for label in manifest["labels"]]


def input_length(item: str | tuple[str, str]) -> int:
    """Characters of one input (a text, or both texts of a pair): the sort key of length-bucketed batches."""
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


def split_pairs(inputs) -> tuple[list[str], list[str] | None]:
    """Inputs (texts, or (text, text_pair) tuples) -> (texts, text_pairs or None), as tokenizers take them."""
    inputs = list(inputs)
    if inputs and not isinstance(inputs[0], str):
        return [a for a, _ in inputs], [b for _, b in inputs]
    return inputs, None


def can_rerank(manifest: dict[str, Any]) -> bool:
    """Whether a model gives one relevance score per (query, document) pair: a pair model that is a regression
    or a two-label classifier."""
    task = task_of(manifest)
    return takes_pairs(manifest) and (task == REGRESSION or (task == CLASSIFICATION and len(manifest["labels"]) == 2))
