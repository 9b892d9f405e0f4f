"""Which transfer set and loss make the best student from a few thousand labelled rows (issue 14).

One teacher, one student depth, several ways to distil it, each measured on validation and test with the same
teacher, so the differences are the methods' own:

    python bench/bench_transfer.py --teacher runs/b14/teacher --data runs/b14/sst2-5k --out runs/b14/transfer \
        --variants base,base-long,aug2,aug2-hidden --epochs 3

    variant       transfer set                               loss
    base          the labelled rows                          logits (alpha 0.5)
    base-a1       the labelled rows                          logits only (alpha 1: no label loss)
    base-long     the labelled rows, 3x the epochs           logits: as many steps as aug2 takes
    aug2          + 2 augmented copies (substitute, mask)    logits
    aug4          + 4 augmented copies                       logits
    aug2-drop     + 2 copies (substitute, drop)              logits
    aug2-hidden   + 2 augmented copies                       logits + hidden-state MSE (weight 1)
    hidden        the labelled rows                          logits + hidden-state MSE
    attn          the labelled rows                          logits + attention KL (weight 1)
    hidden-attn   the labelled rows                          logits + hidden-state MSE + attention KL

Early stopping is off (patience 0, best checkpoint kept) so every variant trains for the same epochs. Results
go to OUT/results.json and a markdown table on stdout (docs/BENCHMARKS.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

VARIANTS = {
    "base": dict(augment=0),
    "base-a1": dict(augment=0, alpha=1.0),
    "base-long": dict(augment=0, epochs_factor=3),
    "aug2": dict(augment=2, augment_methods="substitute,mask"),
    "aug4": dict(augment=4, augment_methods="substitute,mask"),
    "aug2-drop": dict(augment=2, augment_methods="substitute,drop"),
    "aug2-hidden": dict(augment=2, augment_methods="substitute,mask", hidden_weight=1.0),
    "hidden": dict(augment=0, hidden_weight=1.0),
    "attn": dict(augment=0, attention_weight=1.0),
    "hidden-attn": dict(augment=0, hidden_weight=1.0, attention_weight=1.0),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="base,base-long,aug2,aug2-hidden")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from slimship.compress.config import DistillConfig
    from slimship.compress.distill import distill
    from slimship.core import artifact
    from slimship.core.config import DataConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    teacher = artifact.load(args.teacher)["metrics"]
    for name in args.variants.split(","):
        options = dict(VARIANTS[name])
        factor = options.pop("epochs_factor", 1)
        cfg = DistillConfig(layers=args.layers, epochs=args.epochs * factor, learning_rate=args.learning_rate,
                            max_length=args.max_length, patience=0, seed=args.seed, quiet=True, **options)
        started = time.time()
        student = distill(args.teacher, out / name, DataConfig(args.data), cfg)
        seconds = time.time() - started
        manifest = artifact.load(student)
        results[name] = {"options": {**options, "epochs": cfg.epochs}, "seconds": round(seconds, 1),
                         "transfer_rows": manifest["transfer"]["labelled"] + manifest["transfer"]["augmented"],
                         **{split: manifest["metrics"][split]["accuracy"] for split in ("validation", "test")
                            if split in manifest["metrics"]}}
        results["teacher"] = {split: teacher[split]["accuracy"] for split in ("validation", "test") if split in teacher}
        results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        results_file.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)

    t = results["teacher"]
    print(f"teacher: validation {t['validation'] * 100:.2f}%, test {t.get('test', float('nan')) * 100:.2f}%")
    print("| variant | options | rows per epoch | validation (vs teacher) | test (vs teacher) | time |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in results.items():
        if name in ("teacher", "machine"):
            continue
        cells = [f"{r[s] * 100:.2f}% ({(r[s] - t[s]) * 100:+.2f})" if s in r else "n/a" for s in ("validation", "test")]
        print(f"| {name} | {r['options']} | {r['transfer_rows']} | {cells[0]} | {cells[1]} | {r['seconds']:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
