"""Seconds per stage per model family on tiny random checkpoints (tests/family_models.py).

    .venv/bin/python bench/bench_families.py [family ...] [--rows 256]

Each family runs the chain train -> distill (2 of 4 blocks) -> export -> dynamic INT8 -> static INT8 ->
weight-only 4-bit (MatMulNBits) on the demo data, then times batch-32 inference through the runtime on 256
mixed-length validation texts (so padding is in play: decoders read the last non-pad token). Prints one
table; numbers go in
docs/BENCHMARKS.md. The models are tiny, so this times each stage's fixed costs (tokenizer and model loading,
Trainer set-up, export tracing, calibration), not a real model's compute.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from family_models import FAMILIES, build_tiny  # noqa: E402

STAGES = ("build", "train", "distill", "export", "dynamic", "static", "int4", "runtime", "runtime_int4")


def chain(family: str, root: Path, rows: int) -> dict[str, float]:
    from slimship.compress.config import DistillConfig, ExportConfig, QuantizeConfig
    from slimship.compress.distill import distill
    from slimship.compress.export import export
    from slimship.compress.quantize import quantize
    from slimship.core.config import DataConfig
    from slimship.core.runtime import Classifier
    from slimship.train.config import TrainConfig
    from slimship.train.stage import train

    data = DataConfig(str(ROOT / "examples" / "sentiment"), max_train_rows=rows, max_eval_rows=64)
    cfg = dict(epochs=1, batch_size=16, learning_rate=1e-3, max_length=48, patience=1, quiet=True)
    seconds: dict[str, float] = {}

    def timed(name, fn):
        started = time.perf_counter()
        result = fn()
        seconds[name] = time.perf_counter() - started
        return result

    checkpoint = timed("build", lambda: build_tiny(family, root / "checkpoint"))
    teacher = timed("train", lambda: train(str(checkpoint), root / "teacher", data, TrainConfig(**cfg)))
    student = timed("distill", lambda: distill(teacher, root / "student", data, DistillConfig(**cfg, layers=2)))
    onnx = timed("export", lambda: export(student, root / "onnx", data, ExportConfig()))
    timed("dynamic", lambda: quantize(onnx, root / "dynamic", data, QuantizeConfig(mode="dynamic")))
    timed("static", lambda: quantize(onnx, root / "static", data, QuantizeConfig(mode="static", calibration=64)))
    timed("int4", lambda: quantize(onnx, root / "int4", data, QuantizeConfig(mode="weight_only", weight_bits=4)))
    import csv

    with open(ROOT / "examples" / "sentiment" / "validation.csv", newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:256]
    for name, path in (("runtime", onnx), ("runtime_int4", root / "int4")):
        clf = Classifier(path, threads=1)
        clf.logits(texts[:32])
        timed(name, lambda: [clf.logits(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--rows", type=int, default=256, help="training rows")
    args = parser.parse_args()
    table = {}
    for family in args.families:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                table[family] = chain(family, Path(tmp), args.rows)
            except Exception as e:  # one family's failure must not hide the others' numbers
                print(f"{family}: FAILED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                      file=sys.stderr)
        print(f"done {family}", file=sys.stderr, flush=True)
    print(f"\n| family | {' | '.join(STAGES)} | total |")
    print("|---" * (len(STAGES) + 2) + "|")
    for family, seconds in table.items():
        cells = [f"{seconds[s]:.2f}" if s.startswith("runtime") else f"{seconds[s]:.1f}" for s in STAGES]
        print(f"| {family} | {' | '.join(cells)} | {sum(seconds.values()):.1f} |")
    print("\n(seconds; 'runtime' / 'runtime_int4' = 256 mixed-length rows through the FP32 / weight-only 4-bit "
          "ONNX runtime at batch 32, one thread)")


if __name__ == "__main__":
    main()
