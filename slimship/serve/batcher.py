"""Adaptive batching with admission control, for one ONNX session per worker process.

Continuous batching: one inference thread runs a batch at a time; requests arriving meanwhile queue up, and the
next batch takes everything waiting (up to ``max_batch_size`` texts). An idle server therefore answers a lone
request at once (no fixed wait to "fill" a batch), and a busy one forms larger batches by itself.

Why not BentoML's own batching (``@bentoml.api(batchable=True)``): its queue is unbounded, it has no per-request
options (the last caller's keyword arguments apply to the whole batch), and its latency model shed 73% of requests
at 32 clients on a 2-core box. Here a request is refused *at admission*, before it waits, when the predicted
queue wait (the running batch plus the full batches queued ahead of it, at a measured per-batch cost) exceeds
``max_latency_ms``, or the queue (with the running batch) would hold more than ``max_queue`` texts: the client gets a fast 503 with Retry-After, accepted
requests keep a bounded latency, and memory stays bounded by the queue size.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


SHED_PRIORITY_S = 1.0   # after the last shed request, batches stay on the low-priority thread this long


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux schedules threads one by one; raising needs no
    privilege). For the inference thread: when the cores are short, the event loop that answers -- and sheds --
    requests goes first, and the batch cost model sees the slower inference and admits less."""
    # Only Linux schedules threads by their own nice value; elsewhere a thread id is not a valid PRIO_PROCESS.
    if nice > 0 and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass


class Overloaded(Exception):
    """The queue is too long to meet the latency bound; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Job:
    texts: Sequence[str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class AdaptiveBatcher:
    def __init__(self, infer: Callable[[list[str]], np.ndarray], *, max_batch_size: int, max_latency_ms: int,
                 max_queue: int, seconds_per_text: float = 0.002, seconds_per_batch: float = 0.0,
                 infer_nice: int = 0, low_priority_infer: Callable[[list[str]], np.ndarray] | None = None):
        self.infer = infer                      # texts -> logits (rows in order); runs on the inference thread
        # What the low-priority thread runs instead, if given: the same answers, computed on that thread alone.
        # Helper threads (ONNX Runtime's, a data-parallel pool) would keep their normal priority.
        self.low_priority_infer = low_priority_infer or infer
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000
        self.max_queue = max_queue
        # Cost model of one batch of n texts: seconds_per_batch + n * seconds_per_text, refitted on recent batches
        # (a fixed cost per call plus a cost per text: extrapolating a small batch's cost per text to a large
        # queue would overestimate the wait, since batching amortises the fixed part).
        self.seconds_per_text = seconds_per_text
        self.seconds_per_batch = seconds_per_batch
        self.samples: deque[tuple[int, float]] = deque(maxlen=64)
        self.queued_texts = 0
        self.running_texts = 0
        self.shed = 0
        self._queue: deque[_Job] = deque()
        # Two inference threads, used one at a time: batches run on the normal-priority one, and while the
        # server sheds (and for SHED_PRIORITY_S after), on one with ``infer_nice`` added. Under overload the
        # cores are short, and the event loop must go first or it cannot even refuse: on 2 cores at 4x capacity,
        # 503s took 1.6 s (p50) and 1,373 requests timed out with one thread, 2-3 ms and none with the low one.
        # At normal load nothing sheds and inference keeps its full share (the low one alone cost 10% of the
        # throughput at 32 clients).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimship-infer")
        self._low_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimship-infer-low",
                                              initializer=lower_priority, initargs=(infer_nice,)) \
            if infer_nice > 0 else self._thread
        self.last_shed = -math.inf
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def batch_seconds(self, n: int) -> float:
        return self.seconds_per_batch + n * self.seconds_per_text if n > 0 else 0.0

    def predicted_wait(self) -> float:
        """Seconds a request arriving now would wait before its own batch starts: the running batch (counted
        whole, to be safe) plus every full batch queued ahead of it. Texts queued beyond the last full batch
        share the request's own batch, so they are not a wait: a queue shorter than one batch never sheds,
        since refusing a request that joins the next batch anyway would make nobody's answer come sooner."""
        full_batches_ahead = self.queued_texts // self.max_batch_size
        return self.batch_seconds(self.running_texts) + full_batches_ahead * self.batch_seconds(self.max_batch_size)

    def overloaded(self) -> int | None:
        """Retry-After seconds if a new request would be shed now, else None (cheap: for early shedding)."""
        wait = self.predicted_wait()
        if wait > self.max_latency or self.queued_texts + self.running_texts >= self.max_queue:
            self.last_shed = time.monotonic()
            return max(1, math.ceil(wait))
        return None

    def record(self, n: int, seconds: float) -> None:
        """Refit the cost model on the latest batches (least squares when their sizes differ)."""
        self.samples.append((n, seconds))
        sizes = np.array([s[0] for s in self.samples], dtype=np.float64)
        times = np.array([s[1] for s in self.samples])
        if len(self.samples) >= 4 and sizes.min() != sizes.max():
            per_batch, per_text = np.linalg.lstsq(np.stack([np.ones_like(sizes), sizes], 1), times, rcond=None)[0]
            if per_text > 0:
                self.seconds_per_batch, self.seconds_per_text = max(0.0, float(per_batch)), float(per_text)
                return
        self.seconds_per_text = 0.8 * self.seconds_per_text + 0.2 * max(0.0, seconds - self.seconds_per_batch) / n

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """Logits for ``texts``, computed in a shared batch; raises Overloaded instead of waiting too long.

        An idle server admits any request: refusing it could not make anyone's answer come sooner."""
        wait = self.predicted_wait()
        if self.queued_texts + self.running_texts + len(texts) > self.max_queue or wait > self.max_latency:
            self.shed += 1
            self.last_shed = time.monotonic()
            raise Overloaded(f"server overloaded: predicted queue wait {wait * 1000:.0f} ms exceeds "
                             f"{self.max_latency * 1000:.0f} ms; retry later", retry_after=max(1, math.ceil(wait)))
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run())
        job = _Job(texts, loop.create_future())
        self._queue.append(job)
        self.queued_texts += len(texts)
        self._wakeup.set()
        return await job.future

    def _take_batch(self) -> list[_Job]:
        jobs = [self._queue.popleft()]          # the first job always goes, even if larger than a batch
        size = len(jobs[0].texts)
        while self._queue and size + len(self._queue[0].texts) <= self.max_batch_size:
            job = self._queue.popleft()
            jobs.append(job)
            size += len(job.texts)
        self.queued_texts -= size
        return jobs

    def _infer_chunked(self, infer: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
        parts = [infer(texts[i:i + self.max_batch_size]) for i in range(0, len(texts), self.max_batch_size)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            jobs = [j for j in self._take_batch() if not j.future.done()]   # done = client went away
            texts = [t for job in jobs for t in job.texts]
            if not texts:
                continue
            self.running_texts = len(texts)
            start = time.perf_counter()
            try:
                shedding = time.monotonic() - self.last_shed < SHED_PRIORITY_S
                thread, infer = (self._low_thread, self.low_priority_infer) if shedding else (self._thread, self.infer)
                logits = await loop.run_in_executor(thread, self._infer_chunked, infer, texts)
            except Exception as e:  # an inference failure fails this batch's requests, not the server
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            finally:
                self.running_texts = 0
            self.record(len(texts), time.perf_counter() - start)
            offset = 0
            for job in jobs:
                n = len(job.texts)
                if not job.future.done():
                    job.future.set_result(logits[offset:offset + n])
                offset += n

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until queued work is done (graceful shutdown), then stop the inference thread."""
        deadline = time.monotonic() + timeout
        while (self._queue or self.running_texts) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
        self._thread.shutdown(wait=False)
        self._low_thread.shutdown(wait=False)
