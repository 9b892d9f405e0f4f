"""Container image benchmark: image size, build time, and seconds from `run` to /readyz, per model.

    python bench/bench_container.py --model runs/demo/model [--model OTHER] [--runs 5]

For each ONNX artifact: build its bento and CPU image (slimship containerize's code path, layer cache warm),
then start the image --runs times on a free loopback port and time `podman run -d` returning -> /readyz 200,
and the first /classify; interleaved with the same bento under `bentoml serve` on the host (no container) as
the baseline, so the ratio shows what the container itself costs. Prints a markdown table for docs/BENCHMARKS.md ("Container image"), with the load
average, because the machine is shared and start-up time scales with it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import container_host  # noqa: E402  (runs, waits for and removes containers; shared with the tests)
from slimship import containers  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_start(builder: containers.Builder, tag: str, threads: int) -> tuple[float, float, float]:
    """(seconds for `run -d` to return, seconds from then to /readyz, first /classify in ms)."""
    port = free_port()
    t0 = time.monotonic()
    cid = container_host.run_container(builder, tag, port=port, env={"SLIMSHIP_THREADS": str(threads)})
    t1 = time.monotonic()
    try:
        ready = container_host.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)
        body = json.dumps({"texts": ["a short sentence to classify"]}).encode()
        t2 = time.perf_counter()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/classify", data=body,
                                         headers={"content-type": "application/json"})
        urllib.request.urlopen(request, timeout=30).read()
        first_ms = (time.perf_counter() - t2) * 1000
    finally:
        container_host.remove_container(builder, cid)
    return t1 - t0, ready, first_ms


def time_host_start(bento: str, threads: int) -> float:
    """Baseline: the same bento served by `bentoml serve` on the host, no container; seconds to /readyz."""
    import subprocess

    port = free_port()
    env = {**os.environ, "SLIMSHIP_THREADS": str(threads)}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", bento, "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        container_host.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120,
                        container_alive=lambda: proc.poll() is None)
        return time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="ONNX artifact dir (repeatable)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="SLIMSHIP_THREADS in the container")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()

    import subprocess

    from slimship.core.artifact import load

    builder = containers.detect(args.backend)   # prepare a bare host first: tests/podman-setup.sh
    rows = []
    for model_dir in args.model:
        manifest = load(model_dir)
        model_mb = sum((Path(model_dir) / f).stat().st_size for f in manifest["files"]) / 1e6
        # One process per bento: serve.service reads the model tag when first imported, so a second
        # build_bento() in the same process would pin the first model again.
        bento = subprocess.run([sys.executable, "-m", "slimship", "build", "--model", model_dir], check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
        t = time.monotonic()
        result = containers.containerize(bento=bento, tag=f"localhost/slimship-bench:{bento.split(':')[1]}",
                                         builder=builder)
        build_s = time.monotonic() - t
        starts, host = [], []
        for _ in range(args.runs):  # interleaved, so both see the same machine load
            starts.append(time_start(builder, result["tag"], args.threads))
            host.append(time_host_start(bento, args.threads))
        builder.cmd("rmi", "-f", result["tag"], check=False)
        ready = [s[1] for s in starts]
        rows.append({"model": f"{Path(model_dir).name} ({manifest.get('kind')}, {model_mb:.0f} MB)",
                     "size_mb": result["size"] / 1e6, "build_s": build_s,
                     "run_s": statistics.median(s[0] for s in starts),
                     "ready_med": statistics.median(ready), "ready_min": min(ready), "ready_max": max(ready),
                     "first_ms": statistics.median(s[2] for s in starts),
                     "host_ready_med": statistics.median(host)})
        print(json.dumps(rows[-1]), file=sys.stderr)

    load1, load5, _ = os.getloadavg()
    print(f"builder: {builder.name}; {args.runs} starts per image; SLIMSHIP_THREADS={args.threads}; "
          f"load average at the end {load1:.1f} / {load5:.1f} (2 cores)\n")
    print("| model | image size | build (layers warm) | `run -d` returns | run -> /readyz median (min-max) "
          "| host `bentoml serve` -> /readyz | container / host | first /classify |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size_mb']:.0f} MB | {r['build_s']:.0f} s | {r['run_s']:.2f} s | "
              f"{r['ready_med']:.2f} s ({r['ready_min']:.2f}-{r['ready_max']:.2f}) | {r['host_ready_med']:.2f} s | "
              f"{r['ready_med'] / r['host_ready_med']:.2f} | {r['first_ms']:.0f} ms |")


if __name__ == "__main__":
    main()
