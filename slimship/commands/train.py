"""Fine-tune a pretrained transformer on labelled text and write a PyTorch artifact.

Examples:
  slimship train --data examples/sentiment --out runs/teacher
  slimship train --model tiny --data data.csv --out runs/tiny --epochs 1
  torchrun --nproc_per_node 2 -m slimship train --data ... --out ...   (DDP, no code change)

Rows with an empty text are skipped and counted; any other bad row is an error naming its file and row.
"""

from slimship.commands import add_data_arguments, add_training_arguments, require, train_config


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="minilm",
                        help="'minilm' (all-MiniLM-L6-v2, bundled), 'tiny' (random 2-layer BERT for tests), "
                             "a local checkpoint dir, or a hub id when online (default: minilm)")
    parser.add_argument("--out", help="artifact directory to write")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow custom model code from the checkpoint (off by default)")
    add_data_arguments(parser)
    add_training_arguments(parser)
    require(parser, "data", "out")


def run(args) -> int:
    from slimship.train.stage import train

    train(args.model, args.data, args.out, train_config(args), trust_remote_code=args.trust_remote_code)
    return 0
