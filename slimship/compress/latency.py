"""Speed of an ONNX artifact on this machine, through the serving runtime (tokenization included).

    speed("runs/student-int8", texts, threads=2) -> {"latency_ms_p50", "latency_ms_p95", "throughput_rows_s", ...}

Batch-1 latency: texts one at a time, as an interactive service sees them (p50/p95 over ``latency_rows``
calls after a warm-up). Batch-32 throughput: consecutive batches of 32 texts in the order given, as batch
scoring sees them. Threads are explicit and recorded: ONNX Runtime's own default counts host cores, not the
cores this process may use, and a number without its thread count is not comparable.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def speed(artifact_dir: str | Path, texts: Sequence[str], *, threads: int | None = None, latency_rows: int = 200,
          throughput_rows: int = 512, batch_size: int = 32, warmup: int = 10, verify: bool = True) -> dict[str, Any]:
    from slimship.core.runtime import Classifier, default_threads

    threads = threads or default_threads()
    clf = Classifier(artifact_dir, threads=threads, verify=verify)
    texts = list(texts)
    if not texts:
        raise ValueError("speed() needs at least one text")
    single = [texts[i % len(texts)] for i in range(latency_rows)]
    for text in single[:warmup]:
        clf.logits([text])
    timings = []
    for text in single:
        start = time.perf_counter()
        clf.logits([text])
        timings.append(time.perf_counter() - start)

    rows = [texts[i % len(texts)] for i in range(max(throughput_rows, batch_size))]
    clf.logits(rows[:batch_size])  # warm-up at this batch shape
    start = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        clf.logits(rows[i:i + batch_size])
    elapsed = time.perf_counter() - start
    ms = np.array(timings) * 1000
    return {
        "latency_ms_p50": round(float(np.percentile(ms, 50)), 3),
        "latency_ms_p95": round(float(np.percentile(ms, 95)), 3),
        "throughput_rows_s": round(len(rows) / elapsed, 1),
        "batch_size": batch_size,
        "threads": threads,
        "latency_rows": latency_rows,
        "throughput_rows": len(rows),
    }
