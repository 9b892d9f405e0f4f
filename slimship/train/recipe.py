"""The shared Trainer set-up: AMP, early stopping, LR schedule, checkpoints, resume and DDP.

The train, distill and prune stages all build their Trainer here, so they behave alike: the same AMP choice,
the same early stopping on a validation metric with the best checkpoint restored, the same checkpoint/resume
rules and the same summary. Run under ``torchrun`` and the Trainer does DDP without code changes.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimship.core.errors import UserError
from slimship.core.artifact import stage_log
from slimship.core.metrics import sigmoid, summary_line, task_metrics, tune_thresholds
from slimship.core.tasks import CLASSIFICATION, MAIN_METRIC, MULTILABEL, PROBLEM_TYPE, REGRESSION, split_pairs

from slimship.train.config import AMP_MODES, METRICS, SCHEDULES, TrainConfig  # noqa: F401 (re-exported)


# --- AMP -----------------------------------------------------------------------------------------------------


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AVX512-BF16 / AMX on x86, the BF16 extension on arm64)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", " bf16"))


def resolve_amp(requested: str) -> str:
    """The mixed-precision mode to train with: ``fp16``, ``bf16`` or ``off``.

    auto: on CUDA, bf16 where the GPU supports it, else fp16 with gradient scaling; on CPU, bf16 autocast where
    the CPU has native bf16, else off (emulated bf16 is slower than fp32).
    """
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "off"
    if requested == "fp16" and not cuda:
        raise UserError("--amp fp16 needs a CUDA GPU (fp16 gradient scaling is CUDA-only); on CPU use bf16 or off")
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("--amp bf16: this GPU has no bf16 support; use fp16 or auto")
    return requested


# --- data ----------------------------------------------------------------------------------------------------


class TokenizedDataset(torch.utils.data.Dataset):
    """Inputs (texts, or (text, text_pair) tuples) tokenized once, unpadded: the collator pads each batch to
    its own longest row. Labels are the task's targets (ids, 0/1 rows, or floats)."""

    def __init__(self, tokenizer, texts: list, labels: list | None, max_length: int):
        first, pairs = split_pairs(texts)
        self.encodings = tokenizer(first, pairs, truncation=True, max_length=max_length)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def task_of_model(model) -> str:
    """The task of a sequence-classification model, from its config's problem_type (set when it was made)."""
    problem = getattr(model.config, "problem_type", None)
    return next((task for task, name in PROBLEM_TYPE.items() if name == problem), CLASSIFICATION)


# The metrics computed at each evaluation, by task; "f1" is macro-F1.
EVAL_METRICS = {CLASSIFICATION: ("accuracy", "f1"), MULTILABEL: ("micro_f1", "f1"),
                REGRESSION: ("pearson", "spearman", "mse")}


def metric_key(metric: str, task: str) -> str:
    """The eval_* key the Trainer selects checkpoints by; a metric the task does not have is a UserError."""
    if metric == "loss":
        return "eval_loss"
    name = MAIN_METRIC[task] if metric == "main" else metric
    if name not in EVAL_METRICS[task]:
        raise UserError(f"--metric {metric}: a {task} model has {', '.join(('main',) + EVAL_METRICS[task])} or "
                        "loss")
    return f"eval_{name}"


def compute_metrics_for(labels: list[str], task: str = CLASSIFICATION):
    """Validation metrics during training. Multilabel: at per-label thresholds tuned on these rows, as the saved
    model's are tuned on validation. At a fixed 0.5, a model still learning many rare labels predicts none of
    them for its first epochs (GoEmotions, 28 labels: micro-F1 0.0 after one epoch), and early stopping would
    end the run on that plateau."""
    def compute(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        thresholds = tune_thresholds(sigmoid(logits), eval_pred.label_ids) if task == MULTILABEL else None
        metrics = task_metrics(task, logits, eval_pred.label_ids, labels, thresholds)
        if task == REGRESSION:
            return {k: metrics[k] for k in ("pearson", "spearman", "mse")}
        main = MAIN_METRIC[task]
        return {main: metrics[main], "f1": metrics["macro_f1"]}
    return compute


# --- the Trainer ---------------------------------------------------------------------------------------------


def distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def training_arguments(cfg: TrainConfig, work_dir: Path, amp: str, has_eval: bool, task: str = CLASSIFICATION):
    from transformers import TrainingArguments

    per_epoch = cfg.eval_steps <= 0
    strategy = "epoch" if per_epoch else "steps"
    metric = metric_key(cfg.metric, task)
    lower_is_better = metric in ("eval_loss", "eval_mse")
    scheduler, scheduler_kwargs = "linear", {}
    if cfg.lr_schedule == "plateau":
        # The classic recipe: halve the LR when the validation metric stops improving for an evaluation.
        scheduler = "reduce_lr_on_plateau"
        scheduler_kwargs = {"mode": "min" if lower_is_better else "max", "factor": 0.5, "patience": 0}
    return TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio if cfg.lr_schedule == "linear" else 0.0,
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        bf16=amp == "bf16",
        gradient_checkpointing=cfg.gradient_checkpointing,
        # Non-reentrant: works when the embeddings are frozen (LoRA) without forcing their outputs to need grads.
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        fp16=amp == "fp16",
        eval_strategy=strategy if has_eval else "no",
        save_strategy=strategy,
        eval_steps=None if per_epoch else cfg.eval_steps,
        save_steps=None if per_epoch else cfg.eval_steps,
        logging_steps=max(1, cfg.eval_steps // 2) if not per_epoch else 50,
        load_best_model_at_end=has_eval,
        metric_for_best_model=metric if has_eval else None,
        greater_is_better=not lower_is_better,
        save_total_limit=2,
        save_safetensors=True,
        group_by_length=True,          # length-grouped batches: little padding with dynamic padding
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=cfg.quiet,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_backend=None if torch.cuda.is_available() or not distributed() else "gloo",
        use_cpu=not torch.cuda.is_available(),
    )


def build_trainer(model, tokenizer, train_data: TokenizedDataset, eval_data: TokenizedDataset | None,
                  cfg: TrainConfig, work_dir: Path, labels: list[str], amp: str, trainer_class=None,
                  **trainer_kwargs):
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer

    task = task_of_model(model)
    args = training_arguments(cfg, work_dir, amp, has_eval=eval_data is not None, task=task)
    callbacks = []
    if eval_data is not None and cfg.patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.patience,
                                               early_stopping_threshold=cfg.min_delta))
    return (trainer_class or Trainer)(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_for(labels, task),
        callbacks=callbacks,
        **trainer_kwargs,
    )


def last_checkpoint(work_dir: Path) -> str | None:
    """The newest complete checkpoint. A kill can land while a checkpoint is being written; the Trainer writes
    trainer_state.json last, so a checkpoint without it is incomplete and is skipped."""
    if not work_dir.is_dir():
        return None
    checkpoints = [p for p in work_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    complete = [p for p in checkpoints if (p / "trainer_state.json").is_file()]
    if not complete:
        return None
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1])))


def prepare_work_dir(work_dir: Path, resume: bool) -> str | None:
    """The checkpoint to resume from (with --resume), else a clean work dir."""
    checkpoint = last_checkpoint(work_dir)
    if resume and checkpoint:
        stage_log(f"resuming from {checkpoint}")
        return checkpoint
    if resume:
        stage_log(f"--resume: no checkpoint in {work_dir}; starting from the beginning")
    elif checkpoint and (not distributed() or int(os.environ.get("RANK", "0")) == 0):
        stage_log(f"discarding checkpoints of an earlier run in {work_dir} (use --resume to continue one)")
        shutil.rmtree(work_dir, ignore_errors=True)
    return None


def run(trainer, cfg: TrainConfig, work_dir: Path) -> dict[str, Any]:
    """Train (resuming when asked) and return the outcome: epochs run, early stop, best metric and epoch."""
    checkpoint = prepare_work_dir(work_dir, cfg.resume)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    state = trainer.state
    planned_steps = state.max_steps
    metric_key = trainer.args.metric_for_best_model
    best_epoch = None
    if state.best_model_checkpoint:
        best_step = int(state.best_model_checkpoint.rstrip("/").rsplit("-", 1)[-1])
        best_epoch = next((round(h["epoch"], 2) for h in state.log_history
                           if h.get("step") == best_step and metric_key in h), None)
    evaluations = [{"epoch": round(h["epoch"], 2), "step": h["step"], metric_key: h[metric_key]}
                   for h in state.log_history if metric_key and metric_key in h]
    return {
        "epochs_run": round(state.epoch or 0.0, 2),
        "steps": state.global_step,
        "planned_steps": planned_steps,
        "stopped_early": state.global_step < planned_steps,
        "best_metric": {"name": metric_key, "value": state.best_metric} if metric_key else None,
        "best_epoch": best_epoch,
        "evaluations": evaluations,
        "train_loss": result.training_loss,
        "train_seconds": round(time.time() - started, 1),
        "resumed_from": checkpoint,
    }


def trained_model(trainer):
    """The trained model without accelerate's mixed-precision forward wrapper.

    Under AMP the Trainer's model keeps running its forward in bf16/fp16 autocast after training; the saved
    weights are fp32 and reload without it, so an artifact's metrics must come from the unwrapped model.
    """
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def finish_distributed() -> None:
    """Under torchrun: wait for every rank, then tear the process group down so the launcher sees success."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def print_summary(title: str, outcome: dict[str, Any], amp: str, metrics: dict[str, Any] | None) -> None:
    best = outcome.get("best_metric") or {}
    lines = [
        f"== {title} ==",
        f"  epochs run      {outcome['epochs_run']} ({outcome['steps']} of {outcome['planned_steps']} steps)",
        f"  stopped early   {'yes' if outcome['stopped_early'] else 'no'}",
        f"  best {best.get('name', 'metric'):<10} {best.get('value')} (epoch {outcome.get('best_epoch')})",
        f"  AMP             {amp}",
        f"  time            {outcome['train_seconds']} s",
    ]
    if metrics:
        lines.append(f"  validation      {summary_line(metrics)}")
    print("\n".join(lines), flush=True)
