"""`slimship score`: every format in and out, order, rejects, a real kill + --resume, overwrite refusal, ray == local."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from slimship.score import ScoreConfig, score
from tests.conftest import DEMO_DATA, slimship_cmd


def demo_texts() -> list[str]:
    with open(DEMO_DATA / "validation.csv", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def write_input(path: Path, rows: list[dict]) -> Path:
    """rows of {"id", "text"} in the format of path's extension."""
    fmt = path.suffix
    if fmt in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["id", "text"], delimiter="," if fmt == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=17)
    return path


def read_output(path: Path) -> list[dict]:
    """Output rows with typed values, whatever the format."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in r:
            if k == "score" or k.startswith("prob_"):
                r[k] = float(r[k])
    return rows


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLIMSHIP_THREADS": "2"}
    return subprocess.run(slimship_cmd("score", *args, "--quiet"), capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def classifier(tiny_onnx):
    from slimship.core.runtime import Classifier

    return Classifier(tiny_onnx)


@pytest.fixture(scope="module")
def sample_rows() -> list[dict]:
    # Varied lengths (the length sort must be undone), ids that are not the row numbers.
    texts = demo_texts()[:40]
    texts = [t if i % 3 else " ".join([t] * (1 + i % 4)) for i, t in enumerate(texts)]
    return [{"id": f"doc-{1000 - i}", "text": t} for i, t in enumerate(texts)]


@pytest.mark.parametrize("in_ext", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_in_and_out_keeps_order_and_matches_the_runtime(tmp_path, tiny_onnx, classifier, sample_rows,
                                                                     in_ext):
    source = write_input(tmp_path / f"in{in_ext}", sample_rows)
    expected = classifier.predict([r["text"] for r in sample_rows], probs=True)   # one plain batch, input order
    for out_ext in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"out{out_ext}"
        summary = score(ScoreConfig(model=str(tiny_onnx), inputs=str(source), output=str(out), id_column="id",
                                    probs=True, chunk_rows=9, batch_size=4, quiet=True))
        assert (summary.rows_in, summary.rows_out, summary.rejected) == (40, 40, 0)
        rows = read_output(out)
        assert [r["id"] for r in rows] == [r["id"] for r in sample_rows]
        assert [r["label"] for r in rows] == [e["label"] for e in expected]
        for r, e in zip(rows, expected):
            assert r["score"] == pytest.approx(e["score"], abs=2e-6)
            assert set(r) == {"id", "label", "score"} | {f"prob_{k}" for k in e["probs"]}
            for label, p in e["probs"].items():
                assert r[f"prob_{label}"] == pytest.approx(p, abs=2e-6)
        assert not (tmp_path / f"out{out_ext}.parts").exists()
        assert not (tmp_path / f"out.rejects{out_ext}").exists()


def test_row_numbers_continue_across_a_directory_of_inputs(tmp_path, tiny_onnx, sample_rows):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_input(shards / "a.csv", sample_rows[:15])
    write_input(shards / "b.jsonl", sample_rows[15:])
    out = tmp_path / "out.jsonl"
    score(ScoreConfig(model=str(tiny_onnx), inputs=str(shards), output=str(out), chunk_rows=8, quiet=True))
    rows = read_output(out)
    assert [r["row"] for r in rows] == list(range(1, 41))
    assert set(rows[0]) == {"row", "label", "score"}


def test_bad_rows_go_to_the_rejects_file_with_their_reason(tmp_path, tiny_onnx):
    source = tmp_path / "in.csv"
    source.write_bytes(b"id,text\n"
                       b"a,fine words here\n"
                       b"b,\n"
                       b"c,   \n"
                       b"d\n"                                   # short row: no text field
                       b'e,"caf\xe9 is latin-1"\n'              # not UTF-8
                       b"f,another good one\n")
    out = tmp_path / "out.csv"
    result = run_cli("--model", str(tiny_onnx), "--input", str(source), "--output", str(out), "--id-column", "id")
    assert result.returncode == 0, result.stderr
    assert "rows in 6, rows out 2, rejected 4" in result.stdout
    assert [r["id"] for r in read_output(out)] == ["a", "f"]
    rejects = read_output(tmp_path / "out.rejects.csv")
    assert [(r["row"], r["id"]) for r in rejects] == [("2", "b"), ("3", "c"), ("4", "d"), ("5", "e")]
    reasons = [r["reason"] for r in rejects]
    assert reasons[:2] == ["empty text", "empty text"]
    assert reasons[2].startswith("missing text") and "not UTF-8" in reasons[3]
    assert rejects[3]["text"].startswith("caf")

    # JSONL: a number instead of text, null, a line that is not JSON, a line that is not an object.
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "good"}\n{"text": 42}\n{"text": null}\n{not json\n[1, 2]\n\n{"text": "also good"}\n')
    out = tmp_path / "out.parquet"
    summary = score(ScoreConfig(model=str(tiny_onnx), inputs=str(source), output=str(out), quiet=True))
    assert (summary.rows_in, summary.rows_out, summary.rejected) == (6, 2, 4)
    assert [r["row"] for r in read_output(out)] == [1, 6]
    rejects = read_output(tmp_path / "out.rejects.parquet")
    assert [r["row"] for r in rejects] == [2, 3, 4, 5]
    assert [r["reason"].split(" (")[0] for r in rejects] == [
        "text is not a string", "missing text", "not valid JSON", "expected a JSON object, got list"]


def test_refuses_to_overwrite_and_explains_user_errors(tmp_path, tiny_onnx, sample_rows):
    source = write_input(tmp_path / "in.csv", sample_rows)
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    args = ["--model", str(tiny_onnx), "--input", str(source), "--output", str(out)]
    refused = run_cli(*args)
    assert refused.returncode == 2 and "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert out.read_text() == "precious\n"
    assert run_cli(*args, "--overwrite").returncode == 0
    assert len(read_output(out)) == 40

    wrong_column = run_cli(*args, "--overwrite", "--text-column", "body")
    assert wrong_column.returncode == 2 and "missing column(s) 'body'" in wrong_column.stderr
    bad_extension = run_cli("--model", str(tiny_onnx), "--input", str(source), "--output", str(tmp_path / "o.txt"))
    assert bad_extension.returncode == 2 and ".csv, .jsonl or .parquet" in bad_extension.stderr


def test_resume_after_a_real_kill_equals_an_uninterrupted_run(tmp_path, tiny_onnx):
    texts = demo_texts()
    rows = [{"id": f"id{i:06d}", "text": texts[i % len(texts)]} for i in range(16_000)]
    source = write_input(tmp_path / "big.csv", rows)
    out = tmp_path / "killed.jsonl"
    state = tmp_path / "killed.jsonl.parts" / "state.json"
    args = ["--model", str(tiny_onnx), "--input", str(source), "--output", str(out), "--id-column", "id",
            "--chunk-rows", "500"]
    env = {**os.environ, "SLIMSHIP_THREADS": "2"}
    process = subprocess.Popen(slimship_cmd("score", *args, "--quiet"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    committed = 0
    deadline = time.time() + 90
    while time.time() < deadline and process.poll() is None:
        try:
            committed = len(json.loads(state.read_text())["chunks"])
        except (OSError, ValueError, KeyError):
            committed = 0
        if committed >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed mid-file"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 2 <= committed < 32 and not out.exists()

    changed = run_cli(*args, "--resume", "--probs")
    assert changed.returncode == 2 and "different probs" in changed.stderr
    plain = run_cli(*args)
    assert plain.returncode == 2 and "--resume" in plain.stderr

    resumed = run_cli(*args, "--resume", timeout=150)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after" in resumed.stdout
    again = run_cli(*args, "--resume")                  # nothing left to do
    assert again.returncode == 0 and "already complete" in again.stderr

    reference = tmp_path / "reference.jsonl"
    score(ScoreConfig(model=str(tiny_onnx), inputs=str(source), output=str(reference), id_column="id",
                      chunk_rows=500, quiet=True))
    got = read_output(out)
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)) == 16_000 and ids == [r["id"] for r in rows]
    assert out.read_text() == reference.read_text()


@pytest.mark.slow
def test_ray_engine_equals_the_local_engine(tmp_path, tiny_onnx, sample_rows):
    rows = sample_rows * 5 + [{"id": "blank", "text": ""}, {"id": "spaces", "text": "  "}]
    source = write_input(tmp_path / "in.csv", rows)
    common = ["--model", str(tiny_onnx), "--input", str(source), "--id-column", "id", "--probs", "--chunk-rows", "64"]
    local = run_cli(*common, "--output", str(tmp_path / "local.csv"))
    assert local.returncode == 0, local.stderr
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # a local Ray with this machine's 2 CPUs
    ray = subprocess.run(slimship_cmd("score", *common, "--output", str(tmp_path / "ray.csv"), "--engine", "ray",
                                      "--quiet"), capture_output=True, text=True, timeout=240,
                         env={**env, "SLIMSHIP_THREADS": "2"})
    assert ray.returncode == 0, ray.stderr[-3000:]
    assert "rows in 202, rows out 200, rejected 2" in ray.stdout
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()
    assert (tmp_path / "ray.rejects.csv").read_text() == (tmp_path / "local.rejects.csv").read_text()
