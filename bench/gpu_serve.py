"""GPU serving check: the path the GPU image serves through (onnxruntime-gpu, CUDA provider first), against the
CPU provider on the same ONNX artifacts. Skips cleanly where ONNX Runtime has no CUDA provider.

    python bench/gpu_serve.py MODEL_DIR [MODEL_DIR ...] [--data examples/sentiment] [--cpu-threads 2]

For each artifact:
- providers: what the session the service would open actually got, and which ONNX ops ran on which provider
  (from one profiled pass: a node ONNX Runtime could not place on CUDA runs on the CPU, with copies between);
- parity: labels and the largest probability difference, CUDA against CPU, over every text in --data;
- batch invariance on CUDA: label flips between batch 1, file-order batches of 32 and shuffled batches of 32;
- speed: rows/s at batch 32 and batch-1 median latency, CUDA and CPU (--cpu-threads threads) side by side.
Prints a markdown table and writes --json if given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_run import batch_invariance  # noqa: E402


def probabilities(classifier, texts: list[str], batch: int = 32) -> np.ndarray:
    out = []
    for start in range(0, len(texts), batch):
        logits = np.asarray(classifier.logits(texts[start:start + batch]), dtype=np.float64)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        out.append(e / e.sum(-1, keepdims=True))
    return np.concatenate(out)


def placement(classifier) -> dict[str, dict[str, int]]:
    """{provider: {op type: nodes run}} from one profiled pass over a short batch, on the providers the
    classifier's own session got."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = f"/tmp/gpu_serve_{os.getpid()}"
    session = ort.InferenceSession(str(classifier.path / "model.onnx"), options,
                                   providers=classifier.session.get_providers())
    feeds = classifier.encode(["a short text to place the nodes", "another one"])
    session.run(None, {name: feeds[name] for name in (i.name for i in session.get_inputs())})
    trace = json.loads(Path(session.end_profiling()).read_text())
    ops: dict[str, Counter] = {}
    for event in trace:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args and event.get("name", "").endswith("_kernel_time"):
            ops.setdefault(args["provider"], Counter())[args.get("op_name", "?")] += 1
    return {provider: dict(counts) for provider, counts in ops.items()}


def speed(classifier, texts: list[str], repeats: int) -> tuple[float, float]:
    """(rows/s at batch 32, median ms of batch 1 over the first 200 texts)."""
    classifier.logits(texts[:32])
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(texts), 32):
            classifier.logits(texts[start:start + 32])
        rates.append(len(texts) / (time.perf_counter() - started))
    latencies = []
    for text in texts[:200]:
        started = time.perf_counter()
        classifier.logits([text])
        latencies.append((time.perf_counter() - started) * 1000)
    return statistics.median(rates), statistics.median(latencies)


def check(model_dir: Path, texts: list[str], cpu_threads: int, repeats: int) -> dict:
    from slimship.core.runtime import Classifier

    # The CPU classifier opens its per-thread sessions on first use: SLIMSHIP_DEVICE must stay set while it runs.
    os.environ["SLIMSHIP_DEVICE"] = "cpu"
    cpu = Classifier(model_dir, threads=cpu_threads)
    p_cpu = probabilities(cpu, texts)
    cpu_rows_s, cpu_b1_ms = speed(cpu, texts, repeats)
    os.environ.pop("SLIMSHIP_DEVICE", None)
    gpu = Classifier(model_dir)
    row = {"model": str(model_dir), "mb": round((model_dir / "model.onnx").stat().st_size / 1e6, 1),
           "providers": gpu.session.get_providers(), "placement": placement(gpu)}
    p_gpu = probabilities(gpu, texts)
    row["parity"] = {"texts": len(texts), "label_agreement": float((p_gpu.argmax(-1) == p_cpu.argmax(-1)).mean()),
                     "max_abs_prob_diff": float(np.abs(p_gpu - p_cpu).max())}
    row["gpu_batch_invariance"] = batch_invariance(gpu, texts)
    row["gpu_rows_s"], row["gpu_b1_ms"] = speed(gpu, texts, repeats)
    row["cpu_rows_s"], row["cpu_b1_ms"] = cpu_rows_s, cpu_b1_ms
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="ONNX artifact dirs (export, quantize or compress)")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "sentiment",
                        help="a data dir: the text column of its validation, test and train CSVs is scored")
    parser.add_argument("--cpu-threads", type=int, default=2, help="ONNX Runtime threads for the CPU rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import onnxruntime as ort
    from slimship.core.data import read_texts

    available = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, providers available: {available}")
    if "CUDAExecutionProvider" not in available:
        print("SKIP: this onnxruntime has no CUDA provider (install onnxruntime-gpu where a GPU is present)")
        return 0
    texts = []
    for split in ("validation", "test", "train"):
        if (args.data / f"{split}.csv").exists():
            texts += read_texts(args.data / f"{split}.csv", "text")[0]
    random.Random(0).shuffle(texts)
    rows = [check(model, texts, args.cpu_threads, args.repeats) for model in args.models]
    print("\n| model | MB | session providers | label agreement CUDA vs CPU | max prob diff | CUDA flips b1/b32/shuffled"
          " | CUDA rows/s b32 | CPU rows/s b32 | CUDA b1 ms | CPU b1 ms |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        inv = r["gpu_batch_invariance"]
        print(f"| {r['model']} | {r['mb']} | {','.join(p.replace('ExecutionProvider', '') for p in r['providers'])}"
              f" | {r['parity']['label_agreement'] * 100:.2f}% | {r['parity']['max_abs_prob_diff']:.1e}"
              f" | {inv['flips_b1_vs_b32']}/{inv['flips_b32_vs_shuffled_b32']} | {r['gpu_rows_s']:.0f}"
              f" | {r['cpu_rows_s']:.0f} | {r['gpu_b1_ms']:.2f} | {r['cpu_b1_ms']:.2f} |")
    for r in rows:
        print(f"\nop placement, {r['model']}:")
        for provider, ops in r["placement"].items():
            print(f"  {provider}: {sum(ops.values())} nodes: {dict(sorted(ops.items(), key=lambda kv: -kv[1]))}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
