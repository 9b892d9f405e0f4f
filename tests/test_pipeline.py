"""`slimship run` end to end with `tiny`: every stage's artifact, skip on rerun, and survival of random kills."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from slimship.core import artifact
from tests.conftest import DEMO_DATA, ROOT, slimship_cmd

TINY_RUN = f"""
data: {DEMO_DATA}
model: tiny
max_length: 32
max_accuracy_drop: 100     # `tiny` is noisy; this test is about the chain, not the budget
train:
  epochs: 2
  learning_rate: 1.0e-3
  patience: 0
compress:
  latency_rows: 20
  throughput_rows: 64
  grid:
    layers: [1]
    prune: [{{}}]
    optimize: [none]
    quantize: [static]           # batch-invariant: the service answers as `slimship score` does
    embedding_bits: [8]
    include_teacher: false
    distill: {{epochs: 1, learning_rate: 1.0e-3}}
"""


@pytest.fixture()
def bento_home(tmp_path, monkeypatch):
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    return home


def run_cli(config: Path, out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(slimship_cmd("run", "--config", str(config), "--out", str(out), *extra),
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def assert_complete(out: Path) -> dict:
    state = json.loads((out / "pipeline.json").read_text())
    assert set(state["stages"]) >= {"train", "compress", "bento"}
    teacher = artifact.load(out / "teacher")
    model = artifact.load(out / "compress" / "model")
    assert model["format"] == "onnx" and model["labels"] == teacher["labels"]
    chain, path = [], out / "compress" / "model"          # follow parents back to the teacher
    while path is not None:
        m = artifact.load(path)
        chain.append(m["kind"])
        path = Path(m["parent"]["path"]) if m["parent"] else None
    assert chain[-1] == "train"
    for report in ("report.json", "report.md", "pareto.png"):
        assert (out / "compress" / report).is_file() and (out / report).is_file()
    assert json.loads((out / "report.json").read_text())["pipeline"]["bento"].startswith("slimship:")
    leftovers = [p for p in out.rglob(".*.tmp-*")]
    assert not leftovers, leftovers                        # no half-written artifact anywhere
    return state


@pytest.mark.slow
def test_run_end_to_end_then_rerun_skips_everything(tmp_path, bento_home):
    config = tmp_path / "run.yaml"
    config.write_text(TINY_RUN)
    out = tmp_path / "out"
    first = run_cli(config, out)
    assert first.returncode == 0, first.stderr[-3000:]
    state = assert_complete(out)
    assert state["stages"]["bento"]["result"].startswith("slimship:")
    assert "Serve it:" in first.stdout and "accuracy" in first.stdout.lower()

    again = run_cli(config, out)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("train", "compress", "bento"):
        assert f"{stage}: unchanged" in again.stderr

    # A change late in the chain reruns that stage only, never training.
    config.write_text(TINY_RUN.replace("quantize: [static]", "quantize: [none]"))
    changed = run_cli(config, out)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "train: unchanged" in changed.stderr and "compress: running" in changed.stderr
    assert_complete(out)


@pytest.mark.slow
def test_killed_at_random_points_then_rerun_completes(tmp_path, bento_home):
    config = tmp_path / "run.yaml"
    config.write_text(TINY_RUN)
    out = tmp_path / "out"
    for seed in (1, 2, 3):
        delay = random.Random(seed).uniform(3, 25)
        proc = subprocess.Popen(slimship_cmd("run", "--config", str(config), "--out", str(out)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                                start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)               # the whole process group, as a crash would
        proc.wait()
    done = run_cli(config, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_complete(out)


@pytest.mark.slow
@pytest.mark.container
def test_run_to_image_then_http_prediction_equals_score(tmp_path, bento_home):
    import container_host as host
    from tests.test_container import TEXTS, free_port, http_json

    builder = host.builder_or_skip()
    config = tmp_path / "run.yaml"
    config.write_text(TINY_RUN)
    out = tmp_path / "out"
    tag = f"slimship-e2e:{os.getpid()}"
    done = run_cli(config, out, "--image", "--image-tag", tag, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    state = assert_complete(out)
    assert state["stages"]["image"]["result"]["tag"] == tag

    inputs = tmp_path / "texts.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    scored = subprocess.run(slimship_cmd("score", "--model", str(out / "compress" / "model"), "--input",
                                         str(inputs), "--output", str(tmp_path / "scores.jsonl"), "--quiet"),
                            capture_output=True, text=True, cwd=ROOT)
    assert scored.returncode == 0, scored.stderr[-2000:]
    expected = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]

    port = free_port()
    container = host.run_container(builder, tag, port=port)
    try:
        host.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)
        status, answers = http_json(f"http://127.0.0.1:{port}/classify", {"texts": TEXTS})
    finally:
        host.remove_container(builder, container)
        subprocess.run([builder.runner, "rmi", "-f", tag], env=builder.env, capture_output=True)
    assert status == 200 and len(answers) == len(TEXTS)
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    assert [a["score"] for a in answers] == pytest.approx([e["score"] for e in expected], abs=1e-5)
