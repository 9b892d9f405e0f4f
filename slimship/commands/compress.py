"""The fastest model within an accuracy budget: search distill -> prune -> export -> quantize.

From the teacher: distil students (--grid layers), prune them (heads / FFN / hidden ratios, KD recovery),
export every PyTorch model to ONNX, quantize every export (static INT8 by default). Each ONNX candidate's
validation metric, batch-1 latency and batch-32 throughput are measured on this machine; the fastest within
--max-accuracy-drop points of the best reference (the teacher, or a candidate that beats it) and within
--max-model-mb, when given, is written to OUT/model (an ONNX artifact), and OUT/report.json, report.md and
pareto.png show every candidate and the Pareto front.

Resumable: every candidate is its own artifact under OUT/candidates; run the same command again after a crash
and finished candidates are verified and reused. When no candidate meets the budget, the report is still
written and the command exits non-zero.

The default grid (configs/grid-default.yaml writes it out with every key):
  layers: [3]                           student depths to distil
  students: []                          other students (any family, own tokenizer): minilm or checkpoint dirs
  prune: [{}, {heads: 0.5, ffn: 0.5}]   pruning ratios per student ({} = unpruned)
  optimize: [none]                      add O2 for ONNX Runtime's offline fusion
  quantize: [none, static]              none = the FP32 export; static/weight_only INT8; dynamic INT8 is
                                        batch-dependent (chosen only with --allow-batch-dependent)
  embedding_bits: [8, 4]                4: each INT8 candidate also with 4-bit word embeddings (smaller file)
  ffn_output: [fp32]                    add weight8 for static INT8 with 8-bit FFN output weights (smaller, slower)
  weight_bits: [8]                      with weight_only in quantize: add 4 for 4-bit MatMul weights
  vocab: [full]                         add train to also try each student with only the training data's tokens
  include_teacher: true                 the teacher itself is a candidate too
  distill: {epochs: 3, learning_rate: 1.0e-4}   distill options (and data options such as max_train_rows);
                                        prune_options: {recovery_epochs: 1}; vocab_options: {keep_top: 26000}

Examples:
  slimship compress --teacher runs/teacher --data examples/sentiment --out runs/compressed
  slimship compress --teacher runs/teacher --data ../shared/datasets/sst2 --out runs/sst2-c \\
      --max-accuracy-drop 1.0 --grid my-grid.yaml --max-train-rows 4000
"""

from slimship.commands import add_data_options, add_training_options, data_config, require
from slimship.compress.config import CompressConfig
from slimship.core.config import add_options


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", help="the teacher: a PyTorch artifact (from train)")
    parser.add_argument("--out", help="output directory (candidates, report, and the chosen model at OUT/model)")
    add_options(parser, CompressConfig, title="search")
    grid = parser.add_argument("--grid", metavar="FILE.yaml",
                               help="the grid to search (default: the built-in grid); in a --config file also "
                                    "a mapping")
    grid.annotation = str | dict | None
    add_data_options(parser)
    add_training_options(parser)
    require(parser, "teacher", "data", "out")


def compress_config(args) -> CompressConfig:
    from slimship.compress.config import Grid, grid_from_dict, load_grid
    from slimship.core.config import from_args, section_of
    from slimship.train.config import TrainConfig

    if isinstance(args.grid, dict):          # a grid written inline in a --config file: compress.grid or grid
        grid = grid_from_dict(args.grid, args.config, section_of(args.grid, "grid"))
    else:
        grid = load_grid(args.grid) if args.grid else Grid()
    return from_args(args, CompressConfig, grid=grid, train=from_args(args, TrainConfig))


def run(args) -> int:
    from slimship.compress.search import BudgetNotMet, compress
    from slimship.core.report import load_report, render_text

    try:
        out = compress(args.teacher, args.out, data_config(args), compress_config(args))
    except BudgetNotMet:
        print(render_text(load_report(args.out)))   # the report is written; show it before the error line
        raise
    print(render_text(load_report(out)))
    return 0
