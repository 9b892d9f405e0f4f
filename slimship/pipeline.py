"""`slimship run`: the whole chain from labelled data to a compressed, verified model, a bento and an image.

    train -> compress (distil/prune/export/quantize, budgeted) -> bento -> image (with --image)

Each stage writes its own artifact under the output directory (``teacher/``, ``compress/`` with the chosen
model at ``compress/model``), each manifest pointing at its parent. A stage's *key* hashes its config, its
input data and its parent stage's key; ``pipeline.json`` records the key of every finished stage, so a rerun
skips stages whose inputs and config are unchanged. A crash or a change late in the chain never redoes
training, and a crashed training resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from slimship.core.errors import UserError
from slimship.core import artifact
from slimship.core.data import FORMATS
from slimship.core.artifact import stage_log

STATE_FILE = "pipeline.json"


@dataclass
class RunConfig:
    data: str = "examples/sentiment"
    model: str = "minilm"
    out: str = "runs/demo"
    max_accuracy_drop: float = 1.0
    image: bool = False
    image_tag: str | None = None
    train: dict[str, Any] = field(default_factory=dict)       # TrainConfig fields
    compress: dict[str, Any] = field(default_factory=dict)    # CompressConfig fields; `grid:` a Grid mapping or file


def data_fingerprint(data: str | Path) -> str:
    """sha256 over the data files (names and bytes), so edited data reruns the stages that read it."""
    path = Path(data)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in FORMATS) if path.is_dir() else [path]
    if not files or not all(p.is_file() for p in files):
        return hashlib.sha256(str(data).encode()).hexdigest()     # a hub name: its name is all we know
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        digest.update(artifact.sha256_file(p).encode())
    return digest.hexdigest()


def stage_key(name: str, config: Any, *inputs: str) -> str:
    blob = json.dumps({"stage": name, "config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Pipeline:
    """Runs stages in order, skipping any whose key matches a finished, intact output."""

    def __init__(self, out: Path):
        self.out = out
        self.state_path = out / STATE_FILE
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {"stages": {}}

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        os.replace(tmp, self.state_path)          # atomic: a kill never leaves a half-written state file

    def stage(self, name: str, key: str, run: Callable[[], Any], intact: Callable[[Any], bool]) -> Any:
        done = self.state["stages"].get(name)
        if done and done["key"] == key and intact(done["result"]):
            stage_log(f"{name}: unchanged since {done['finished']}, skipped")
            return done["result"]
        stage_log(f"{name}: running")
        started = time.time()
        result = run()
        self.state["stages"][name] = {"key": key, "result": result, "seconds": round(time.time() - started, 1),
                                      "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._save()
        return result


def _artifact_intact(path: str) -> bool:
    try:
        artifact.load(path)
        return True
    except UserError:
        return False


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    from slimship.compress.search import CompressConfig, Grid, compress, load_grid
    from slimship.train.recipe import TrainConfig
    from slimship.train.stage import train

    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(out)
    data_key = data_fingerprint(cfg.data)

    train_cfg = TrainConfig.from_dict(cfg.train)
    train_cfg.check()
    teacher_dir = out / "teacher"
    train_key = stage_key("train", {"model": cfg.model, **train_cfg.as_dict()}, data_key)

    def run_train() -> str:
        train_cfg.resume = True          # a crashed earlier run left checkpoints: continue from them
        train(cfg.model, cfg.data, teacher_dir, train_cfg)
        return str(teacher_dir)

    pipe.stage("train", train_key, run_train, _artifact_intact)

    compress_values = dict(cfg.compress)
    grid = compress_values.pop("grid", None)
    grid = load_grid(grid) if isinstance(grid, str) else Grid(**(grid or {}))
    compress_train = TrainConfig.from_dict({**cfg.train, **compress_values.pop("train", {})})
    compress_cfg = CompressConfig(max_accuracy_drop=cfg.max_accuracy_drop, grid=grid, train=compress_train,
                                  **compress_values)
    compress_cfg.check()
    compress_dir = out / "compress"
    compress_key = stage_key("compress", {"max_accuracy_drop": cfg.max_accuracy_drop, "grid": grid.__dict__,
                                          "train": compress_train.as_dict(), **compress_values}, train_key, data_key)

    def run_compress() -> str:
        compress(teacher_dir, cfg.data, compress_dir, compress_cfg)
        return str(compress_dir / "model")

    model_dir = pipe.stage("compress", compress_key, run_compress, _artifact_intact)

    from slimship.serve.store import build_bento

    bento_key = stage_key("bento", {}, compress_key, artifact.manifest_digest(model_dir))
    bento_tag = pipe.stage("bento", bento_key, lambda: build_bento(model_dir), _bento_exists)

    result = {"teacher": str(teacher_dir), "compress": str(compress_dir), "model": model_dir, "bento": bento_tag}
    if cfg.image:
        from slimship import containers

        image_key = stage_key("image", {"tag": cfg.image_tag}, bento_key)
        result["image"] = pipe.stage("image", image_key, lambda: _build_image(containers, bento_tag, cfg),
                                     lambda r: containers.image_exists(r["tag"]))
    _write_run_report(out, compress_dir, result)
    return result


def _write_run_report(out: Path, compress_dir: Path, result: dict[str, Any]) -> None:
    """The run's own report.json/md/png: the compression report plus what the later stages produced."""
    from slimship.core.report import load_report, write_report

    report = load_report(compress_dir)
    report["pipeline"] = {k: v for k, v in result.items() if k != "compress"}
    write_report(out, report)


def _bento_exists(tag: str) -> bool:
    try:
        import bentoml

        bentoml.get(tag)
        return True
    except Exception:  # bentoml raises NotFound or a store error
        return False


def _build_image(containers, bento_tag: str, cfg: RunConfig) -> dict[str, Any]:
    return containers.containerize(bento=bento_tag, tag=cfg.image_tag)
