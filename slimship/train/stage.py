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
from slimship.core.config import DataConfig
from slimship.train import recipe
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
    train_split = loaded.splits["train"]
    train_set = TokenizedDataset(tokenizer, train_split.inputs, train_split.labels, cfg.max_length)
    val = loaded.splits.get("validation")
    eval_set = TokenizedDataset(tokenizer, val.inputs, val.labels, cfg.max_length) if val else None
    work_dir = work_dir_for(out)
    trainer = recipe.build_trainer(net, tokenizer, train_set, eval_set, cfg, work_dir, loaded.labels, amp)
    outcome = recipe.run(trainer, cfg, work_dir)

    if recipe.is_main_process():
        net = recipe.trained_model(trainer)
        metrics, thresholds = evaluate_with_thresholds(net, tokenizer, loaded, cfg.max_length, cfg.eval_batch_size)
        config = {"model": model, **data.options(), **cfg.as_dict()}
        with artifact.create(out, "train", format="pytorch", config=config) as art:
            save_model_artifact(art, net, tokenizer)
            art.manifest.update(
                labels=loaded.labels, **task_record(loaded, thresholds), max_length=cfg.max_length,
                base_model=model, metrics=metrics, amp=amp,
                early_stopping=outcome, parameters=count_parameters(net),
                data={name: {"source": s.source, "rows": len(s), "skipped_empty": s.skipped_empty}
                      for name, s in loaded.splits.items()},
            )
        recipe.print_summary(f"trained {out}", outcome, amp, metrics.get("validation"))
        shutil.rmtree(work_dir, ignore_errors=True)  # the artifact is safely written; checkpoints are spent
    recipe.finish_distributed()
    return out
