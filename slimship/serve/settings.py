"""Serving settings, read once from environment variables (so a container is tuned with `-e`, not a rebuild).

| variable | default | meaning |
|---|---|---|
| SLIMSHIP_MODEL | the bento's pinned tag, else slimship-classifier:latest | model-store tag the service loads |
| SLIMSHIP_WORKERS | cores, at most 4 | server processes, each with its own ONNX session and batcher |
| SLIMSHIP_THREADS | cores / workers | ONNX Runtime threads per worker (a single text: intra-op; a batch: its calls side by side) |
| SLIMSHIP_MAX_BATCH_SIZE | 32 | most texts in one ONNX Runtime call |
| SLIMSHIP_MAX_LATENCY_MS | 500 | a request whose predicted queue wait exceeds this is shed at once (503) |
| SLIMSHIP_MAX_QUEUE | 64 x max batch | most texts waiting in the queue; beyond that, 503 |
| SLIMSHIP_MAX_TEXTS | 256 | most texts in one request (400 beyond) |
| SLIMSHIP_MAX_TEXT_CHARS | 10000 | longest text in characters (400 beyond; tokens past max_length are truncated) |
| SLIMSHIP_MAX_BODY_BYTES | 1000000 | largest request body (413 beyond) |
| SLIMSHIP_TIMEOUT_S | 30 | BentoML's request timeout (504 beyond) |
| SLIMSHIP_INFER_NICE | 10 | while shedding, inference runs at this much lower priority than the event loop (0: never) |
| SLIMSHIP_WARMUP_S | 0 | keep warming up (repeated inference) at least this long before /readyz says ready |

Why these defaults: one worker per core, each running ONNX Runtime on one thread. A worker's HTTP handling is
Python under one GIL and costs about as much CPU per request as a small model's inference, so a single worker
tops out well below what the cores can do: on 2 cores with a 3-layer MiniLM, 2 workers x 1 thread served 1,078
req/s at 32 clients where 1 worker x 2 threads served 628 (docs/BENCHMARKS.md). More than 4 workers is not the
default because each holds its own copy of the model and its own batch queue (smaller batches); set it higher
on big machines after measuring. SLIMSHIP_THREADS=cores lets one request with many texts (a 50-document rerank)
use every core: about 30% faster on 2 cores, for 2-7% of single-text throughput at 32-64 clients
(docs/SERVING.md).
Batches of 32 keep the padding waste and one batch's latency small for sentence-length texts. 500 ms of
predicted wait is well above the wait at normal load, so normal load never sheds, yet an overloaded server
answers 503 fast instead of queueing without bound.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

DEFAULT_MODEL = "slimship-classifier:latest"


def cpu_count() -> int:
    """Cores this process may use (affinity/cgroup-pinned), not the host's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def bento_model_argument() -> str | None:
    """The model tag a bento was built with (`slimship build` passes it as the bento argument "model", which
    BentoML stores in bento.yaml and restores when the bento is served), or None outside a bento."""
    try:
        import bentoml

        return getattr(bentoml.use_arguments(), "model", None)
    except Exception:  # pragma: no cover - an older BentoML without bento arguments
        return None


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value}: must be >= {minimum}")
    return value


@dataclass(frozen=True)
class ServeSettings:
    model: str
    workers: int
    threads: int
    max_batch_size: int
    max_latency_ms: int
    max_queue: int
    max_texts: int
    max_text_chars: int
    max_body_bytes: int
    timeout_s: int
    warmup_s: int
    infer_nice: int

    @classmethod
    def from_env(cls) -> "ServeSettings":
        workers = _int("SLIMSHIP_WORKERS", min(cpu_count(), 4))
        max_batch_size = _int("SLIMSHIP_MAX_BATCH_SIZE", 32)
        return cls(
            model=os.environ.get("SLIMSHIP_MODEL") or bento_model_argument() or DEFAULT_MODEL,
            workers=workers,
            threads=_int("SLIMSHIP_THREADS", max(1, cpu_count() // workers)),
            max_batch_size=max_batch_size,
            max_latency_ms=_int("SLIMSHIP_MAX_LATENCY_MS", 500),
            max_queue=_int("SLIMSHIP_MAX_QUEUE", 64 * max_batch_size),
            max_texts=_int("SLIMSHIP_MAX_TEXTS", 256),
            max_text_chars=_int("SLIMSHIP_MAX_TEXT_CHARS", 10_000),
            max_body_bytes=_int("SLIMSHIP_MAX_BODY_BYTES", 1_000_000),
            timeout_s=_int("SLIMSHIP_TIMEOUT_S", 30),
            warmup_s=_int("SLIMSHIP_WARMUP_S", 0, minimum=0),
            infer_nice=_int("SLIMSHIP_INFER_NICE", 10, minimum=0),
        )

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
