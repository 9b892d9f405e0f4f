"""Serving benchmark on loopback: slimship's service (INT8 ONNX) vs a hand-written BentoML service (PyTorch FP32).

    python bench/bench_serve.py                      # minilm trained briefly on SST-2 (needs ../shared/datasets)
    python bench/bench_serve.py --model tiny         # the random 2-layer test model, on the demo data
    python bench/bench_serve.py --teacher bench/results/headline/teacher \
        --compressed bench/results/headline/compressed/model   # the headline's teacher and compressed model

1. Artifacts (cached under bench/results/serve-<model>/): train the model briefly with slimship's train stage,
   export to ONNX (parity gate), quantize dynamic INT8. The teacher (PyTorch FP32) is what the naive service serves.
2. Each service runs under `bentoml serve` on 127.0.0.1. wrk (one thread, C, so the generator itself stays light
   on 2 cores) sends one SST-2 validation sentence per request, at 1/8/32/64 concurrent connections, for a fixed
   duration each: req/s, p50/p95/p99 and errors by status (bench/classify.lua).
3. Overload: an open-loop generator (bench/openloop.c, compiled on first use; fixed arrival rate, latency counted
   from when each request fell due) offers 4x (``--overload``) the best measured req/s for a fixed time, with a
   per-request timeout; it reports how many were answered 200 / shed 503 / timed out, the latency of each, and
   the server's RSS before and after (memory must stay flat).
Results: bench/results/serve.json and a markdown table on stdout (pasted into docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SST2 = ROOT.parent / "shared" / "datasets" / "sst2"
sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[bench_serve] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- artifacts
def artifacts(model: str, rows: int, data: Path, teacher: Path | None = None) -> dict[str, Path]:
    """teacher (PyTorch FP32), onnx (FP32), int8 (dynamic), cached: each stage runs only if its output is absent.

    With ``teacher`` (a trained PyTorch artifact) that one is exported and quantized instead of a brief fine-tune."""
    from slimship.compress.config import QuantizeConfig
    from slimship.compress.export import export
    from slimship.compress.quantize import quantize
    from slimship.core.config import DataConfig
    from slimship.train.config import TrainConfig
    from slimship.train.stage import train

    if not (data / "train.csv").is_file():
        raise SystemExit(f"{data} is absent: run with --model tiny (demo data) instead")
    base = RESULTS / f"serve-{model}"
    if teacher is not None:
        base = RESULTS / f"serve-{teacher.resolve().parent.name}-{teacher.name}"
        base.mkdir(parents=True, exist_ok=True)
    paths = {"teacher": teacher or base / "teacher", "onnx": base / "onnx", "int8": base / "int8"}
    if not (paths["teacher"] / "manifest.json").is_file():
        log(f"training {model} on {rows} rows of {data} (1 epoch, max_length 64)")
        cfg = TrainConfig(epochs=1, max_length=64, batch_size=32,
                          learning_rate=5e-5 if model == "minilm" else 1e-3, patience=0, quiet=True)
        train(model, paths["teacher"], DataConfig(path=str(data), max_train_rows=rows, max_eval_rows=872), cfg)
    if not (paths["onnx"] / "manifest.json").is_file():
        export(paths["teacher"], paths["onnx"], DataConfig(path=str(data)))
    if not (paths["int8"] / "manifest.json").is_file():
        quantize(paths["onnx"], paths["int8"], DataConfig(path=str(data), max_eval_rows=872),
                 QuantizeConfig(mode="dynamic"))
    return paths


def request_bodies(model: str, data: Path) -> Path:
    with open(data / "validation.csv", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f) if row["text"].strip()]
    out = RESULTS / f"bodies-{data.name}.jsonl"
    out.write_text("".join(json.dumps({"texts": [t]}) + "\n" for t in texts))
    return out


# ---------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, service: str, env: dict[str, str]):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = open(RESULTS / f"serve-{name}.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", service, "--host", "127.0.0.1", "--port", str(self.port),
             "--working-dir", str(ROOT)],
            env={**os.environ, **env}, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.log_file.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{name} not ready after 300 s")

    def rss_mb(self) -> float:
        import psutil

        root = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log_file.close()


# ---------------------------------------------------------------------------------------------- load
def wrk(url: str, clients: int, seconds: int, bodies: Path) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", str(ROOT / "bench" / "classify.lua"), url, "--", str(bodies)],
                         capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRK_JSON "):])
    ok = r["statuses"].get("200", 0)
    return {"clients": clients, "requests": r["requests"], "ok": ok, "req_s": ok / (r["duration_us"] / 1e6),
            "p50_ms": r["p50_us"] / 1000, "p95_ms": r["p95_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "errors": r["requests"] - ok + r["connect_errors"] + r["timeouts"], "statuses": r["statuses"],
            "timeouts": r["timeouts"]}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def summary_by_status(latencies: dict[str, list[float]]) -> dict:
    return {k: {"n": len(v), "p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99)}
            for k, v in sorted(latencies.items())}


def cpu_seconds(before, after) -> float:
    """User + system CPU between two ``resource.getrusage`` readings."""
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


async def open_loop(url: str, rate: float, seconds: int, bodies: list[bytes], timeout: float = 10.0) -> dict:
    """Fire requests at a fixed rate regardless of answers (overload is offered, not negotiated)."""
    import aiohttp

    latencies: dict[str, list[float]] = {}
    retry_after: list[str] = []
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async def one(body: bytes) -> None:
            start = time.perf_counter()
            try:
                async with session.post(url + "/classify", data=body,
                                        headers={"content-type": "application/json"}) as resp:
                    await resp.read()
                    key = str(resp.status)
                    if resp.status == 503 and "Retry-After" in resp.headers:
                        retry_after.append(resp.headers["Retry-After"])
            except asyncio.TimeoutError:
                key = "timeout"
            except aiohttp.ClientError as e:
                key = type(e).__name__
            latencies.setdefault(key, []).append((time.perf_counter() - start) * 1000)

        tasks, start, n = [], time.perf_counter(), int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
        offered_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return {"offered": n, "offered_req_s": n / offered_s,
            "by_status": summary_by_status(latencies),
            "retry_after_headers": len(retry_after)}


def openloop_binary() -> Path | None:
    """bench/openloop.c compiled into the results dir (rebuilt when the source is newer); None without a C compiler."""
    source, binary = ROOT / "bench" / "openloop.c", RESULTS / "openloop"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def open_loop_c(binary: Path, url: str, rate: float, seconds: int, bodies: Path, timeout: float = 10.0,
                max_connections: int = 2000) -> dict:
    """The same open-loop run as ``open_loop``, by the C generator: a few percent of a core instead of most of one,
    so on 2 shared cores the offered rate is really offered and the latencies are the server's."""
    host, port = url.removeprefix("http://").split(":")
    out = RESULTS / "openloop.out"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run([str(binary), host, port, "/classify", f"{rate:.1f}", str(seconds), str(bodies),
                          str(max_connections), str(int(timeout * 1000)), str(out)],
                         capture_output=True, text=True, timeout=seconds + timeout + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise RuntimeError(f"openloop failed: {run.stderr}")
    names = {"0": "timeout", "-1": "connection error"}
    latencies: dict[str, list[float]] = {}
    retry_after = 0
    for line in out.read_text().splitlines():
        status, latency_us, has_retry_after = line.split()
        latencies.setdefault(names.get(status, status), []).append(int(latency_us) / 1000)
        retry_after += int(has_retry_after)
    n = int(rate * seconds)
    return {"offered": n, "offered_req_s": rate, "generator": "openloop.c",
            "generator_cpu_s": cpu_seconds(before, after),
            "generator_log": run.stderr.strip(),
            "by_status": summary_by_status(latencies),
            "retry_after_headers": retry_after}


def run_async(coroutine):
    """uvloop when installed (it is a slimship dependency): the generator shares the 2 cores with the server, so
    the less CPU it spends per request, the more of the offered rate is really the server's problem."""
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def run_service(server: Server, bodies: Path, clients: list[int], seconds: int, overload_s: int,
                overload_factors: list[float], generator: Path | None = None) -> dict:
    wrk(server.url, 8, 3, bodies)  # warm: JIT-free, but allocators, caches and the batcher's estimate settle
    rows = []
    for c in clients:
        row = wrk(server.url, c, seconds, bodies)
        log(f"{server.name} c={c}: {row['req_s']:.0f} req/s p50 {row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms "
            f"errors {row['errors']} {row['statuses']}")
        rows.append(row)
    capacity = max(r["req_s"] for r in rows)
    lines = bodies.read_bytes().splitlines()
    overloads = []
    for factor in overload_factors:
        rss_before = server.rss_mb()
        if generator is not None:
            overload = open_loop_c(generator, server.url, factor * capacity, overload_s, bodies)
        else:
            before = resource.getrusage(resource.RUSAGE_SELF)
            overload = run_async(open_loop(server.url, factor * capacity, overload_s, lines))
            after = resource.getrusage(resource.RUSAGE_SELF)
            overload.update(generator="aiohttp", generator_cpu_s=cpu_seconds(before, after))
        overload.update(factor=factor, capacity_req_s=capacity, rss_before_mb=rss_before,
                        rss_after_mb=server.rss_mb())
        alive = httpx.post(server.url + "/classify", json={"texts": ["still alive?"]}, timeout=30).status_code
        overload["answers_after"] = alive
        log(f"{server.name} overload at {factor:g}x{capacity:.0f} req/s: {json.dumps(overload['by_status'])}; RSS "
            f"{rss_before:.0f} -> {overload['rss_after_mb']:.0f} MB; afterwards {alive}; generator "
            f"{overload['generator']} used {overload['generator_cpu_s']:.1f} s CPU in {overload_s} s")
        overloads.append(overload)
        time.sleep(3)  # let the server drain before the next level
    return {"load": rows, "overload": overloads}


def markdown(results: dict) -> str:
    lines = ["| service | clients | req/s | p50 ms | p95 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for name, res in results["services"].items():
        for r in res["load"]:
            lines.append(f"| {name} | {r['clients']} | {r['req_s']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['errors']} |")
    lines += ["", "| service | offered (x capacity) | 200 (p50/p99 ms) | 503 (p50/p99 ms) | timeouts/other | "
                  "RSS before -> after |", "|---|---|---|---|---|---|"]
    for name, res in results["services"].items():
        for o in res["overload"]:
            by = o["by_status"]

            def cell(key):
                s = by.get(key)
                return f"{s['n']} ({s['p50_ms']:.0f}/{s['p99_ms']:.0f})" if s else "0"
            other = sum(v["n"] for k, v in by.items() if k not in ("200", "503"))
            lines.append(f"| {name} | {o['offered']} at {o['offered_req_s']:.0f} req/s ({o['factor']:g}x) | "
                         f"{cell('200')} | {cell('503')} | {other} | {o['rss_before_mb']:.0f} -> "
                         f"{o['rss_after_mb']:.0f} MB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--rows", type=int, default=4000, help="training rows for the brief fine-tune")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--seconds", type=int, default=8, help="duration of each wrk run")
    parser.add_argument("--overload-seconds", type=int, default=8)
    parser.add_argument("--overload", default="4", help="offered rates for the overload runs, as multiples of the "
                        "best measured req/s, comma-separated (default: 4)")
    parser.add_argument("--generator", choices=["c", "python"], default="c",
                        help="overload generator: c (bench/openloop.c, compiled here; light on CPU, the default) or "
                        "python (aiohttp on uvloop, most of a core at 4,000 req/s)")
    parser.add_argument("--prepare-only", action="store_true", help="build (cache) the artifacts and stop")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--teacher", type=Path, help="a trained PyTorch artifact to serve (naive) and to export and "
                        "quantize (slimship INT8), instead of a brief fine-tune")
    parser.add_argument("--data", type=Path, help="dataset dir (train.csv, validation.csv) whose validation texts "
                        "are the requests (default: SST-2 for minilm, the demo data for tiny)")
    parser.add_argument("--compressed", type=Path, help="an ONNX artifact from `slimship compress`, served by "
                        "slimship as a further row")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = args.data or (SST2 if args.model == "minilm" else ROOT / "tests" / "data" / "sentiment")
    paths = artifacts(args.model, args.rows, data, args.teacher)
    if args.prepare_only:
        return
    bodies = request_bodies(args.model, data)
    clients = [int(c) for c in args.clients.split(",")]
    generator = openloop_binary() if args.generator == "c" else None
    if args.generator == "c" and generator is None:
        raise SystemExit("--generator c needs a C compiler (cc or gcc); or pass --generator python")

    from slimship.serve.store import import_artifact
    home = RESULTS / "bentoml"
    os.environ["BENTOML_HOME"] = str(home)
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    def val_accuracy(path: Path):
        return json.loads((path / "manifest.json").read_text()).get("metrics", {}).get("validation", {}).get("accuracy")

    results = {"model": args.model, "cpus": os.cpu_count(), "seconds": args.seconds, "services": {},
               "accuracy": {"slimship int8 teacher": val_accuracy(paths["int8"]),
                            "teacher fp32": val_accuracy(paths["teacher"])}}
    plan = []
    if args.compressed is not None:
        results["accuracy"]["slimship compressed"] = val_accuracy(args.compressed)
        plan.append(("slimship (compressed model)", "slimship.serve.service:Classify",
                     {"SLIMSHIP_MODEL": import_artifact(args.compressed)}))
    plan.append(("slimship (ONNX INT8 teacher)", "slimship.serve.service:Classify",
                 {"SLIMSHIP_MODEL": import_artifact(paths["int8"])}))
    if not args.skip_naive:
        plan.append(("naive BentoML (PyTorch FP32)", "bench.naive_service:Naive",
                     {"BENCH_TEACHER": str(paths["teacher"])}))
    for name, service, env in plan:
        log(f"starting {name}")
        server = Server(name.split()[0] + str(len(results["services"])), service, env)
        try:
            results["services"][name] = run_service(server, bodies, clients, args.seconds, args.overload_seconds,
                                                    [float(f) for f in args.overload.split(",")], generator)
        finally:
            server.stop()
    (RESULTS / "serve.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\naccuracy (validation): {results['accuracy']}")


if __name__ == "__main__":
    main()
