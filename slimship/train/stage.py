"""The train stage: fine-tune a pretrained model on labelled text and write a PyTorch artifact.

    train("minilm", "runs/teacher", DataConfig("data/"), TrainConfig(epochs=3)) -> Path("runs/teacher")

The artifact holds the model (safetensors + config), the tokenizer, and a manifest with the labels, max_length,
validation (and test) metrics, the AMP mode and the early-stopping outcome.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from slimship.core import artifact
from slimship.core.artifact import stage_log
from slimship.core.errors import UserError
from slimship.core.config import DataConfig
from slimship.train import families, recipe
from slimship.train.artifacts import (count_parameters, evaluate_with_thresholds, load_stage_data, save_model_artifact,
                                      task_record, work_dir_for)
from slimship.train.models import load_classifier, load_tokenizer
from slimship.train.recipe import TokenizedDataset, TrainConfig


def train(model: str, out: str | Path, data: DataConfig, cfg: TrainConfig, *,
          trust_remote_code: bool = False) -> Path:
    cfg.check()
    data.check()
    out = Path(out)
    amp = recipe.resolve_amp(cfg.amp)
    stage_log(f"AMP mode: {amp} (asked: {cfg.amp})")
    loaded = load_stage_data(data)
    if "validation" not in loaded.splits:
        stage_log("no validation split: early stopping is off and the last epoch's model is kept")
    tokenizer = load_tokenizer(model, trust_remote_code)
    stage_log(f"task: {loaded.task}" + (" on sentence pairs" if loaded.text_pairs else "")
              + f", {len(loaded.labels)} label(s)")
    net = load_classifier(model, loaded.labels, trust_remote_code=trust_remote_code, seed=cfg.seed, task=loaded.task)
    families.align_pad_id(net, tokenizer, "train")
    lora = None
    if cfg.lora_r:
        net, lora = with_lora(net, cfg)
    train_split = loaded.splits["train"]
    train_set = TokenizedDataset(tokenizer, train_split.inputs, train_split.labels, cfg.max_length)
    val = loaded.splits.get("validation")
    eval_set = TokenizedDataset(tokenizer, val.inputs, val.labels, cfg.max_length) if val else None
    work_dir = work_dir_for(out)
    trainer = recipe.build_trainer(net, tokenizer, train_set, eval_set, cfg, work_dir, loaded.labels, amp)
    outcome = recipe.run(trainer, cfg, work_dir)

    if recipe.is_main_process():
        net = recipe.trained_model(trainer)
        if lora is not None:   # export, prune and distill see a plain model of the family
            net = net.merge_and_unload()
        metrics, thresholds = evaluate_with_thresholds(net, tokenizer, loaded, cfg.max_length, cfg.eval_batch_size)
        config = {"model": model, **data.options(), **cfg.as_dict()}
        with artifact.create(out, "train", format="pytorch", config=config) as art:
            save_model_artifact(art, net, tokenizer)
            art.manifest.update(
                labels=loaded.labels, **task_record(loaded, thresholds), max_length=cfg.max_length,
                base_model=model, metrics=metrics, amp=amp,
                early_stopping=outcome, parameters=count_parameters(net), lora=lora,
                data={name: {"source": s.source, "rows": len(s), "skipped_empty": s.skipped_empty}
                      for name, s in loaded.splits.items()},
            )
        recipe.print_summary(f"trained {out}", outcome, amp, metrics.get("validation"))
        shutil.rmtree(work_dir, ignore_errors=True)  # the artifact is safely written; checkpoints are spent
    recipe.finish_distributed()
    return out


def with_lora(net, cfg: TrainConfig):
    """``net`` wrapped in LoRA adapters of rank ``cfg.lora_r`` on its family's projections (the classification
    head is trained in full: it starts random), and the record of what was adapted for the manifest."""
    from peft import LoraConfig, TaskType, get_peft_model

    family = families.family_of(net.config, "train --lora-r")
    if not family.lora_targets:
        raise UserError(f"train --lora-r: LoRA is not supported for the {family.name} family")
    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2.0 * cfg.lora_r
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=alpha, lora_dropout=0.05,
                        target_modules=list(family.lora_targets))
    total = count_parameters(net)
    net = get_peft_model(net, config)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    stage_log(f"LoRA rank {cfg.lora_r} (alpha {alpha:g}) on {', '.join(family.lora_targets)}: "
              f"{trainable:,} of {total:,} parameters trained")
    return net, {"r": cfg.lora_r, "alpha": alpha, "targets": list(family.lora_targets),
                 "trainable_parameters": trainable, "merged": True}
