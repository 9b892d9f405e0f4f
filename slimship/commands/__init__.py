"""One module per subcommand: ``add_arguments(parser)`` and ``run(args)``."""


def require(parser, *names: str) -> None:
    """Mark options as required after --config is applied (argparse's own required= ignores config files)."""
    parser.set_defaults(_required=list(names))


def add_data_arguments(parser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", help="a directory with train/validation[/test] files, or one file to split "
                                      "(CSV, TSV, JSONL or Parquet); rows with empty text are skipped and counted")
    group.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    group.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    group.add_argument("--validation-fraction", type=float, default=0.1,
                       help="share of a single data file held out for validation (default: 0.1)")
    group.add_argument("--max-train-rows", type=int, help="use a deterministic sample of this many training rows")
    group.add_argument("--max-eval-rows", type=int, help="evaluate on only the first N validation/test rows")


def add_training_arguments(parser) -> None:
    """The Trainer options shared by train, distill and prune (see train/recipe.py: TrainConfig)."""
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=float, default=3.0, help="maximum epochs (default: 3)")
    group.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (overrides epochs)")
    group.add_argument("--batch-size", type=int, default=32, help="training batch size per device (default: 32)")
    group.add_argument("--eval-batch-size", type=int, default=64)
    group.add_argument("--learning-rate", "--lr", type=float, default=5e-5, dest="learning_rate")
    group.add_argument("--weight-decay", type=float, default=0.01)
    group.add_argument("--warmup-ratio", type=float, default=0.06)
    group.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (default: 1.0)")
    group.add_argument("--lr-schedule", choices=["linear", "plateau"], default="linear",
                       help="linear decay with warmup, or halve on a validation plateau (default: linear)")
    group.add_argument("--amp", choices=["auto", "fp16", "bf16", "off"], default="auto",
                       help="mixed precision: auto = fp16+grad scaling on CUDA (bf16 where supported), "
                            "bf16 autocast on CPUs with native bf16, else off (default: auto)")
    group.add_argument("--metric", choices=["accuracy", "f1", "loss"], default="accuracy",
                       help="validation metric for early stopping and best-checkpoint choice (default: accuracy)")
    group.add_argument("--patience", type=int, default=2,
                       help="evaluations without improvement before stopping; 0 turns early stopping off")
    group.add_argument("--min-delta", type=float, default=0.0, help="smallest change that counts as improvement")
    group.add_argument("--eval-steps", type=int, default=0,
                       help="evaluate and checkpoint every N steps (default 0: once per epoch)")
    group.add_argument("--max-length", type=int, default=128, help="tokens per text; longer texts are truncated")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--resume", action="store_true", help="continue from the last checkpoint of a crashed run")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def train_config(args):
    from slimship.train.recipe import TrainConfig

    return TrainConfig.from_dict(vars(args))
