"""Structured pruning of a PyTorch artifact: attention heads, FFN channels and the hidden size, with recovery.

torch-pruning's dependency graph removes whole heads and channels, the same number in every layer, chosen by
importance (first-order Taylor from a few training batches, or weight magnitude). The result is an ordinary
BERT (safetensors + config) that reloads with plain from_pretrained and exports to ONNX. With --steps K the
ratios are reached in K steps, each followed by recovery fine-tuning (distilled from --teacher when given).
The hidden size is pruned in whole multiples of the head size; ratios that would leave no head or channel, or
a shape a BERT config cannot describe, are refused.

The artifact records parameters, MACs and file size before and after, and the validation metrics before, right
after pruning and after recovery. --epochs is not used here: recovery runs for --recovery-epochs in all.

Examples:
  slimship prune --model runs/student --data examples/sentiment --out runs/pruned --heads 0.33 --ffn 0.5
  slimship prune --model runs/student --teacher runs/teacher --data data/ --out runs/pruned \\
      --heads 0.5 --ffn 0.5 --hidden 0.25 --steps 2
"""

from slimship.commands import add_data_arguments, add_training_arguments, require


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="the model to prune: a PyTorch artifact (train or distill output)")
    parser.add_argument("--out", help="artifact directory to write")
    parser.add_argument("--teacher", help="a PyTorch artifact to distil from during recovery (optional)")
    group = parser.add_argument_group("pruning")
    group.add_argument("--heads", type=float, default=0.0, help="fraction of attention heads removed per layer")
    group.add_argument("--ffn", type=float, default=0.0, help="fraction of FFN intermediate channels removed")
    group.add_argument("--hidden", type=float, default=0.0,
                       help="fraction of the hidden size removed (rounded to whole multiples of the head size)")
    group.add_argument("--importance", choices=["taylor", "magnitude"], default="taylor",
                       help="how channels are ranked (default: taylor)")
    group.add_argument("--steps", type=int, default=1, help="reach the ratios in K steps, recovering after each")
    group.add_argument("--recovery-epochs", type=float, default=1.0,
                       help="fine-tuning epochs in all, shared by the steps; 0 skips recovery (default: 1)")
    group.add_argument("--importance-batches", type=int, default=8,
                       help="training batches whose gradients give the Taylor importance (default: 8)")
    group.add_argument("--temperature", type=float, default=2.0, help="distillation temperature with --teacher")
    group.add_argument("--alpha", type=float, default=0.5, help="distillation weight with --teacher")
    add_data_arguments(parser)
    add_training_arguments(parser)
    require(parser, "model", "data", "out")


def run(args) -> int:
    from slimship.compress.prune import PruneConfig, prune

    prune(args.model, args.data, args.out, PruneConfig.from_dict(vars(args)), teacher_dir=args.teacher)
    return 0
