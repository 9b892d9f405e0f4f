"""Teacher vs distilled vs pruned on SST-2, in PyTorch on this CPU, in one run.

    python bench/bench_compress_torch.py --data ../shared/datasets/sst2 --train-rows 3000

Trains a minilm teacher on a sample of the training rows, distils it into a 3-layer student twice (teacher logits
cached once vs computed online in every step, to time the two), prunes the student (1/3 of the heads, 1/2 of the
FFN channels, recovery distilled from the teacher), then measures each model on the full validation split:
accuracy, parameters, MACs per 128-token row, PyTorch CPU latency at batch 1 (p50/p95 over single sentences) and
throughput at batch 32. Prints a Markdown table and writes the numbers to OUT/results.json.

    python bench/bench_compress_torch.py --measure teacher=DIR student=DIR pruned=DIR

measures artifacts made earlier (e.g. by the SST-2 chain test) instead of training them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def latency(model, tokenizer, texts: list[str], max_length: int, batch1_rows: int) -> dict:
    """p50/p95 ms at batch 1 over single sentences, and rows/s at batch 32 over all texts (in their order)."""
    import torch

    model.eval()
    with torch.inference_mode():
        def run(batch_texts):
            batch = tokenizer(batch_texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            return model(**batch).logits

        for text in texts[:10]:  # warm-up
            run([text])
        times = []
        for text in texts[:batch1_rows]:
            start = time.perf_counter()
            run([text])
            times.append((time.perf_counter() - start) * 1000)
        run(texts[:32])
        start = time.perf_counter()
        for i in range(0, len(texts), 32):
            run(texts[i:i + 32])
        seconds = time.perf_counter() - start
    times.sort()
    return {"batch1_p50_ms": statistics.median(times), "batch1_p95_ms": times[int(0.95 * (len(times) - 1))],
            "batch32_rows_per_s": len(texts) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "sst2"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-compress-torch"))
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch1-rows", type=int, default=200)
    parser.add_argument("--measure", nargs="+", metavar="NAME=DIR",
                        help="only measure these existing artifacts (no training)")
    args = parser.parse_args()

    out = Path(args.out)
    timings = {}

    def timed(name, fn, *a, **kw):
        start = time.time()
        result = fn(*a, **kw)
        timings[name] = round(time.time() - start, 1)
        print(f"[bench] {name}: {timings[name]} s", file=sys.stderr, flush=True)
        return result

    out.mkdir(parents=True, exist_ok=True)
    if args.measure:
        models = [tuple(item.split("=", 1)) for item in args.measure]
    else:
        models = train_chain(args, out, timed)
    measure(args, out, models, timings)


def train_chain(args, out: Path, timed) -> list[tuple[str, Path]]:
    from slimship.compress.config import DistillConfig, PruneConfig
    from slimship.compress.distill import distill
    from slimship.compress.prune import prune
    from slimship.core.config import DataConfig
    from slimship.train.config import TrainConfig
    from slimship.train.stage import train

    data = DataConfig(path=args.data, max_train_rows=args.train_rows)
    common = dict(max_length=args.max_length, quiet=True, patience=0)
    teacher = timed("train teacher", train, "minilm", out / "teacher", data,
                    TrainConfig(epochs=args.epochs, learning_rate=5e-5, **common))
    distill_cfg = dict(layers=3, epochs=args.epochs, learning_rate=1e-4, **common)
    student = timed("distill (teacher logits cached)", distill, teacher, out / "student", data,
                    DistillConfig(teacher_logits="cache", **distill_cfg))
    online = timed("distill (teacher logits online)", distill, teacher, out / "student-online", data,
                   DistillConfig(teacher_logits="online", **distill_cfg))
    pruned = timed("prune + recovery", prune, student, out / "pruned", data,
                   PruneConfig(heads=1 / 3, ffn=0.5, recovery_epochs=args.epochs, learning_rate=5e-5,
                               importance="taylor", teacher=str(teacher), **common))
    return [("teacher (minilm, 6 layers)", teacher), ("distilled (3 layers)", student),
            ("distilled, online logits", online), ("distilled + pruned (1/3 heads, 1/2 FFN)", pruned)]


def measure(args, out: Path, models: list[tuple[str, Path]], timings: dict) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slimship.compress.profile import model_profile
    from slimship.core import artifact
    from slimship.core.data import load_data

    validation = load_data(args.data, splits=("validation",)).splits["validation"]
    rows = []
    for name, path in models:
        manifest = artifact.load(path)
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        # accuracy as the stage measured it (on the validation rows it was given)
        row = {"model": name, "path": str(path), "accuracy": manifest["metrics"]["validation"]["accuracy"],
               "validation_rows": manifest["metrics"]["validation"]["n"],
               **model_profile(model, 128), **latency(model, tokenizer, validation.texts, args.max_length,
                                                      args.batch1_rows)}
        rows.append(row)
        print(f"[bench] measured {name}", file=sys.stderr, flush=True)

    base = rows[0]
    print(f"\nSST-2 validation ({base['validation_rows']} rows for accuracy, {len(validation)} for latency); "
          f"{args.train_rows if not args.measure else 'given'} training rows, {args.epochs:g} epochs, "
          f"max_length {args.max_length}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}\n")
    print("| model | accuracy | Δ pt | params (M) | MACs/row @128 (M) | batch-1 p50 ms | batch-32 rows/s | speed-up b32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['accuracy'] * 100:.2f}% | {(r['accuracy'] - base['accuracy']) * 100:+.2f} | "
              f"{r['parameters'] / 1e6:.1f} | {r['macs'] / 1e6:.0f} | {r['batch1_p50_ms']:.2f} | "
              f"{r['batch32_rows_per_s']:.0f} | {r['batch32_rows_per_s'] / base['batch32_rows_per_s']:.2f}x |")
    print("\nstage times (s):", json.dumps(timings))
    (out / "results.json").write_text(json.dumps({"rows": rows, "timings": timings, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
