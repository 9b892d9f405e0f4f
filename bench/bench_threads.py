"""Serving with each worker on one ONNX Runtime thread (the default) or on every core, side by side in one run.

    python bench/bench_threads.py --model runs/demo/compress/candidates/L3-onnx-int8-static \
        --data examples/sentiment --pair-model runs/b17/stsb/compress/model --pair-data ../shared/datasets/stsb

For each --threads value, taking turns --rounds times, `slimship serve` (its default workers) is started with
SLIMSHIP_THREADS set, and measured as bench_serve.py and bench_rerank.py measure it:
1. single-text load: wrk at 32 and 64 clients (one validation text of --data per request), req/s and p99;
2. overload: the open-loop generator offers 4x the 32-client rate for 8 s: how fast 503s come back;
3. with --pair-model: 1 query x 50 documents through /rerank, one request at a time, p50/p99.
Prints one line per measurement and a markdown table of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench_rerank import read_rows, rerank_latencies, start_server, stop_server
from bench_serve import RESULTS, open_loop_c, openloop_binary, request_bodies, wrk


def measure(args, threads: str, bodies: Path, generator: Path, pair_rows: list[dict]) -> dict:
    env = {"SLIMSHIP_THREADS": threads}
    out: dict = {}
    server, url = start_server(args.model, env)
    try:
        wrk(url, 8, 3, bodies)
        for clients in (32, 64):
            row = wrk(url, clients, args.seconds, bodies)
            out[f"c{clients}_req_s"], out[f"c{clients}_p99_ms"] = row["req_s"], row["p99_ms"]
        overload = open_loop_c(generator, url, 4 * out["c32_req_s"], 8, bodies)
        shed = overload["by_status"].get("503", {})
        out["shed_p50_ms"], out["shed_p99_ms"] = shed.get("p50_ms"), shed.get("p99_ms")
        out["overload_timeouts"] = sum(v["n"] for k, v in overload["by_status"].items() if k not in ("200", "503"))
    finally:
        stop_server(server)
    if args.pair_model:
        server, url = start_server(args.pair_model, env)
        try:
            rerank = rerank_latencies(url, pair_rows, 50, args.rerank_requests, 10)
            out["rerank_p50_ms"], out["rerank_p99_ms"] = rerank["p50_ms"], rerank["p99_ms"]
        finally:
            stop_server(server)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a single-text ONNX artifact")
    parser.add_argument("--data", type=Path, required=True, help="its data dir (validation.csv: the requests)")
    parser.add_argument("--pair-model", type=Path, help="a pair ONNX artifact that can rerank")
    parser.add_argument("--pair-data", type=Path, help="its data dir (validation.csv with text, text_pair)")
    parser.add_argument("--threads", default="1,2", help="SLIMSHIP_THREADS values, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--rerank-requests", type=int, default=60)
    args = parser.parse_args()
    if bool(args.pair_model) != bool(args.pair_data):
        parser.error("--pair-model and --pair-data go together")

    RESULTS.mkdir(parents=True, exist_ok=True)
    bodies = request_bodies("threads", args.data)
    generator = openloop_binary()
    if generator is None:
        raise SystemExit("the overload generator needs a C compiler (cc or gcc)")
    pair_rows = read_rows(args.pair_data) if args.pair_data else []
    values = args.threads.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in values}
    for round_ in range(args.rounds):
        for threads in values:
            result = measure(args, threads, bodies, generator, pair_rows)
            runs[threads].append(result)
            print(f"round {round_ + 1} threads {threads}: " +
                  ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()),
                  flush=True)
    keys = list(runs[values[0]][0])
    print("\n| SLIMSHIP_THREADS | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for threads in values:
        cells = []
        for key in keys:
            seen = [r[key] for r in runs[threads] if r.get(key) is not None]
            cells.append(f"{statistics.median(seen):.1f}" if seen else "-")
        print(f"| {threads} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
