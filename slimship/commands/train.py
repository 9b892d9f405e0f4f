"""Fine-tune a pretrained transformer on labelled text and write a PyTorch artifact.

Examples:
  slimship train --data examples/sentiment --out runs/teacher
  slimship train --model tiny --data data.csv --out runs/tiny --epochs 1
  torchrun --nproc_per_node 2 -m slimship train --data ... --out ...   (DDP, no code change)

Rows with an empty text are skipped and counted; any other bad row is an error naming its file and row.
"""

from slimship.commands import add_data_options, add_training_options, data_config, require
from slimship.core.config import add_options
from slimship.train.config import TrainConfig, TrainSource


def add_arguments(parser) -> None:
    add_options(parser, TrainSource)
    parser.add_argument("--out", help="artifact directory to write")
    add_data_options(parser)
    add_training_options(parser)
    require(parser, "data", "out")


def run(args) -> int:
    from slimship.core.config import from_args
    from slimship.train.stage import train

    source = from_args(args, TrainSource)
    train(source.model, args.out, data_config(args), from_args(args, TrainConfig),
          trust_remote_code=source.trust_remote_code)
    return 0
