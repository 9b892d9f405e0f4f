"""The train stage: fine-tune a pretrained model on labelled text and write a PyTorch artifact.

    train("minilm", "data/", "runs/teacher", TrainConfig(epochs=3)) -> Path("runs/teacher")

The artifact holds the model (safetensors + config), the tokenizer, and a manifest with the labels, max_length,
validation (and test) metrics, the AMP mode and the early-stopping outcome.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from slimship import manifest as artifact
from slimship.data import LabelledData, load_data
from slimship.manifest import stage_log
from compress.profile import count_parameters
from slimship.metrics import classification_metrics
from train import recipe
from train.models import load_classifier, load_tokenizer
from train.recipe import TokenizedDataset, TrainConfig


def work_dir_for(out: Path) -> Path:
    """Checkpoints live beside the artifact, so --resume finds them after a crash; removed on success."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.work"


def load_stage_data(data: str | Path, cfg: TrainConfig, labels: list[str] | None = None) -> LabelledData:
    loaded = load_data(data, text_column=cfg.text_column, label_column=cfg.label_column, labels=labels,
                       validation_fraction=cfg.validation_fraction, seed=cfg.seed,
                       max_train_rows=cfg.max_train_rows)
    for name, split in loaded.splits.items():
        if split.skipped_empty:
            stage_log(f"{split.source}: skipped {split.skipped_empty} rows with empty text")
    if cfg.max_eval_rows:
        for name in ("validation", "test"):
            if name in loaded.splits:
                split = loaded.splits[name]
                split.texts, split.labels = split.texts[:cfg.max_eval_rows], split.labels[:cfg.max_eval_rows]
    return loaded


def predict_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """Logits for texts, batched, sorted by length so each batch pads little; returned in input order."""
    import torch

    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(**batch).logits.float().cpu().numpy()
            for i, row in zip(idx, logits):
                out[i] = row
    return np.stack(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)


def evaluate_model(model, tokenizer, data: LabelledData, max_length: int, batch_size: int = 64) -> dict[str, Any]:
    """Metrics of a model on each evaluation split present (validation, test)."""
    results = {}
    for name in ("validation", "test"):
        if name in data.splits:
            split = data.splits[name]
            logits = predict_logits(model, tokenizer, split.texts, max_length, batch_size)
            results[name] = classification_metrics(logits.argmax(-1), split.labels, data.labels)
    return results


def save_model_artifact(builder, model, tokenizer) -> None:
    model.save_pretrained(builder.dir, safe_serialization=True)
    tokenizer.save_pretrained(builder.dir)


def train(model: str, data: str | Path, out: str | Path, cfg: TrainConfig, *,
          trust_remote_code: bool = False) -> Path:
    cfg.check()
    out = Path(out)
    amp = recipe.resolve_amp(cfg.amp)
    stage_log(f"AMP mode: {amp} (asked: {cfg.amp})")
    loaded = load_stage_data(data, cfg)
    if "validation" not in loaded.splits:
        stage_log("no validation split: early stopping is off and the last epoch's model is kept")
    tokenizer = load_tokenizer(model, trust_remote_code)
    net = load_classifier(model, loaded.labels, trust_remote_code=trust_remote_code, seed=cfg.seed)
    train_set = TokenizedDataset(tokenizer, loaded.splits["train"].texts, loaded.splits["train"].labels, cfg.max_length)
    val = loaded.splits.get("validation")
    eval_set = TokenizedDataset(tokenizer, val.texts, val.labels, cfg.max_length) if val else None
    work_dir = work_dir_for(out)
    trainer = recipe.build_trainer(net, tokenizer, train_set, eval_set, cfg, work_dir, loaded.labels, amp)
    outcome = recipe.run(trainer, cfg, work_dir)

    if recipe.is_main_process():
        net = recipe.trained_model(trainer)
        metrics = evaluate_model(net, tokenizer, loaded, cfg.max_length, cfg.eval_batch_size)
        config = {"model": model, "data": str(data), **cfg.as_dict()}
        with artifact.create(out, "train", format="pytorch", config=config) as art:
            save_model_artifact(art, net, tokenizer)
            art.manifest.update(
                labels=loaded.labels, max_length=cfg.max_length, base_model=model, metrics=metrics, amp=amp,
                early_stopping=outcome, parameters=count_parameters(net),
                data={name: {"source": s.source, "rows": len(s), "skipped_empty": s.skipped_empty}
                      for name, s in loaded.splits.items()},
            )
        recipe.print_summary(f"trained {out}", outcome, amp, metrics.get("validation"))
        shutil.rmtree(work_dir, ignore_errors=True)  # the artifact is safely written; checkpoints are spent
    recipe.finish_distributed()
    return out


def load_pytorch_artifact(path: str | Path):
    """(manifest, model, tokenizer) of a verified PyTorch artifact."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest = artifact.load(path, format="pytorch")
    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    return manifest, model, tokenizer

