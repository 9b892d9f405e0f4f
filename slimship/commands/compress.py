"""The fastest model within an accuracy budget: search distill -> prune -> export -> quantize.

From the teacher: distil students (--grid layers), prune them (heads / FFN / hidden ratios, KD recovery),
export every PyTorch model unfused and fused, quantize every export (dynamic / static INT8). Each ONNX
candidate's validation accuracy, batch-1 latency and batch-32 throughput are measured on this machine; the
fastest within --max-accuracy-drop points of the teacher (and --max-model-mb, when given) is written to OUT/model (an ONNX artifact), and
OUT/report.json, report.md and pareto.png show every candidate and the Pareto front.

Resumable: every candidate is its own artifact under OUT/candidates; run the same command again after a crash
and finished candidates are verified and reused. When no candidate meets the budget, the report is still
written and the command exits non-zero.

The grid (see configs/grid-default.yaml for the default and its keys):
  layers: [3]                           student depths to distil
  prune: [{}, {heads: 0.5, ffn: 0.5}]   pruning ratios per student ({} = unpruned)
  optimize: [none, O2]                  ONNX Runtime fusion levels
  quantize: [dynamic, static]           INT8 modes (none = keep FP32)
  embedding_bits: [8]                   add 4 for 4-bit word-embedding candidates (smaller files)
  vocab: [full]                         add train to also try each student with only the training data's tokens
  include_teacher: true                 the teacher itself is a candidate too
  distill: {epochs: 3}                  distill stage options; prune_options: {recovery_epochs: 1}

Examples:
  slimship compress --teacher runs/teacher --data examples/sentiment --out runs/compressed
  slimship compress --teacher runs/teacher --data ../shared/datasets/sst2 --out runs/sst2-c \\
      --max-accuracy-drop 1.0 --grid my-grid.yaml --max-train-rows 4000
"""

from slimship.commands import add_data_arguments, add_training_arguments, require, train_config


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", help="the teacher: a PyTorch artifact (from train)")
    parser.add_argument("--out", help="output directory (candidates, report, and the chosen model at OUT/model)")
    search = parser.add_argument_group("search")
    search.add_argument("--max-accuracy-drop", type=float, default=1.0,
                        help="accuracy points the chosen model may lose against the teacher (default: 1.0)")
    search.add_argument("--max-model-mb", type=float, metavar="MB",
                        help="and a model file of at most MB megabytes (default: any size); 4-bit embeddings and "
                        "vocabulary trimming in the grid are what bring a MiniLM student under about 9 MB")
    search.add_argument("--objective", choices=["throughput", "latency"], default="throughput",
                        help="'fastest' means: most rows/s at batch 32, or lowest batch-1 p50 (default: throughput)")
    search.add_argument("--grid", metavar="FILE.yaml", help="the grid to search (default: the built-in grid)")
    search.add_argument("--threads", type=int,
                        help="ONNX Runtime threads for measuring speed (default: every usable core)")
    search.add_argument("--calibration", type=int, default=128, help="training rows for static INT8 (default 128)")
    search.add_argument("--latency-rows", type=int, default=200, help="batch-1 calls timed per candidate")
    search.add_argument("--throughput-rows", type=int, default=512, help="rows timed at batch 32 per candidate")
    add_data_arguments(parser)
    add_training_arguments(parser)
    require(parser, "teacher", "data", "out")


def run(args) -> int:
    from slimship.compress.search import BudgetNotMet, CompressConfig, Grid, compress, grid_from_dict, load_grid
    from slimship.core.errors import UserError
    from slimship.core.report import load_report, render_text

    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if isinstance(args.grid, dict):          # a grid written inline in a --config file
        grid = grid_from_dict(args.grid, f"{args.config}: grid")
    else:
        grid = load_grid(args.grid) if args.grid else Grid()
    cfg = CompressConfig(max_accuracy_drop=args.max_accuracy_drop, max_model_mb=args.max_model_mb,
                         objective=args.objective, grid=grid,
                         train=train_config(args), threads=args.threads, calibration=args.calibration,
                         latency_rows=args.latency_rows, throughput_rows=args.throughput_rows)
    try:
        out = compress(args.teacher, args.data, args.out, cfg)
    except BudgetNotMet:
        print(render_text(load_report(args.out)))   # the report is written; show it before the error line
        raise
    print(render_text(load_report(out)))
    return 0
