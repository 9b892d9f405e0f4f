"""Spread keep-alive connections evenly over the worker processes.

BentoML's workers share one listening socket, and whichever worker's event loop wakes first accepts every
connection waiting in the backlog. A client that opens its connections in a burst (a load balancer's pool, wrk)
can so land all of them on one worker, which then serves them alone while the other worker idles: four runs of
32 connections on 2 workers put 21/11, 14/18, 32/0 and 19/13 of them on the two, and a 32/0 split serves the
throughput of one worker (626 req/s instead of about 1,150; docs/BENCHMARKS.md).

Each worker counts the clients it served in the last ``window_s`` seconds and publishes that count in a small
shared file, one slot per worker. A worker holding clearly more than its fair share (the total over the
workers, plus a slack) asks half its excess, one client at a time and at most once per ``interval_s``, to
reconnect: ``Connection: close`` on a response, which HTTP/1.1 clients follow by opening a new connection for
their next request.
The new connection goes to whichever worker accepts it first, most often the less busy one, and the counts
settle within a second or two. Nothing else changes: the response is the same, and no request is dropped.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time

import numpy as np

STALE_S = 5.0   # a slot not refreshed for this long belongs to a worker that is gone
OPENED: list[str] = []  # this process's shared files, removed at shutdown (remove_shared_files)


class SharedCounts:
    """One (connections, wall time of the count) pair per worker, in a file every worker maps."""

    def __init__(self, path: str, slots: int, index: int):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < slots * 16:
                os.ftruncate(fd, slots * 16)
            self._map = mmap.mmap(fd, slots * 16)
        finally:
            os.close(fd)
        self.path = path
        self.values = np.frombuffer(self._map, dtype=np.float64).reshape(slots, 2)
        self.index = index

    def publish(self, count: int) -> np.ndarray:
        """Record this worker's count; return the counts of every worker that reported recently."""
        now = time.time()
        self.values[self.index] = (count, now)
        return self.values[self.values[:, 1] >= now - STALE_S, 0].copy()


def shared_counts_path(port: int) -> str:
    """Per server: the workers share their supervisor (the parent process) and the port."""
    directory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return os.path.join(directory, f"slimship-connections-{os.getppid()}-{port}")


def remove_shared_files() -> None:
    """At shutdown: the first worker to stop removes the file; the others find it gone (mapped pages stay valid)."""
    for path in OPENED:
        try:
            os.unlink(path)
        except OSError:
            pass


class BalanceConnections:
    """ASGI middleware; ``worker_index`` (0-based) and ``workers`` say which slot is this worker's."""

    def __init__(self, app, workers: int, worker_index, window_s: float = 2.0, interval_s: float = 0.05,
                 update_s: float = 0.25, table_path=None):
        self.app = app
        self.workers = workers
        self.worker_index = worker_index      # a callable, resolved on the first request (set after import)
        self.window_s, self.interval_s, self.update_s = window_s, interval_s, update_s
        self.table_path = table_path          # tests give a path; else one per supervisor and port
        self.table: SharedCounts | None = None
        self.seen: dict = {}                  # client (host, port) -> when it last sent a request
        self.close_budget = 0
        self.next_update = 0.0
        self.next_close = 0.0
        self.closed = 0                       # connections asked to reconnect, for tests and curiosity

    def _open_table(self, scope) -> bool:
        index = self.worker_index() if callable(self.worker_index) else self.worker_index
        if index is None or not 0 <= index < self.workers:
            self.workers = 1                  # not a known worker of a multi-worker server: stay out of the way
            return False
        port = (scope.get("server") or ("", 0))[1]
        try:
            self.table = SharedCounts(self.table_path or shared_counts_path(port), self.workers, index)
        except OSError:                       # no writable shared directory: serve unbalanced rather than fail
            self.workers = 1
            return False
        OPENED.append(self.table.path)
        return True

    def _update(self, now: float) -> None:
        self.next_update = now + self.update_s
        cutoff = now - self.window_s
        self.seen = {client: t for client, t in self.seen.items() if t >= cutoff}
        counts = self.table.publish(len(self.seen))
        fair = counts.sum() / self.workers
        excess = len(self.seen) - fair
        # Slack: one connection, or a tenth of the fair share, is noise, not imbalance. Half the excess per update:
        # the other workers' counts are up to one update old, and moving all of it at once on stale numbers
        # would overshoot and send the clients back and forth.
        self.close_budget = int(np.ceil(excess / 2)) if excess > max(1.0, 0.1 * fair) else 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.workers < 2 or (self.table is None and not self._open_table(scope)):
            return await self.app(scope, receive, send)
        now = time.monotonic()
        client = scope.get("client")
        if client is not None:
            self.seen[client] = now
        if now >= self.next_update:
            self._update(now)
        if self.close_budget > 0 and now >= self.next_close and client is not None:
            self.close_budget -= 1
            self.next_close = now + self.interval_s
            self.seen.pop(client, None)
            self.closed += 1

            async def send_then_close(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
                await send(message)

            return await self.app(scope, receive, send_then_close)
        return await self.app(scope, receive, send)
