"""Knowledge-distil a trained teacher artifact into a smaller student and write a PyTorch artifact.

The student keeps N of the teacher's layers (evenly spaced, always ending with the last; embeddings, pooler and
classifier copied), or is the model given with --student. It learns from the teacher's softened logits and the
labels: alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE; --hidden-weight adds a hidden-state MSE
over the layer map. Training uses the same Trainer set-up as `slimship train` (AMP, early stopping on the
student's validation metric, checkpoints, --resume, DDP under torchrun).

The artifact records the teacher's and the student's validation metrics and their difference, and the
parameters and MACs of both.

Examples:
  slimship distill --teacher runs/teacher --data examples/sentiment --out runs/student --layers 3
  slimship distill --teacher runs/teacher --data data/ --out runs/student --layers 0,2,5 --hidden-weight 1
  slimship distill --teacher runs/teacher --data data/ --out runs/student --student small-config.json
"""

from slimship.core.errors import UserError
from slimship.commands import add_data_arguments, add_training_arguments, require


def layers_option(text: str):
    """"3" keeps three evenly spaced layers; "0,2,5" keeps exactly those (0-based); "0," keeps layer 0 only."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--layers {text!r}: give a number of layers (3) or a list of 0-based indices (0,2,5)") from None
    if "," in str(text):
        return values
    if len(values) != 1:
        raise UserError(f"--layers {text!r}: give a number of layers (3) or a list of 0-based indices (0,2,5)")
    return values[0]


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", help="the teacher: a PyTorch artifact (from slimship train)")
    parser.add_argument("--out", help="artifact directory to write")
    group = parser.add_argument_group("distillation")
    group.add_argument("--layers", default="3",
                       help="student depth: N teacher layers evenly spaced (default 3), or a comma list of "
                            "0-based layer indices to keep, e.g. 0,2,5 (one index: 0,)")
    group.add_argument("--student",
                       help="instead of dropping layers: a smaller model's config.json (random init), a "
                            "checkpoint dir or a built-in name; it must use the teacher's tokenizer")
    group.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T (default: 2)")
    group.add_argument("--alpha", type=float, default=0.5,
                       help="weight of the distillation term; 1 - alpha goes to the labels (default: 0.5)")
    group.add_argument("--hidden-weight", type=float, default=0.0,
                       help="weight of the hidden-state MSE over the layer map (default 0: off)")
    group.add_argument("--teacher-logits", choices=["cache", "online"], default="cache",
                       help="compute the teacher's logits once before training (cache, faster on CPU) or in "
                            "every step (online) (default: cache)")
    add_data_arguments(parser)
    add_training_arguments(parser)
    require(parser, "teacher", "data", "out")


def run(args) -> int:
    from slimship.compress.distill import DistillConfig, distill

    values = dict(vars(args))
    values["layers"] = layers_option(values.get("layers") or "3")
    distill(args.teacher, args.data, args.out, DistillConfig.from_dict(values))
    return 0
