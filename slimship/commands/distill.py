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

from slimship.commands import add_data_options, add_training_options, data_config, field_names, require
from slimship.compress.config import DistillConfig
from slimship.core.config import add_options, from_args
from slimship.train.config import TrainConfig


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", help="the teacher: a PyTorch artifact (from slimship train)")
    parser.add_argument("--out", help="artifact directory to write")
    add_options(parser, DistillConfig, skip=field_names(TrainConfig), title="distillation")
    add_data_options(parser)
    add_training_options(parser)
    require(parser, "teacher", "data", "out")


def run(args) -> int:
    from slimship.compress.distill import distill

    distill(args.teacher, args.out, data_config(args), from_args(args, DistillConfig))
    return 0
