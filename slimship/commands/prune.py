"""Structured pruning of a PyTorch artifact: attention heads, FFN channels and the hidden size, with recovery.

torch-pruning's dependency graph removes whole heads and channels, the same number in every layer, chosen by
importance (first-order Taylor from a few training batches, or weight magnitude). The result is an ordinary
BERT (safetensors + config) that reloads with plain from_pretrained and exports to ONNX. With --steps K the
ratios are reached in K steps, each followed by recovery fine-tuning (distilled from --teacher when given).
The hidden size is pruned in whole multiples of the head size; ratios that would leave no head or channel, or
a shape a BERT config cannot describe, are refused.

The artifact records parameters, MACs and file size before and after, and the validation metrics before, right
after pruning and after recovery. Recovery runs for --recovery-epochs in all, shared by the steps.

Examples:
  slimship prune --model runs/student --data examples/sentiment --out runs/pruned --heads 0.33 --ffn 0.5
  slimship prune --model runs/student --teacher runs/teacher --data data/ --out runs/pruned \\
      --heads 0.5 --ffn 0.5 --hidden 0.25 --steps 2
"""

from slimship.commands import add_data_options, data_config, field_names, require
from slimship.compress.config import PruneConfig
from slimship.core.config import add_options, from_args
from slimship.train.config import FineTuneConfig


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="the model to prune: a PyTorch artifact (train or distill output)")
    parser.add_argument("--out", help="artifact directory to write")
    add_options(parser, PruneConfig, skip=field_names(FineTuneConfig), title="pruning")
    add_data_options(parser)
    add_options(parser, FineTuneConfig, title="recovery training")
    require(parser, "model", "data", "out")


def run(args) -> int:
    from slimship.compress.prune import prune

    prune(args.model, args.out, data_config(args), from_args(args, PruneConfig))
    return 0
