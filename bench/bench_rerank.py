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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an ONNX artifact of a pair model")
    parser.add_argument("--data", type=Path, required=True, help="a pair data dir with validation.csv")
    parser.add_argument("--documents", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with (args.data / "validation.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "slimship", "serve", "--model", str(args.model), "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise RuntimeError("slimship serve exited before it was ready")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("slimship serve not ready after 300 s")
            time.sleep(0.5)
        times = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(args.warmup + args.requests):
                start_row = (i * 7) % max(1, len(rows) - args.documents)
                window = rows[start_row:start_row + args.documents]
                body = {"query": window[0]["text"], "documents": [r["text_pair"] for r in window]}
                started = time.perf_counter()
                response = client.post("/rerank", json=body)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                assert len(response.json()) == len(window)
                if i >= args.warmup:
                    times.append(elapsed)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    times.sort()
    result = {"documents": args.documents, "requests": len(times), "p50_ms": statistics.median(times),
              "p95_ms": times[int(len(times) * 0.95) - 1], "p99_ms": times[int(len(times) * 0.99) - 1]}
    print(f"rerank 1 x {args.documents}: p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms over {len(times)} requests")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
