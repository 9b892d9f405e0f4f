"""Time what one `slimship run` chose against the teacher as users would ship it, side by side (issue 14).

    slimship run --data runs/b14/sst2-5k --out runs/b14/sst2-run          # defaults, nothing else set
    python bench/bench_run.py --run runs/b14/sst2-run --data runs/b14/sst2-5k

Rows: the PyTorch FP32 teacher, optimum's dynamic INT8 of the teacher (the documented recipe), and the run's
chosen model through slimship's runtime. Accuracy on validation and test, file size, batch-1 latency and batch-32
throughput (bench_headline.py's protocol: rows take turns, median of --repeats passes). Then the chosen model's
batch invariance: every validation and test text scored alone, in file-order batches of 32 and in shuffled
batches of 32; a label that differs between any two is counted, and the largest score difference is given.
Results go to RUN/bench.json and a markdown table on stdout.
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


def batch_invariance(classifier, texts: list[str], seed: int = 0) -> dict:
    """Label flips and the largest probability difference between batch 1, batches of 32 and shuffled 32s."""
    def probs(batches: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(texts), len(classifier.labels)), dtype=np.float64)
        for idx in batches:
            logits = np.asarray(classifier.logits([texts[i] for i in idx]), dtype=np.float64)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            out[idx] = e / e.sum(-1, keepdims=True)
        return out

    order = list(range(len(texts)))
    shuffled = order[:]
    random.Random(seed).shuffle(shuffled)
    single = probs([[i] for i in order])
    b32 = probs([order[i:i + 32] for i in range(0, len(order), 32)])
    s32 = probs([shuffled[i:i + 32] for i in range(0, len(shuffled), 32)])
    return {"texts": len(texts),
            "flips_b1_vs_b32": int((single.argmax(-1) != b32.argmax(-1)).sum()),
            "flips_b32_vs_shuffled_b32": int((b32.argmax(-1) != s32.argmax(-1)).sum()),
            "max_abs_prob_diff": float(max(np.abs(single - b32).max(), np.abs(b32 - s32).max()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a `slimship run` output dir (teacher/, compress/)")
    parser.add_argument("--data", type=Path, required=True, help="its data dir (validation.csv, test.csv)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--latency-rows", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from slimship.core import artifact
    from slimship.core.data import load_data
    from slimship.core.runtime import Classifier

    teacher, model_dir = args.run / "teacher", args.run / "compress" / "model"
    manifest = artifact.load(model_dir)
    labels = artifact.load(teacher)["labels"]
    max_length = manifest["max_length"]
    splits = load_data(args.data, labels=labels, splits=("validation", "test")).splits
    val, test = splits["validation"], splits.get("test")

    classifier = Classifier(model_dir, threads=args.threads, spinning=False)
    rows = [pytorch_row(teacher, val.texts, val.labels, max_length, args.threads, args.latency_rows)]
    rows += optimum_rows(teacher, args.run / "bench", val.texts, val.labels, max_length, args.threads,
                         args.latency_rows)[1:]
    rows.append({"name": f"slimship run's choice ({manifest.get('chosen', model_dir.name)})",
                 "mb": size_mb(model_dir / "model.onnx"), "logits": classifier.logits})
    for r in rows:
        for name, split in (("validation", val), ("test", test)):
            if split is None:
                continue
            preds = np.concatenate([np.asarray(r["logits"](split.texts[i:i + 32])).argmax(-1)
                                    for i in range(0, len(split.texts), 32)])
            r[f"{name}_accuracy"] = float((preds == np.asarray(split.labels)).mean())
    timed_side_by_side(rows, val.texts, args.latency_rows, args.repeats)
    invariance = batch_invariance(classifier, val.texts + (test.texts if test else []))
    for r in rows:
        del r["logits"]
        r["speedup_vs_pytorch"] = r["throughput_rows_s"] / rows[0]["throughput_rows_s"]
        r["speedup_vs_optimum_int8"] = r["throughput_rows_s"] / rows[1]["throughput_rows_s"]

    lines = ["| model | validation | test | MB | batch-1 p50 ms | batch-32 rows/s (min-max) | × PyTorch FP32 | "
             "× optimum INT8 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[k] * 100:.2f}%" if k in r else "n/a" for k in ("validation_accuracy", "test_accuracy")]
        lines.append(f"| {r['name']} | {cells[0]} | {cells[1]} | {r['mb']:.1f} | {r['latency_ms_p50']:.2f} | "
                     f"{r['throughput_rows_s']:.0f} ({r['throughput_min']:.0f}-{r['throughput_max']:.0f}) | "
                     f"{r['speedup_vs_pytorch']:.1f}× | {r['speedup_vs_optimum_int8']:.2f}× |")
    print("\n".join(lines))
    print(f"batch invariance of the choice over {invariance['texts']} texts: "
          f"{invariance['flips_b1_vs_b32']} flips batch 1 vs 32, {invariance['flips_b32_vs_shuffled_b32']} "
          f"flips 32 vs shuffled 32, max |Δ prob| {invariance['max_abs_prob_diff']:.2e}")
    (args.run / "bench.json").write_text(json.dumps(
        {"rows": rows, "batch_invariance": invariance, "threads": args.threads, "repeats": args.repeats},
        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
