"""Rerank latency through HTTP (issue 17): 1 query x 50 documents against `slimship serve` of a pair model.

    slimship run --data ../shared/datasets/mrpc --out runs/mrpc          # a pair classifier, defaults
    python bench/bench_rerank.py --model runs/mrpc/compress/model --data ../shared/datasets/mrpc

The server runs as users start it (`slimship serve --model M`, its default workers and threads). Each request
sends one validation `text` as the query and the `text_pair` of 50 validation rows as the documents (a different
window of rows per request), one request at a time; the first --warmup requests are not counted. Prints p50,
p95 and p99 in ms and writes them to --out (JSON) when given.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench_serve import free_port


def start_server(model: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`slimship serve --model MODEL` on a free loopback port, as users start it (plus ``env``); waits for /readyz."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "slimship", "serve", "--model", str(model), "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise RuntimeError("slimship serve exited before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise TimeoutError("slimship serve not ready after 300 s")
        time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def rerank_latencies(url: str, rows: list[dict], documents: int, requests: int, warmup: int) -> dict:
    """p50/p95/p99 ms of ``requests`` rerank calls, one at a time, after ``warmup`` uncounted ones."""
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(warmup + requests):
            start_row = (i * 7) % max(1, len(rows) - documents)
            window = rows[start_row:start_row + documents]
            body = {"query": window[0]["text"], "documents": [r["text_pair"] for r in window]}
            started = time.perf_counter()
            response = client.post("/rerank", json=body)
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            assert len(response.json()) == len(window)
            if i >= warmup:
                times.append(elapsed)
    times.sort()
    return {"documents": documents, "requests": len(times), "p50_ms": statistics.median(times),
            "p95_ms": times[int(len(times) * 0.95) - 1], "p99_ms": times[int(len(times) * 0.99) - 1]}


def read_rows(data: Path) -> list[dict]:
    with (data / "validation.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an ONNX artifact of a pair model")
    parser.add_argument("--data", type=Path, required=True, help="a pair data dir with validation.csv")
    parser.add_argument("--documents", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rows = read_rows(args.data)
    server, url = start_server(args.model)
    try:
        result = rerank_latencies(url, rows, args.documents, args.requests, args.warmup)
    finally:
        stop_server(server)
    print(f"rerank 1 x {args.documents}: p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms over {result['requests']} requests")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
