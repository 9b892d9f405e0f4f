"""Time what one `slimship run` chose against the teacher as users would ship it, side by side (issues 14, 17).

    slimship run --data runs/b14/sst2-5k --out runs/b14/sst2-run          # defaults, nothing else set
    python bench/bench_run.py --run runs/b14/sst2-run --data runs/b14/sst2-5k
    python bench/bench_run.py --run runs/stsb --data ../shared/datasets/stsb          # pairs, regression
    python bench/bench_run.py --run runs/goemotions --data ../shared/datasets/goemotions --label-column labels

Rows: the PyTorch FP32 teacher, optimum's dynamic INT8 of the teacher (the documented recipe), and the run's
chosen model through slimship's runtime. The task's main metric (accuracy, micro-F1 with the manifest's
thresholds, Pearson r) on validation and test, file size, batch-1 latency and batch-32 throughput
(bench_headline.py's protocol: rows take turns, median of --repeats passes); pair data is fed as pairs to every
row. Then the chosen model's batch invariance: every validation and test input scored alone, in file-order
batches of 32 and in shuffled batches of 32; an answer that differs between any two is counted (a label, or a
multi-label set; regression has none to count), and the largest output difference is given. Results go to
RUN/bench.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np

from bench_headline import optimum_rows, pytorch_row, size_mb, timed_side_by_side
from slimship.core.metrics import main_value, sigmoid, task_metrics
from slimship.core.tasks import CLASSIFICATION, MULTILABEL, REGRESSION, main_metric, takes_pairs, task_of, thresholds_of


def batch_invariance(classifier, inputs: list, seed: int = 0, task: str = CLASSIFICATION,
                     thresholds=None) -> dict:
    """Changed answers and the largest output difference between batch 1, batches of 32 and shuffled 32s.

    Outputs compared: class probabilities, label probabilities (multilabel) or the score (regression); answers
    counted: the label, the set of labels over their thresholds; a regression score has no answer to count."""
    def outputs(batches: list[list[int]]) -> np.ndarray:
        out = None
        for idx in batches:
            logits = np.asarray(classifier.logits([inputs[i] for i in idx]), dtype=np.float64).reshape(len(idx), -1)
            out = np.zeros((len(inputs), logits.shape[1])) if out is None else out
            out[idx] = logits
        if task == CLASSIFICATION:
            e = np.exp(out - out.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)
        return sigmoid(out) if task == MULTILABEL else out

    def changed(a: np.ndarray, b: np.ndarray) -> int:
        if task == CLASSIFICATION:
            return int((a.argmax(-1) != b.argmax(-1)).sum())
        if task == MULTILABEL:
            limit = np.asarray(thresholds if thresholds is not None else [0.5] * a.shape[1])
            return int(((a > limit) != (b > limit)).any(-1).sum())
        return 0

    order = list(range(len(inputs)))
    shuffled = order[:]
    random.Random(seed).shuffle(shuffled)
    single = outputs([[i] for i in order])
    b32 = outputs([order[i:i + 32] for i in range(0, len(order), 32)])
    s32 = outputs([shuffled[i:i + 32] for i in range(0, len(shuffled), 32)])
    return {"texts": len(inputs), "flips_b1_vs_b32": changed(single, b32), "flips_b32_vs_shuffled_b32": changed(b32, s32),
            "max_abs_prob_diff" if task != REGRESSION else "max_abs_score_diff":
                float(max(np.abs(single - b32).max(), np.abs(b32 - s32).max()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a `slimship run` output dir (teacher/, compress/)")
    parser.add_argument("--data", type=Path, required=True, help="its data dir (validation.csv, test.csv)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--latency-rows", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label-column", default="label", help="the data's label column, as given to slimship run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from slimship.core import artifact
    from slimship.core.data import load_data
    from slimship.core.runtime import Classifier

    teacher, model_dir = args.run / "teacher", args.run / "compress" / "model"
    manifest, teacher_manifest = artifact.load(model_dir), artifact.load(teacher)
    labels, task = teacher_manifest["labels"], task_of(manifest)
    max_length = manifest["max_length"]
    splits = load_data(args.data, labels=labels, splits=("validation", "test"), label_column=args.label_column,
                       task=task, text_pairs=takes_pairs(manifest)).splits
    val, test = splits["validation"], splits.get("test")
    class_labels = val.labels if task == CLASSIFICATION else None

    classifier = Classifier(model_dir, threads=args.threads, spinning=False)
    rows = [pytorch_row(teacher, val.inputs, class_labels, max_length, args.threads, args.latency_rows)]
    rows += optimum_rows(teacher, args.run / "bench", val.inputs, class_labels, max_length, args.threads,
                         args.latency_rows)[1:]
    rows.append({"name": f"slimship run's choice ({manifest.get('chosen', model_dir.name)})",
                 "mb": size_mb(model_dir / "model.onnx"), "logits": classifier.logits, "chosen": True})
    for r in rows:
        # The chosen model is judged with its own tuned thresholds (multilabel), the teacher's rows with the teacher's.
        thresholds = thresholds_of(manifest if r.get("chosen") else teacher_manifest)
        for name, split in (("validation", val), ("test", test)):
            if split is None:
                continue
            inputs = split.inputs
            logits = np.concatenate([np.asarray(r["logits"](inputs[i:i + 32])).reshape(len(inputs[i:i + 32]), -1)
                                     for i in range(0, len(inputs), 32)])
            r[f"{name}_metric"] = main_value(task_metrics(task, logits, split.labels, labels, thresholds), task)
    timed_side_by_side(rows, val.inputs, args.latency_rows, args.repeats)
    invariance = batch_invariance(classifier, val.inputs + (test.inputs if test else []), task=task,
                                  thresholds=thresholds_of(manifest))
    for r in rows:
        del r["logits"]
        r["speedup_vs_pytorch"] = r["throughput_rows_s"] / rows[0]["throughput_rows_s"]
        r["speedup_vs_optimum_int8"] = r["throughput_rows_s"] / rows[1]["throughput_rows_s"]

    metric = main_metric(task)
    lines = [f"| model | validation {metric} | test {metric} | MB | batch-1 p50 ms | batch-32 rows/s (min-max) | "
             "× PyTorch FP32 | × optimum INT8 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[k] * 100:.2f}" if k in r else "n/a" for k in ("validation_metric", "test_metric")]
        lines.append(f"| {r['name']} | {cells[0]} | {cells[1]} | {r['mb']:.1f} | {r['latency_ms_p50']:.2f} | "
                     f"{r['throughput_rows_s']:.0f} ({r['throughput_min']:.0f}-{r['throughput_max']:.0f}) | "
                     f"{r['speedup_vs_pytorch']:.1f}× | {r['speedup_vs_optimum_int8']:.2f}× |")
    print("\n".join(lines))
    difference = next(k for k in invariance if k.startswith("max_abs"))
    print(f"batch invariance of the choice over {invariance['texts']} inputs: "
          f"{invariance['flips_b1_vs_b32']} changed answers batch 1 vs 32, {invariance['flips_b32_vs_shuffled_b32']} "
          f"32 vs shuffled 32, {difference} {invariance[difference]:.2e}")
    (args.run / "bench.json").write_text(json.dumps(
        {"rows": rows, "batch_invariance": invariance, "threads": args.threads, "repeats": args.repeats},
        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
