"""The training options: what the train, distill and prune stages tell the Trainer (no torch here, so the
command line can be built from these fields without loading it)."""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from slimship.core.config import opt
from slimship.core.errors import UserError

Amp = Literal["auto", "fp16", "bf16", "off"]
Metric = Literal["main", "accuracy", "f1", "loss"]
Schedule = Literal["linear", "plateau"]
AMP_MODES = typing.get_args(Amp)
METRICS = typing.get_args(Metric)
SCHEDULES = typing.get_args(Schedule)


@dataclass
class FineTuneConfig:
    """The Trainer options every fine-tuning stage shares; how long to train is each stage's own."""

    batch_size: int = field(default=32, metadata=opt("training batch size per device"))
    eval_batch_size: int = field(default=64, metadata=opt("evaluation batch size"))
    learning_rate: float = field(default=5e-5, metadata=opt("peak learning rate", flags=("--lr",)))
    weight_decay: float = field(default=0.01, metadata=opt("AdamW weight decay"))
    warmup_ratio: float = field(default=0.06, metadata=opt("share of the steps spent warming up (linear)"))
    max_grad_norm: float = field(default=1.0, metadata=opt("gradient clipping"))
    lr_schedule: Schedule = field(default="linear", metadata=opt(
        "linear decay with warmup, or halve on a validation plateau"))
    amp: Amp = field(default="auto", metadata=opt(
        "mixed precision: auto = fp16+grad scaling on CUDA (bf16 where supported), bf16 autocast on CPUs with "
        "native bf16, else off"))
    metric: Metric = field(default="main", metadata=opt(
        "validation metric for early stopping and best-checkpoint choice: main = the task's main metric "
        "(accuracy; micro-F1 for multilabel; Pearson r for regression), f1 = macro-F1 (classification and "
        "multilabel), accuracy (classification), loss"))
    patience: int = field(default=2, metadata=opt(
        "evaluations without improvement before stopping; 0 turns early stopping off"))
    min_delta: float = field(default=0.0, metadata=opt("smallest change that counts as improvement"))
    eval_steps: int = field(default=0, metadata=opt(
        "evaluate and checkpoint every N steps (0: once per epoch)"))
    max_length: int = field(default=128, metadata=opt("tokens per text; longer texts are truncated"))
    seed: int = field(default=42, metadata=opt("seed of the model's initialisation and the training order"))
    gradient_checkpointing: bool = field(default=False, metadata=opt(
        "recompute each block's activations in the backward pass instead of keeping them: less memory for big "
        "models (decoder LLMs) at about a third more compute"))
    resume: bool = field(default=False, metadata=opt("continue from the last checkpoint of a crashed run"))
    quiet: bool = field(default=False, metadata=opt("no progress bars"))

    def check(self) -> None:
        if self.amp not in AMP_MODES:
            raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, not {self.amp!r}")
        if self.metric not in METRICS:
            raise UserError(f"--metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if self.lr_schedule not in SCHEDULES:
            raise UserError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, not {self.lr_schedule!r}")
        for name in ("batch_size", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.patience < 0:
            raise UserError("--patience must be 0 (off) or more")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> dict[str, Any]:
        """The settings that change what training produces (not whether it resumes, shows progress or
        recomputes activations)."""
        return {k: v for k, v in self.as_dict().items() if k not in ("resume", "quiet", "gradient_checkpointing")}


@dataclass
class TrainConfig(FineTuneConfig):
    """Options of the train and distill stages: the shared Trainer options and how long to train."""

    # A ceiling, not a plan: early stopping (patience 2) ends the run. At 3, a 77-class teacher stopped with
    # validation accuracy still climbing steeply; with 10 it early-stopped at epoch 9 at 92.8% (issue 14).
    epochs: float = field(default=10.0, metadata=opt("maximum epochs; early stopping usually ends the run sooner"))
    max_steps: int = field(default=-1, metadata=opt("stop after N optimizer steps (overrides --epochs)"))
    lora_r: int = field(default=0, metadata=opt(
        "train LoRA adapters of this rank on the family's attention and MLP projections (plus the full "
        "classification head) instead of every weight; merged into the weights before the artifact is saved. "
        "0: full fine-tuning"))
    lora_alpha: float | None = field(default=None, metadata=opt("LoRA scaling alpha (default: 2 x --lora-r)"))

    def check(self) -> None:
        super().check()
        if self.epochs <= 0 and self.max_steps <= 0:
            raise UserError("--epochs must be positive (or give --max-steps)")
        if self.lora_r < 0:
            raise UserError(f"--lora-r must be 0 (off) or a positive rank, not {self.lora_r}")


@dataclass
class TrainSource:
    """The pretrained model a teacher is fine-tuned from."""

    model: str = field(default="minilm", metadata=opt(
        "'minilm' (all-MiniLM-L6-v2, bundled), 'tiny' (random 2-layer BERT for tests), a local checkpoint dir, "
        "or a hub id when online"))
    trust_remote_code: bool = field(default=False, metadata=opt(
        "allow custom model code from the checkpoint (off by default)"))
