"""Configuration: one loader for the command line, config files and grids; every default written once; cache
keys from contents, so edited data is never answered from a stale cache."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import pytest

from conftest import DEMO_DATA, ROOT, slimship_cmd
from slimship import cli
from slimship.core.config import DataConfig, field_default, option_name
from slimship.core.errors import UserError


def _error_line(capsys, argv: list[str]) -> str:
    """What `slimship ARGV` prints for a user mistake: one line on stderr, exit code 2."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_unknown_command_line_option_names_the_closest():
    proc = subprocess.run(slimship_cmd("train", "--data", "d", "--out", "o", "--epoch", "3"),
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "slimship: error: unknown option '--epoch' (did you mean '--epochs'?)"


def test_unknown_key_at_the_top_level_and_in_a_section(tmp_path, capsys):
    config = tmp_path / "x.yaml"
    config.write_text("data: d\nmax_lenght: 64\n")
    assert _error_line(capsys, ["train", "--config", str(config), "--out", "o"]).endswith(
        "x.yaml: unknown key 'max_lenght' (did you mean 'max_length'?)")
    config.write_text("data: d\ntrain:\n  epoch: 3\n")
    assert _error_line(capsys, ["run", "--config", str(config)]).endswith(
        "x.yaml: unknown key 'epoch' in section 'train' (did you mean 'epochs'?)")
    # The whole file is checked, whichever command reads it.
    config.write_text("data: d\ncompress:\n  max_model_megabytes: 8\n")
    assert "unknown key 'max_model_megabytes' in section 'compress' (did you mean 'max_model_mb'?)" in \
        _error_line(capsys, ["train", "--config", str(config), "--out", "o"])


def test_a_wrong_type_is_one_line(tmp_path, capsys):
    config = tmp_path / "x.yaml"
    config.write_text("data: d\ntrain:\n  epochs: three\n")
    line = _error_line(capsys, ["run", "--config", str(config)])
    assert "'epochs' in section 'train'" in line and "valid number" in line and "'three'" in line
    config.write_text("data: d\ntrain:\n  amp: fp32\n")
    assert "'amp' in section 'train'" in _error_line(capsys, ["run", "--config", str(config)])
    assert "invalid int value: 'many'" in _error_line(capsys, ["train", "--data", "d", "--out", "o",
                                                                 "--batch-size", "many"])


def test_unknown_grid_key_in_a_grid_file_and_in_a_run_config(tmp_path, capsys):
    from slimship.compress.config import load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text("layers: [3]\nquantise: [dynamic]\n")
    with pytest.raises(UserError, match=r"grid.yaml: unknown key 'quantise' \(did you mean 'quantize'\?\)"):
        load_grid(grid)
    grid.write_text("layers: [3]\ndistill: {epoch: 2}\n")
    with pytest.raises(UserError, match=r"unknown key 'epoch' in section 'distill' \(did you mean 'epochs'\?\)"):
        load_grid(grid)
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {DEMO_DATA}\nout: {tmp_path / 'run'}\ncompress:\n  grid:\n    layer: [3]\n")
    line = _error_line(capsys, ["run", "--config", str(config)])
    assert "unknown key 'layer' in section 'compress.grid' (did you mean 'layers'?)" in line
    assert not (tmp_path / "run").exists()                         # refused before anything ran


def test_a_grid_typo_in_a_config_file_names_the_section_it_is_in(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    run = ["run", "--config", str(config)]
    config.write_text(f"data: {DEMO_DATA}\nout: {tmp_path / 'run'}\ncompress:\n  grid: {{distill: {{epoch: 2}}}}\n")
    assert "unknown key 'epoch' in section 'compress.grid.distill' (did you mean 'epochs'?)" in \
        _error_line(capsys, run)
    # A grid at the top level of the file is section 'grid', for run and for compress alike.
    config.write_text(f"data: {DEMO_DATA}\nout: {tmp_path / 'run'}\ngrid: {{layer: [3]}}\n")
    assert "unknown key 'layer' in section 'grid' (did you mean 'layers'?)" in _error_line(capsys, run)
    compress = ["compress", "--config", str(config), "--teacher", str(tmp_path / "teacher")]
    assert "unknown key 'layer' in section 'grid' (did you mean 'layers'?)" in _error_line(capsys, compress)
    config.write_text(f"data: {DEMO_DATA}\nout: {tmp_path / 'run'}\ncompress:\n  grid: {{layer: [3]}}\n")
    assert "unknown key 'layer' in section 'compress.grid' (did you mean 'layers'?)" in \
        _error_line(capsys, compress)
    assert not (tmp_path / "run").exists()


def test_run_reads_its_config_once_and_the_command_line_wins(tmp_path):
    from slimship.commands.run import run_config

    config = tmp_path / "run.yaml"
    config.write_text("data: somewhere\nmax_length: 40\nmax_train_rows: 500\nmax_accuracy_drop: 2.0\n"
                      "train: {epochs: 5, learning_rate: 1.0e-4}\n"
                      "compress: {max_model_mb: 8, grid: {layers: [2], distill: {epochs: 1}}}\n")
    args = cli.parse_args(["run", "--config", str(config), "--max-accuracy-drop", "0.5", "--max-eval-rows", "9"])
    config.unlink()                                                  # a second read would fail
    cfg = run_config(args)
    assert (cfg.train.epochs, cfg.train.learning_rate, cfg.train.max_length) == (5.0, 1e-4, 40)
    assert (cfg.data.path, cfg.data.max_train_rows, cfg.data.max_eval_rows) == ("somewhere", 500, 9)
    assert (cfg.compress.max_accuracy_drop, cfg.compress.max_model_mb) == (0.5, 8.0)
    from slimship.train.config import TrainConfig

    # train: is the teacher's section; the students get the top level and compress:, else the defaults
    assert cfg.compress.train.max_length == 40 and cfg.compress.train.epochs == TrainConfig().epochs
    assert cfg.compress.grid.layers == [2] and cfg.compress.grid.distill == {"epochs": 1.0}
    assert cfg.compress_data.max_eval_rows == 9


def test_every_default_is_the_dataclass_default():
    _, parsers = cli.build_parser()
    # Options that are inputs/outputs of one command rather than settings, and evaluate's own three.
    not_settings = {"help", "config", "out", "model", "teacher", "grid", "split", "json", "eval_batch_size"}
    checked = 0
    for name, parser in parsers.items():
        for action in parser._actions:
            cls = getattr(action, "field_of", None)
            if cls is None:
                if name in ("train", "distill", "prune", "trim-vocab", "export", "quantize", "compress", "run"):
                    assert action.dest in not_settings, f"{name}: --{action.dest} is not from a config dataclass"
                continue
            f = next(f for f in dataclasses.fields(cls) if option_name(f) == action.dest)
            assert action.default == field_default(f), f"slimship {name} --{action.dest}"
            assert action.help and action.help.split()[0], f"slimship {name} --{action.dest} has no help"
            checked += 1
    assert checked > 100


def test_data_fingerprint_follows_the_contents_not_the_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(DEMO_DATA, a)
    shutil.copytree(DEMO_DATA, b)
    assert DataConfig(str(a)).fingerprint() == DataConfig(str(b)).fingerprint()
    assert DataConfig(str(a)).fingerprint() != DataConfig(str(a), max_train_rows=10).fingerprint()
    with (b / "train.csv").open("a") as f:
        f.write("one more row,positive\n")
    assert DataConfig(str(a)).fingerprint() != DataConfig(str(b)).fingerprint()


GRID = """\
layers: [1]
prune: [{}]
optimize: [none]
quantize: [dynamic]
include_teacher: false
"""


def test_compress_after_the_data_was_edited_retrains_and_remeasures(tiny_teacher, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DEMO_DATA, data)
    (tmp_path / "grid.yaml").write_text(GRID)
    out = tmp_path / "out"
    command = slimship_cmd("compress", "--teacher", str(tiny_teacher), "--data", str(data), "--out", str(out),
                           "--grid", str(tmp_path / "grid.yaml"), "--max-accuracy-drop", "100", "--epochs", "1",
                           "--max-length", "32", "--max-train-rows", "200", "--quiet", "--amp", "off",
                           "--latency-rows", "5", "--throughput-rows", "32", "--allow-batch-dependent")
    student = out / "candidates" / "L1"
    candidate = out / "candidates" / "L1-onnx-int8-dynamic"

    def state():
        return ((student / "manifest.json").stat().st_mtime_ns,
                json.loads((candidate / "measurement.json").read_text())["key"]["node"])

    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    before = state()
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and state() == before                 # same data: everything reused

    # Edit the data in place (same path): the validation rows the candidates are measured on change too.
    rows = (data / "validation.csv").read_text().splitlines(keepends=True)
    (data / "validation.csv").write_text("".join(rows[:len(rows) // 2]))
    edited = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert edited.returncode == 0, edited.stderr[-2000:]
    after = state()
    assert after[0] != before[0]                                      # the student was trained again
    assert after[1] != before[1]                                      # and its candidate measured again
    report = json.loads((out / "report.json").read_text())
    assert report["validation_rows"] == len(rows[:len(rows) // 2]) - 1
