"""Serve an ONNX artifact over HTTP (BentoML): POST /classify, GET /metadata, /livez, /readyz, /metrics.

The artifact's digests are verified, it is imported into the BentoML model store, and `bentoml serve` runs
serve/service.py with that exact model. Ctrl-C (or SIGTERM) stops it after in-flight requests finish.
Tuning (defaults come from the CPU count; see docs/SERVING.md): --workers, --threads, --max-batch-size,
--max-latency-ms, or the SLIMSHIP_* environment variables they set.

Example:
  slimship serve --model runs/demo/model --port 3000
  curl -s localhost:3000/classify -H 'content-type: application/json' -d '{"texts": ["great film"]}'
"""

from slimship.commands import require


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="ONNX artifact directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; "
                                                            "0.0.0.0 to accept other machines)")
    parser.add_argument("--port", type=int, default=3000, help="port (default: 3000)")
    parser.add_argument("--name", default="slimship-classifier", help="model name in the BentoML model store")
    group = parser.add_argument_group("tuning (default: from the SLIMSHIP_* environment, else the CPU count)")
    group.add_argument("--workers", type=int, help="server processes (SLIMSHIP_WORKERS, default: cores, at most 4)")
    group.add_argument("--threads", type=int, help="ONNX Runtime threads per worker (SLIMSHIP_THREADS, default: "
                       "cores / workers); the core count lets one large request (a rerank of 50) use every core")
    group.add_argument("--max-batch-size", type=int, help="texts per inference call (SLIMSHIP_MAX_BATCH_SIZE)")
    group.add_argument("--max-latency-ms", type=int,
                       help="shed requests (503) whose predicted queue wait exceeds this (SLIMSHIP_MAX_LATENCY_MS)")
    require(parser, "model")


def run(args) -> int:
    import os
    import sys

    from slimship.serve.settings import ServeSettings
    from slimship.serve.store import SOURCE_ROOT, import_artifact
    from slimship.core.errors import UserError

    tag = import_artifact(args.model, args.name)
    env = dict(os.environ, SLIMSHIP_MODEL=tag)
    for option, var in (("workers", "SLIMSHIP_WORKERS"), ("threads", "SLIMSHIP_THREADS"),
                        ("max_batch_size", "SLIMSHIP_MAX_BATCH_SIZE"), ("max_latency_ms", "SLIMSHIP_MAX_LATENCY_MS")):
        value = getattr(args, option)
        if value is not None:
            if value < 1:
                raise UserError(f"--{option.replace('_', '-')} must be at least 1")
            env[var] = str(value)
    os.environ.update({k: v for k, v in env.items() if k.startswith("SLIMSHIP_")})
    try:
        ServeSettings.from_env()  # bad SLIMSHIP_* values: one clear line now, not a traceback in a worker
    except ValueError as e:
        raise UserError(str(e)) from None
    command = [sys.executable, "-m", "bentoml", "serve", "slimship.serve.service:Classify", "--host", args.host,
               "--port", str(args.port), "--working-dir", str(SOURCE_ROOT)]
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the server (same pid): SIGTERM/SIGINT from a supervisor or Ctrl-C reach BentoML directly, which
    # stops accepting connections and finishes in-flight requests before exiting.
    os.execve(sys.executable, command, env)
