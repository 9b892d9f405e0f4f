"""Batch scoring, side by side on SST-2 train texts: rows/s and peak RSS.

    python bench/bench_score.py [--work /tmp/slimship-bench-score] [--pipeline-rows 5000] [--memory-rows 1000000]

Rows (each in its own fresh process, so peak RSS is that process's own, read with os.wait4):
  1. slimship score, compressed model: the MiniLM teacher distilled to 3 layers (compress/distill.py), exported
     (compress/export.py) and dynamically INT8-quantized (compress/quantize.py)
  2. slimship score, the same without the tokenize-ahead thread (--no-prefetch): does overlapping help?
  3. slimship score, the teacher exported to ONNX and INT8-quantized the same way (no distillation)
  4. Hugging Face pipeline("text-classification") on the PyTorch FP32 teacher (first --pipeline-rows texts)
  5. memory check: row 1's command on the texts repeated to --memory-rows rows; peak RSS vs row 1's

The teacher is MiniLM (all-MiniLM-L6-v2) fine-tuned briefly on SST-2 (train.stage.train). Artifacts are built
once into --work and reused. Results go to stdout as a Markdown table and to --work/results.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "datasets" / "sst2"
THREADS = str(len(os.sched_getaffinity(0)))


def build_models(work: Path, train_rows: int, distill_rows: int) -> dict[str, Path]:
    """Teacher (PyTorch FP32), teacher INT8 ONNX, compressed (3-layer distilled INT8 ONNX); cached in work."""
    from dataclasses import replace

    from slimship.compress.config import DistillConfig, QuantizeConfig
    from slimship.compress.distill import distill
    from slimship.compress.export import export
    from slimship.compress.quantize import quantize
    from slimship.core.config import DataConfig
    from slimship.train.config import TrainConfig
    from slimship.train.stage import train

    paths = {name: work / name for name in ("teacher", "teacher-onnx", "teacher-int8", "student", "student-onnx",
                                            "student-int8")}
    data = DataConfig(path=str(SST2), max_train_rows=train_rows, max_eval_rows=872)
    common = dict(max_length=64, epochs=1, batch_size=32, quiet=True, patience=0)
    if not (paths["teacher"] / "manifest.json").exists():
        train("minilm", paths["teacher"], data, TrainConfig(learning_rate=5e-5, **common))
    if not (paths["student"] / "manifest.json").exists():
        distill(paths["teacher"], paths["student"], replace(data, max_train_rows=distill_rows),
                DistillConfig(layers=3, learning_rate=1e-4, **common))
    for source in ("teacher", "student"):
        if not (paths[f"{source}-onnx"] / "manifest.json").exists():
            export(paths[source], paths[f"{source}-onnx"])
        if not (paths[f"{source}-int8"] / "manifest.json").exists():
            quantize(paths[f"{source}-onnx"], paths[f"{source}-int8"], DataConfig(path=str(SST2), max_eval_rows=872),
                     QuantizeConfig(mode="dynamic"))
    return paths


def write_texts(src: Path, dest: Path, rows: int | None) -> int:
    """SST-2 train texts (text column only), cut to or repeated up to ``rows``."""
    with open(src, newline="", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    rows = rows or len(texts)
    if dest.exists():
        return rows
    with open(dest, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        for i in range(rows):
            writer.writerow([texts[i % len(texts)]])
    return rows


def measured_rss(cmd: list[str]) -> dict:
    """Run cmd in a fresh process: wall seconds, stdout, and that process's own peak RSS (os.wait4)."""
    env = {**os.environ, "SLIMSHIP_THREADS": THREADS, "OMP_NUM_THREADS": THREADS, "TOKENIZERS_PARALLELISM": "true"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out.strip()}


def logged(result: dict, name: str) -> dict:
    print(f"# {name}: {json.dumps({k: v for k, v in result.items() if k != 'stdout'})}", flush=True)
    return result


def slimship_score(model: Path, source: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "slimship", "score", "--model", str(model), "--input", str(source),
           "--output", str(out), "--overwrite", "--quiet", *extra]
    result = measured_rss(cmd)
    summary = result["stdout"].splitlines()[-1]
    # "... ; 12.3 s, 5,432 rows/s (local) -> ..." : the scorer's own rows/s (model load excluded)
    result["rows_per_s"] = float(summary.split(" s, ")[1].split(" rows/s")[0].replace(",", ""))
    result["rows"] = int(summary.split("rows in ")[1].split(", rows out")[0].replace(",", ""))
    return logged(result, f"{model.name} on {source.name} {' '.join(extra)}")


def pipeline_worker(model: str, source: str, rows: int, batch_size: int) -> None:
    """Child process: score the first ``rows`` texts with transformers' pipeline on the PyTorch model."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(int(THREADS))
    with open(source, newline="", encoding="utf-8") as f:
        texts = [r["text"] for _, r in zip(range(rows), csv.DictReader(f))]
    classify = pipeline("text-classification", model=model, tokenizer=model, device=-1)
    classify(texts[:32], batch_size=batch_size, truncation=True, max_length=64)   # warm-up
    started = time.perf_counter()
    results = classify(texts, batch_size=batch_size, truncation=True, max_length=64)
    seconds = time.perf_counter() - started
    assert len(results) == len(texts)
    print(json.dumps({"rows": len(texts), "rows_per_s": len(texts) / seconds}))


def accuracy(model: Path) -> float | None:
    m = json.loads((model / "manifest.json").read_text())
    for key in ("quantization", "metrics"):
        block = m.get(key) or {}
        for candidate in (block.get("after", {}), block.get("validation", {}), block):
            if isinstance(candidate, dict) and "accuracy" in candidate:
                return candidate["accuracy"]
    return None


def memory_check(model: Path, work: Path, memory_rows: int) -> None:
    """Peak RSS of the same scoring command on the 67k texts and on them repeated to ``memory_rows``."""
    texts = work / "sst2-train-texts.csv"
    n = write_texts(SST2 / "train.csv", texts, None)
    big = work / f"sst2-train-texts-{memory_rows}.csv"
    write_texts(SST2 / "train.csv", big, memory_rows)
    small_run = slimship_score(model, texts, work / "mem-small.parquet")
    big_run = slimship_score(model, big, work / "mem-big.parquet")
    print(f"| rows | rows/s | peak RSS MB |\n|---|---|---|")
    for r in (small_run, big_run):
        print(f"| {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    print(f"\nmodel {model}: peak RSS at {memory_rows:,} rows / at {n:,} rows = "
          f"{big_run['peak_rss_mb'] / small_run['peak_rss_mb']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/slimship-bench-score")
    parser.add_argument("--train-rows", type=int, default=4000, help="SST-2 rows to fine-tune the teacher on")
    parser.add_argument("--distill-rows", type=int, default=1500, help="SST-2 rows to distil the student on")
    parser.add_argument("--pipeline-rows", type=int, default=5000)
    parser.add_argument("--pipeline-batch-size", type=int, default=64)
    parser.add_argument("--memory-rows", type=int, default=1_000_000, help="0: skip the memory check")
    parser.add_argument("--memory-only", metavar="MODEL",
                        help="only the memory check: MODEL on the 67k texts and on --memory-rows rows")
    parser.add_argument("--pipeline-worker", nargs=3, metavar=("MODEL", "SOURCE", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline_worker:
        model, source, rows = args.pipeline_worker
        return pipeline_worker(model, source, int(rows), args.pipeline_batch_size)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.memory_only:
        return memory_check(Path(args.memory_only), work, args.memory_rows)
    models = build_models(work, args.train_rows, args.distill_rows)
    texts = work / "sst2-train-texts.csv"
    n = write_texts(SST2 / "train.csv", texts, None)
    big = work / f"sst2-train-texts-{args.memory_rows}.csv"
    if args.memory_rows:
        write_texts(SST2 / "train.csv", big, args.memory_rows)

    rows = []
    compressed = slimship_score(models["student-int8"], texts, work / "out-compressed.parquet")
    rows.append(("slimship score, compressed (MiniLM 3-layer distilled, INT8 dynamic ONNX)", models["student-int8"],
                 compressed))
    rows.append(("slimship score, compressed, --no-prefetch", models["student-int8"],
                 slimship_score(models["student-int8"], texts, work / "out-noprefetch.parquet", "--no-prefetch")))
    rows.append(("slimship score, teacher INT8 (MiniLM 6-layer, INT8 dynamic ONNX)", models["teacher-int8"],
                 slimship_score(models["teacher-int8"], texts, work / "out-teacher-int8.parquet")))
    torch_run = measured_rss([sys.executable, __file__, "--pipeline-batch-size", str(args.pipeline_batch_size),
                              "--pipeline-worker", str(models["teacher"]), str(texts), str(args.pipeline_rows)])
    torch_run.update(json.loads(torch_run["stdout"].splitlines()[-1]))
    logged(torch_run, "pytorch pipeline")
    rows.append((f"HF pipeline, PyTorch FP32 teacher (first {args.pipeline_rows:,} rows, batch "
                 f"{args.pipeline_batch_size})", models["teacher"], torch_run))
    if args.memory_rows:
        memory = slimship_score(models["student-int8"], big, work / "out-big.parquet")
        rows.append((f"slimship score, compressed, {args.memory_rows:,} rows (memory check)",
                     models["student-int8"], memory))

    base = torch_run["rows_per_s"]
    print(f"\nSST-2 train texts: {n:,} rows; {THREADS} threads; peak RSS = the scoring process's own\n")
    print("| run | model accuracy (SST-2 val) | rows | rows/s | × PyTorch pipeline | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, model, r in rows:
        acc = accuracy(model)
        print(f"| {name} | {acc:.3f} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['rows_per_s'] / base:.1f}× | "
              f"{r['peak_rss_mb']:,.0f} |" if acc is not None else
              f"| {name} | - | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['rows_per_s'] / base:.1f}× | "
              f"{r['peak_rss_mb']:,.0f} |")
    if args.memory_rows:
        print(f"\nmemory: peak RSS at {args.memory_rows:,} rows / at {n:,} rows = "
              f"{memory['peak_rss_mb'] / compressed['peak_rss_mb']:.2f}")
    (work / "results.json").write_text(json.dumps(
        [{"run": name, "model": str(model), "accuracy": accuracy(model), **{k: v for k, v in r.items()
                                                                            if k != "stdout"}}
         for name, model, r in rows], indent=2))


if __name__ == "__main__":
    main()
