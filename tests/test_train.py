"""The train stage, for real: Trainer on the tiny model, early stopping, resume after a kill, AMP, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slimship.core import artifact
from tests.conftest import DEMO_DATA, ROOT, slimship_cmd
from slimship.train import recipe
from slimship.core.config import DataConfig
from slimship.train.recipe import TrainConfig
from slimship.train.artifacts import work_dir_for
from slimship.train.stage import train


def test_tiny_trains_and_loss_drops(tmp_path):
    cfg = TrainConfig(epochs=4, learning_rate=1e-3, max_length=64, patience=0, quiet=True)
    out = train("tiny", tmp_path / "model", DataConfig(str(DEMO_DATA)), cfg)
    m = artifact.load(out)
    losses = [e["eval_accuracy"] for e in m["early_stopping"]["evaluations"]]
    assert len(losses) == 4
    val = m["metrics"]["validation"]
    assert val["accuracy"] > 0.7, val                  # the demo set is learnable even for `tiny`
    assert set(val) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}
    assert sum(map(sum, val["confusion_matrix"])) == val["n"] == 200
    assert m["labels"] == ["negative", "positive"] and m["max_length"] == 64
    assert "model.safetensors" in m["files"] and not any(f.endswith(".bin") for f in m["files"])
    assert m["amp"] in ("bf16", "off") and m["versions"]["torch"].startswith("2.")
    assert not work_dir_for(out).exists()              # checkpoints are removed once the artifact is safe


def test_training_loss_decreases_within_a_run(tmp_path):
    from transformers import TrainerCallback

    losses = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    from slimship.core.data import load_data
    from slimship.train.models import load_classifier, load_tokenizer
    from slimship.train.recipe import TokenizedDataset

    data = load_data(DEMO_DATA)
    tok = load_tokenizer("tiny")
    model = load_classifier("tiny", data.labels)
    cfg = TrainConfig(epochs=3, learning_rate=1e-3, max_length=64, patience=0, eval_steps=22, quiet=True)
    ds = TokenizedDataset(tok, data.splits["train"].texts, data.splits["train"].labels, 64)
    trainer = recipe.build_trainer(model, tok, ds, None, cfg, tmp_path / "work", data.labels, "off")
    trainer.add_callback(Record())
    trainer.args.logging_steps = 11
    trainer.train()
    assert len(losses) >= 6 and losses[-1] < losses[0] * 0.8, losses


def test_a_pretrained_models_new_head_follows_the_seed_alone(tmp_path):
    """Loading a checkpoint with a new classification head draws the head from --seed, whatever the process's
    random state was before: the same seed gives the same head, another seed another one."""
    import torch

    from slimship.train.models import load_classifier

    load_classifier("tiny", ["a", "b", "c"], seed=1).save_pretrained(tmp_path)
    heads = []
    for before, seed in ((123, 7), (456, 7), (123, 8)):
        torch.manual_seed(before)
        torch.rand(1000)
        heads.append(load_classifier(str(tmp_path), ["x", "y"], seed=seed).classifier.weight.detach().clone())
    assert heads[0].shape == (2, heads[0].shape[1])
    assert torch.equal(heads[0], heads[1])
    assert not torch.equal(heads[0], heads[2])


def test_early_stopping_restores_the_best_model(tmp_path):
    # A large learning rate and evaluation every 4 steps: accuracy soon stops improving, patience 1 fires.
    cfg = TrainConfig(max_steps=400, learning_rate=3e-3, eval_steps=4, patience=1, max_length=48,
                      batch_size=16, quiet=True)
    m = artifact.load(train("tiny", tmp_path / "model", DataConfig(str(DEMO_DATA)), cfg))
    es = m["early_stopping"]
    assert es["stopped_early"] and es["steps"] < 400
    history = [e["eval_accuracy"] for e in es["evaluations"]]
    assert es["best_metric"]["value"] == max(history)
    # The saved model is the best checkpoint, not the last one evaluated.
    assert m["metrics"]["validation"]["accuracy"] == pytest.approx(max(history), abs=1e-9)
    best_index = history.index(max(history))
    assert es["best_epoch"] == es["evaluations"][best_index]["epoch"]


def test_plateau_schedule_and_loss_metric_run(tmp_path):
    cfg = TrainConfig(epochs=2, lr_schedule="plateau", metric="loss", learning_rate=1e-3, max_length=48,
                      quiet=True)
    m = artifact.load(train("tiny", tmp_path / "model", DataConfig(str(DEMO_DATA)), cfg))
    assert m["early_stopping"]["best_metric"]["name"] == "eval_loss"
    assert m["config"]["lr_schedule"] == "plateau"


def test_amp_resolution_and_bf16_on_cpu(tmp_path):
    assert recipe.resolve_amp("off") == "off"
    assert recipe.resolve_amp("auto") == ("bf16" if recipe.cpu_supports_bf16() else "off")
    from slimship.core.errors import UserError
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        recipe.resolve_amp("fp16")
    cfg = TrainConfig(max_steps=6, amp="bf16", max_length=32, patience=0, quiet=True)
    m = artifact.load(train("tiny", tmp_path / "model", DataConfig(str(DEMO_DATA)), cfg))
    assert m["amp"] == "bf16" and m["early_stopping"]["steps"] == 6


def _wait_for_checkpoint(work: Path, proc, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [p for p in work.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        if done:
            return done[0]
        if proc.poll() is not None:
            raise AssertionError(f"training ended before any checkpoint: {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_resume_after_a_real_kill(tmp_path):
    out = tmp_path / "model"
    args = ["train", "--model", "tiny", "--data", str(DEMO_DATA), "--out", str(out), "--max-steps", "150",
            "--eval-steps", "10", "--patience", "0", "--max-length", "32", "--batch-size", "8", "--quiet"]
    proc = subprocess.Popen(slimship_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    checkpoint = _wait_for_checkpoint(work_dir_for(out), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()                             # nothing half-written where the artifact goes
    done = subprocess.run(slimship_cmd(*args, "--resume"), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    es = artifact.load(out)["early_stopping"]
    assert es["resumed_from"] and int(es["resumed_from"].rsplit("-", 1)[1]) >= int(checkpoint.name.split("-")[1])
    assert es["steps"] == 150


@pytest.mark.slow
def test_torchrun_ddp_on_cpu(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "slimship",
         "train", "--model", "tiny", "--data", str(DEMO_DATA), "--out", str(out), "--max-steps", "8",
         "--max-length", "32", "--quiet", "--patience", "0"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = artifact.load(out)
    assert m["early_stopping"]["steps"] == 8
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2


def test_yaml_config_and_cli_precedence(tmp_path):
    from slimship.cli import parse_args

    config = tmp_path / "c.yaml"
    config.write_text("model: tiny\ndata: somewhere\nepochs: 7\ntrain:\n  max-length: 40\n"
                      "score:\n  batch-size: 5\n")
    args = parse_args(["train", "--config", str(config), "--out", "x", "--epochs", "2"])
    assert (args.model, args.data, args.epochs, args.max_length, args.batch_size) == ("tiny", "somewhere", 2.0, 40, 32)
    config.write_text("epoch: 3\n")
    proc = subprocess.run(slimship_cmd("train", "--config", str(config), "--data", "d", "--out", "o"),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown key 'epoch' (did you mean 'epochs'?)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_required_options_and_help():
    proc = subprocess.run(slimship_cmd("train"), capture_output=True, text=True)
    assert proc.returncode == 2 and "--data, --out" in proc.stderr
    helped = subprocess.run(slimship_cmd("train", "--help"), capture_output=True, text=True)
    assert helped.returncode == 0 and "--amp" in helped.stdout and "empty text are skipped" in helped.stdout


@pytest.mark.slow
@pytest.mark.sst2
def test_minilm_on_sst2_beats_chance(sst2_dir, tmp_path):
    data = DataConfig(str(sst2_dir), max_train_rows=600, max_eval_rows=300)
    cfg = TrainConfig(epochs=1, max_length=64, learning_rate=2e-4,
                      batch_size=16, quiet=True, patience=0)
    m = artifact.load(train("minilm", tmp_path / "teacher", data, cfg))
    acc = m["metrics"]["validation"]["accuracy"]
    print(f"minilm, 600 SST-2 rows, 1 epoch: validation accuracy {acc:.3f}")
    assert acc > 0.65
