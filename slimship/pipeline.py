"""`slimship run`: the whole chain from labelled data to a compressed, verified model, a bento and an image.

    train -> compress (distil/prune/export/quantize, budgeted) -> bento -> image (with --image)

Each stage writes its own artifact under the output directory (``teacher/``, ``compress/`` with the chosen
model at ``compress/model``), each manifest pointing at its parent. A stage's *key* hashes its config, its
input data and its parent stage's key; ``pipeline.json`` records the key of every finished stage, so a rerun
skips stages whose inputs and config are unchanged. A crash or a change late in the chain never redoes
training, and a crashed training resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from slimship.compress.config import CompressConfig
from slimship.core import artifact
from slimship.core.artifact import stage_log
from slimship.core.config import DataConfig, content_key, opt
from slimship.core.errors import UserError
from slimship.train.config import TrainConfig, TrainSource

STATE_FILE = "pipeline.json"


@dataclass
class RunConfig:
    model: str = field(default=TrainSource.model, metadata=opt("pretrained model to fine-tune"))
    out: str = field(default="runs/demo", metadata=opt("output directory"))
    image: bool = field(default=False, metadata=opt("also build the container image"))
    image_tag: str | None = field(default=None, metadata=opt("image name:tag (default: derived from the bento)"))
    data: DataConfig = field(default_factory=DataConfig)                 # the teacher's data
    train: TrainConfig = field(default_factory=TrainConfig)              # the teacher's training
    compress_data: DataConfig = field(default_factory=DataConfig)        # the search's data (usually the same)
    compress: CompressConfig = field(default_factory=CompressConfig)


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
    from slimship.compress.search import compress
    from slimship.train.stage import train

    for data in (cfg.data, cfg.compress_data):
        data.check()
    cfg.train.check()
    cfg.compress.check()
    out = Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(out)

    # A stage's key: its config, the data's content and the previous stage's key (contents, never paths).
    teacher_dir = out / "teacher"
    train_key = content_key({"stage": "train", "model": cfg.model, "config": cfg.train.key(),
                             "data": cfg.data.fingerprint()})

    def run_train() -> str:
        cfg.train.resume = True          # a crashed earlier run left checkpoints: continue from them
        train(cfg.model, teacher_dir, cfg.data, cfg.train)
        return str(teacher_dir)

    pipe.stage("train", train_key, run_train, _artifact_intact)

    compress_dir = out / "compress"
    compress_config = {**asdict(cfg.compress), "train": cfg.compress.train.key()}
    if cfg.compress.unlabeled:   # its contents, like the data's
        compress_config["unlabeled"] = artifact.sha256_file(Path(cfg.compress.unlabeled))
    compress_key = content_key({"stage": "compress", "config": compress_config,
                                "data": cfg.compress_data.fingerprint(), "teacher": train_key})

    def run_compress() -> str:
        compress(teacher_dir, compress_dir, cfg.compress_data, cfg.compress)
        return str(compress_dir / "model")

    model_dir = pipe.stage("compress", compress_key, run_compress, _artifact_intact)

    from slimship.serve.store import build_bento

    bento_key = content_key({"stage": "bento", "model": artifact.manifest_digest(model_dir)})
    bento_tag = pipe.stage("bento", bento_key, lambda: build_bento(model_dir), _bento_exists)

    result = {"teacher": str(teacher_dir), "compress": str(compress_dir), "model": model_dir, "bento": bento_tag}
    if cfg.image:
        from slimship import containers

        image_key = content_key({"stage": "image", "tag": cfg.image_tag, "bento": bento_key})
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
