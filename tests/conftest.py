"""Shared fixtures: the demo data, the real datasets (skipped when absent), and tiny artifacts built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
# Templated sentences a tiny random model learns in seconds (tests/data/make_sentiment.py); the demo itself runs
# on the real examples/sentiment set.
DEMO_DATA = ROOT / "tests" / "data" / "sentiment"
REAL_DEMO_DATA = ROOT / "examples" / "sentiment"

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing may come from a hub at test time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def slimship_cmd(*args: str) -> list[str]:
    """The CLI as a subprocess, with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "slimship", *args]


@pytest.fixture(scope="session")
def demo_data() -> Path:
    return DEMO_DATA


def shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not (path / "train.csv").is_file():
        pytest.skip(f"real dataset not available: {path} is absent (it lives in ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    return shared_dataset("sst2")


@pytest.fixture(scope="session")
def agnews_dir() -> Path:
    return shared_dataset("ag_news")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A `tiny` model trained briefly on the demo data: a valid PyTorch artifact for the later stages."""
    from slimship.core.config import DataConfig
    from slimship.train.recipe import TrainConfig
    from slimship.train.stage import train

    out = tmp_path_factory.mktemp("artifacts") / "tiny-teacher"
    cfg = TrainConfig(epochs=3, learning_rate=1e-3, batch_size=32, max_length=64, quiet=True, patience=0)
    return train("tiny", out, DataConfig(str(DEMO_DATA)), cfg)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_teacher, tmp_path_factory) -> Path:
    """The tiny teacher exported to an ONNX artifact."""
    from slimship.compress.export import export

    return export(tiny_teacher, tmp_path_factory.mktemp("artifacts") / "tiny-onnx")
