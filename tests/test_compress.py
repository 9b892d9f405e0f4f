"""Budgeted compression end to end: tiny grid on the tiny teacher; a budget nothing meets; minilm on SST-2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import DEMO_DATA, slimship_cmd
from slimship.core import artifact
from slimship.core.config import DataConfig

TINY_GRID = """
layers: [1]
prune: [{}, {heads: 0.5, ffn: 0.5}]
optimize: [none]
quantize: [dynamic]
embedding_bits: [8]
include_teacher: true
distill: {learning_rate: 1.0e-3}
prune_options: {recovery_epochs: 1, learning_rate: 1.0e-3}
"""
# Heavy pruning with no recovery: accuracy collapses, so a zero-point budget cannot be met.
HOPELESS_GRID = """
layers: []
include_teacher: false
prune: [{heads: 0.75, ffn: 0.9, hidden: 0.5}, {heads: 0.99}]   # the second leaves no head: that branch fails
optimize: [none]
quantize: [dynamic]
embedding_bits: [8]
prune_options: {recovery_epochs: 0, importance: magnitude}
"""
# These grids are dynamic INT8 only (the quickest to build): the search may choose it only when allowed.
FAST = ["--allow-batch-dependent", "--max-length", "64", "--quiet", "--amp", "off", "--epochs", "1",
        "--max-train-rows", "300",
        "--latency-rows", "20", "--throughput-rows", "64"]


@pytest.fixture(scope="module")
def compressed(tiny_teacher, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("compress")
    (root / "grid.yaml").write_text(TINY_GRID)
    out = root / "out"
    result = subprocess.run(slimship_cmd("compress", "--teacher", str(tiny_teacher), "--data", str(DEMO_DATA),
                                         "--out", str(out), "--grid", str(root / "grid.yaml"),
                                         "--max-accuracy-drop", "1.0", *FAST), capture_output=True, text=True)
    return out, result


def test_compress_picks_a_candidate_within_budget(compressed):
    out, result = compressed
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for name in ("report.md", "pareto.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    names = [r["name"] for r in report["rows"]]
    # teacher, student, pruned student; each exported and quantized
    assert {"teacher", "L1", "L1-prune-ffn0.5-heads0.5", "teacher-onnx-int8-dynamic", "L1-onnx-int8-dynamic",
            "L1-prune-ffn0.5-heads0.5-onnx-int8-dynamic"} <= set(names)
    measured = [r for r in report["rows"] if r.get("throughput_rows_s")]
    assert len(measured) == 3
    chosen = next(r for r in report["rows"] if r["chosen"])
    assert chosen["name"] == report["chosen"] and chosen["within_budget"] and chosen["delta_points"] >= -1.0
    # the fastest of those within the budget, or the smallest file among those within --speed-tie (10%) of it
    inside = [r for r in measured if r["within_budget"]]
    fastest = max(r["throughput_rows_s"] for r in inside)
    tied = [r for r in inside if r["throughput_rows_s"] >= fastest / 1.10]
    assert chosen in tied and chosen["file_mb"] == min(r["file_mb"] for r in tied)
    assert any(r["pareto"] for r in measured)
    pruned = next(r for r in report["rows"] if r["name"] == "L1-prune-ffn0.5-heads0.5")
    assert pruned["macs"] < next(r for r in report["rows"] if r["name"] == "L1")["macs"]
    for r in measured:
        assert r["latency_ms_p95"] >= r["latency_ms_p50"] > 0 and r["parameters"] > 0 and r["file_mb"] > 0

    # out/model: a verified ONNX artifact that the serving runtime loads, recording how it was made.
    from slimship.core.runtime import Classifier

    model = artifact.load(out / "model", format="onnx")
    assert model["chosen"] == chosen["name"] and model["chain"][0]["stage"] == "teacher"
    assert Classifier(out / "model").predict(["a lovely, warm film"])[0]["label"] in model["labels"]
    assert "chosen" in (out / "report.md").read_text() and "[" in result.stderr  # per-candidate progress lines


def test_compress_resumes_without_redoing_candidates(compressed, tiny_teacher):
    from slimship.compress.search import CompressConfig, compress, load_grid
    from slimship.train.recipe import TrainConfig

    out, _ = compressed
    before = {p.name: (p / "manifest.json").stat().st_mtime_ns for p in (out / "candidates").iterdir() if p.is_dir()}
    # A crash is simulated by deleting the chosen model and one finished candidate: only those are redone.
    victim = out / "candidates" / "L1-onnx-int8-dynamic"
    import shutil

    shutil.rmtree(victim)
    shutil.rmtree(out / "model")
    grid = load_grid(out.parent / "grid.yaml")
    cfg = CompressConfig(max_accuracy_drop=1.0, grid=grid, latency_rows=20, throughput_rows=64,
                         allow_batch_dependent=True, train=TrainConfig(max_length=64, quiet=True, amp="off", epochs=1))
    compress(tiny_teacher, out, DataConfig(str(DEMO_DATA), max_train_rows=300), cfg)
    after = {p.name: (p / "manifest.json").stat().st_mtime_ns for p in (out / "candidates").iterdir() if p.is_dir()}
    assert set(after) == set(before)
    redone = {name for name in after if after[name] != before[name]}
    assert redone == {"L1-onnx-int8-dynamic"}
    artifact.load(out / "model", format="onnx")

    printed = subprocess.run(slimship_cmd("report", str(out)), capture_output=True, text=True)
    assert printed.returncode == 0 and "chosen" in printed.stdout and "L1-prune" in printed.stdout


def test_budget_nothing_meets_still_writes_report(tiny_teacher, tmp_path):
    (tmp_path / "grid.yaml").write_text(HOPELESS_GRID)
    out = tmp_path / "out"
    result = subprocess.run(slimship_cmd("compress", "--teacher", str(tiny_teacher), "--data", str(DEMO_DATA),
                                         "--out", str(out), "--grid", str(tmp_path / "grid.yaml"),
                                         "--max-accuracy-drop", "0", *FAST), capture_output=True, text=True)
    assert result.returncode == 2
    assert "no candidate is within 0 accuracy points" in result.stderr and "Traceback" not in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"] is None and "no candidate" in report["message"]
    # A failing branch is recorded (with why) and its descendants skipped; the other branch was still measured.
    rows = {r["name"]: r for r in report["rows"]}
    assert "no attention head" in rows["teacher-prune-heads0.99"]["failed"]
    assert rows["teacher-prune-heads0.99-onnx-int8-dynamic"]["failed"].startswith("not built")
    assert rows["teacher-prune-ffn0.9-heads0.75-hidden0.5-onnx-int8-dynamic"]["throughput_rows_s"] > 0
    assert (out / "report.md").is_file() and (out / "pareto.png").is_file()
    assert not (out / "model").exists()


def test_size_budget_picks_the_fastest_small_enough_candidate():
    """--max-model-mb: the fastest candidate within the accuracy budget *and* the size wins; none, a clear note."""
    from slimship.compress.search import CompressConfig, best_accuracy_note, choose
    from slimship.core.errors import UserError

    def row(name, delta, rows_s, mb):
        return {"name": name, "accuracy": 0.9 + delta / 100, "delta_points": delta, "throughput_rows_s": rows_s,
                "latency_ms_p50": 1000 / rows_s, "file_mb": mb}

    rows = [row("big-fast", -0.2, 2000, 14.0), row("small-slow", -0.8, 1500, 7.9), row("small-bad", -2.0, 2500, 6.0)]
    assert choose(rows, CompressConfig(max_accuracy_drop=1.0))["name"] == "big-fast"
    assert choose(rows, CompressConfig(max_accuracy_drop=1.0, max_model_mb=8))["name"] == "small-slow"
    assert [r["within_budget"] for r in rows] == [False, True, False]
    assert choose(rows, CompressConfig(max_accuracy_drop=1.0, max_model_mb=5)) is None
    assert "within 5 MB none was" in best_accuracy_note(rows, 5)
    assert "within 8 MB small-bad" not in best_accuracy_note(rows, 8)
    with pytest.raises(UserError, match="--max-model-mb"):
        CompressConfig(max_model_mb=0).check()
    from slimship.compress.search import Grid, smaller_hint

    assert smaller_hint(Grid()) == " (vocab: [full, train])"
    assert smaller_hint(Grid(embedding_bits=[8])) == " (embedding_bits: [8, 4], vocab: [full, train])"
    assert smaller_hint(Grid(embedding_bits=[8, 4], vocab=["full", "train"])) == " (more pruning, fewer layers)"


def test_speed_ties_go_to_the_smaller_file():
    """Candidates within --speed-tie of the fastest's time per row count as equally fast: the smallest file
    wins, the report says why; 0 means strictly the fastest; a tie never admits a candidate outside the budget."""
    from slimship.compress.search import CompressConfig, choose
    from slimship.core.errors import UserError
    from slimship.core.report import summary_lines

    def row(name, delta, rows_s, mb):
        return {"name": name, "accuracy": 0.9 + delta / 100, "delta_points": delta, "throughput_rows_s": rows_s,
                "latency_ms_p50": 1000 / rows_s, "file_mb": mb}

    rows = [row("fp32", -0.2, 365, 69.6), row("int8", 0.0, 337, 23.3), row("int8-slow", 0.0, 300, 20.0),
            row("tiny-bad", -3.0, 360, 5.0)]
    chosen = choose(rows, CompressConfig(max_accuracy_drop=1.0))
    assert chosen["name"] == "int8"                      # 8% slower than fp32; int8-slow is 22% slower
    assert "fp32 was 8% faster" in chosen["tie_note"] and "23.3 MB against 69.6" in chosen["tie_note"]
    assert choose(rows, CompressConfig(max_accuracy_drop=1.0, speed_tie=0.0))["name"] == "fp32"
    assert choose(rows, CompressConfig(max_accuracy_drop=1.0, speed_tie=0.25))["name"] == "int8-slow"
    lines = summary_lines({"budget": {"max_accuracy_drop_points": 1.0, "objective": "throughput", "speed_tie": 0.1},
                           "chosen": "int8", "tie_note": chosen["tie_note"]})
    assert any(line.startswith("why not the fastest: fp32") for line in lines)
    assert any("within 10% of the fastest tie" in line for line in lines)
    with pytest.raises(UserError, match="--speed-tie"):
        CompressConfig(speed_tie=1.5).check()


def test_bad_grid_is_refused(tmp_path):
    from slimship.core.errors import UserError
    from slimship.compress.search import load_grid

    (tmp_path / "g.yaml").write_text("layers: [3]\nquantise: [dynamic]\n")
    with pytest.raises(UserError, match="unknown key 'quantise' \\(did you mean 'quantize'\\?\\)"):
        load_grid(tmp_path / "g.yaml")
    (tmp_path / "g.yaml").write_text("prune: [{heads: 1.5}]\n")
    with pytest.raises(UserError, match="must be in"):
        load_grid(tmp_path / "g.yaml")


@pytest.mark.slow
@pytest.mark.sst2
def test_minilm_on_sst2_slice_reaches_budget(sst2_dir, tmp_path):
    """A minilm teacher fine-tuned briefly on an SST-2 slice; the search over a 3-layer student and INT8."""
    from slimship.compress.search import CompressConfig, Grid, compress
    from slimship.train.recipe import TrainConfig
    from slimship.train.stage import train

    data = DataConfig(str(sst2_dir), max_train_rows=1600, max_eval_rows=200)
    teacher = train("minilm", tmp_path / "teacher", data,
                    TrainConfig(epochs=2, max_length=64, quiet=True, patience=0, learning_rate=1e-4))
    grid = Grid(layers=[3], prune=[{}], optimize=["none"], quantize=["none", "dynamic"], embedding_bits=[8],
                distill={"learning_rate": 1e-4})
    cfg = CompressConfig(max_accuracy_drop=1.0, grid=grid, latency_rows=30, throughput_rows=128,
                         allow_batch_dependent=True,
                         train=TrainConfig(epochs=1, max_length=64, quiet=True, patience=0))
    out = compress(teacher, tmp_path / "c", data, cfg)
    report = json.loads((out / "report.json").read_text())
    assert report["teacher_accuracy"] > 0.6                       # clearly above chance on 200 rows
    chosen = next(r for r in report["rows"] if r["chosen"])
    assert chosen["delta_points"] >= -1.0
    assert {"L3-onnx-int8-dynamic", "teacher-onnx-int8-dynamic"} <= {r["name"] for r in report["rows"]}
    student = next(r for r in report["rows"] if r["name"] == "L3")
    assert student["macs"] < 0.6 * report["rows"][0]["macs"]
    assert artifact.load(out / "model", format="onnx")["chosen"] == chosen["name"]


def test_compress_help_shows_the_builtin_grid():
    """The grid block of `slimship compress --help` is what a user copies; it must not drift from Grid()."""
    import re
    from dataclasses import asdict

    import yaml

    import slimship.commands.compress as command
    from slimship.compress.search import Grid

    block = command.__doc__.split("The default grid")[1].split("Examples:")[0]
    shown = {}
    for line in block.splitlines():
        match = re.match(r"  (\w+): (.+?)(?:\s{2,}|$)", line)
        if match:
            shown[match[1]] = yaml.safe_load(match[2])
    defaults = asdict(Grid())
    assert set(shown) == set(defaults) - {"prune_options", "vocab_options"}
    assert {key: defaults[key] for key in shown} == shown


def test_default_grid_file_is_the_builtin_grid():
    from slimship.compress.search import Grid, candidates, grid_from_dict, load_grid, node_batch_invariant, plan
    from slimship.core.errors import UserError

    from conftest import ROOT

    assert load_grid(ROOT / "configs" / "grid-default.yaml") == Grid()
    nodes = plan(6, Grid())
    names = [n.name for n in candidates(nodes, Grid())]
    # 3 bases x (FP32 unfused, static INT8, static INT8 with 4-bit word embeddings); nothing batch-dependent
    assert len(names) == 9 and "L3-onnx-int8-static" in names and "L3-onnx-int8-static-emb4" in names
    # ffn_output weight8: every static candidate also with 8-bit FFN output weights
    small = {n.name: n.options for n in plan(6, Grid(ffn_output=["fp32", "weight8"])) if n.stage == "quantize"}
    assert len(small) == 12 and small["L3-onnx-int8-static-emb4-ffn8"] == \
        {"mode": "static", "embedding_bits": 4, "ffn_output": "weight8"}
    with pytest.raises(UserError, match="ffn_output entries"):
        grid_from_dict({"ffn_output": ["int4"]})
    assert not any("O2" in n for n in names) and all(node_batch_invariant(n) for n in candidates(nodes, Grid()))


def test_grid_can_add_4bit_embedding_candidates_on_unfused_exports():
    from slimship.compress.search import Grid, grid_from_dict, plan
    from slimship.core.errors import UserError

    grid = Grid(layers=[3], prune=[{}], optimize=["none", "O2"], quantize=["dynamic"], embedding_bits=[8, 4])
    names = [n.name for n in plan(6, grid) if n.stage == "quantize"]
    # the fused (O2) export keeps its table inside EmbedLayerNormalization, so 4-bit goes with unfused only
    assert "L3-onnx-int8-dynamic-emb4" in names and "L3-onnx-O2-int8-dynamic-emb4" not in names
    assert len(names) == 6
    with pytest.raises(UserError, match="embedding_bits"):
        grid_from_dict({"embedding_bits": [2]})
