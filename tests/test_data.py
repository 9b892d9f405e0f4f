"""Data loading: every format, both layouts, stable label maps, and a clear error for each kind of bad data."""

from __future__ import annotations

import json
import subprocess

import pytest

from slimship.core.data import DataError, iter_rows, load_data
from tests.conftest import slimship_cmd

ROWS = [("good film", "pos"), ("bad film", "neg"), ("fine acting", "pos"), ("dull plot", "neg"),
        ("great fun", "pos"), ("awful mess", "neg"), ("lovely", "pos"), ("boring", "neg")]


def write(path, rows, fmt, header=("text", "label")):
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = [sep.join(header)] + [sep.join(str(v) for v in r) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({h: [r[i] for r in rows] for i, h in enumerate(header)}), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_every_format_reads_the_same_rows(tmp_path, fmt):
    path = write(tmp_path / f"data.{fmt}", ROWS, fmt)
    rows = [r for _, r in iter_rows(path, ["text", "label"])]
    assert [(r["text"], r["label"]) for r in rows] == ROWS


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_directory_with_splits(tmp_path, fmt):
    write(tmp_path / f"train.{fmt}", ROWS, fmt)
    write(tmp_path / f"validation.{fmt}", ROWS[:4], fmt)
    data = load_data(tmp_path)
    assert data.labels == ["neg", "pos"]          # sorted: a stable label <-> id map
    assert len(data.splits["train"]) == 8 and len(data.splits["validation"]) == 4
    assert data.splits["train"].labels[:2] == [1, 0]


def test_single_file_is_split_deterministically(tmp_path):
    path = write(tmp_path / "all.csv", ROWS * 5, "csv")
    a, b = load_data(path, seed=3), load_data(path, seed=3)
    assert a.splits["train"].texts == b.splits["train"].texts
    assert len(a.splits["validation"]) == 4 and len(a.splits["train"]) == 36
    assert load_data(path, seed=4).splits["validation"].texts != a.splits["validation"].texts


def test_integer_labels_sort_numerically_and_custom_columns(tmp_path):
    rows = [(f"text {i}", i % 11) for i in range(44)]
    write(tmp_path / "train.jsonl", rows, "jsonl", header=("sentence", "y"))
    data = load_data(tmp_path, text_column="sentence", label_column="y")
    assert data.labels == [str(i) for i in range(11)]
    assert data.splits["train"].labels[10] == 10


def test_empty_texts_are_skipped_and_counted(tmp_path):
    write(tmp_path / "train.csv", ROWS + [("", "pos"), ("   ", "neg")], "csv")
    data = load_data(tmp_path)
    assert len(data.splits["train"]) == 8 and data.splits["train"].skipped_empty == 2


def test_missing_column_names_the_file_and_column(tmp_path):
    path = write(tmp_path / "train.csv", ROWS, "csv", header=("sentence", "label"))
    with pytest.raises(DataError, match=r"train.csv: missing column\(s\) 'text'"):
        load_data(tmp_path)
    assert path.exists()


def test_empty_file(tmp_path):
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_data(tmp_path)


def test_header_only_file(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no usable rows"):
        load_data(tmp_path)


def test_unseen_validation_label(tmp_path):
    write(tmp_path / "train.csv", ROWS, "csv")
    write(tmp_path / "validation.csv", ROWS[:2] + [("odd one", "neutral")], "csv")
    with pytest.raises(DataError, match=r"validation.csv: label 'neutral' .* training never saw"):
        load_data(tmp_path)


def test_non_utf8_bytes_name_the_row(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"text,label\ngood,pos\nbad \xff\xfe film,neg\n")
    with pytest.raises(DataError, match=r"train.csv: row \d+: bytes that are not UTF-8"):
        load_data(tmp_path)


def test_missing_label_value(tmp_path):
    write(tmp_path / "train.csv", ROWS + [("no label here", "")], "csv")
    with pytest.raises(DataError, match=r"row 9: column 'label' is empty"):
        load_data(tmp_path)


def test_single_label_is_refused(tmp_path):
    write(tmp_path / "train.csv", [(t, "pos") for t, _ in ROWS], "csv")
    with pytest.raises(DataError, match="only one label"):
        load_data(tmp_path)


def test_fixed_label_list_from_a_manifest_refuses_others(tmp_path):
    write(tmp_path / "train.csv", ROWS, "csv")
    with pytest.raises(DataError, match="not among the model's labels"):
        load_data(tmp_path, labels=["neg", "neutral"])


def test_bad_data_through_the_cli_is_one_line_and_exit_2(tmp_path):
    write(tmp_path / "train.csv", ROWS, "csv", header=("sentence", "label"))
    proc = subprocess.run(slimship_cmd("train", "--model", "tiny", "--data", str(tmp_path),
                                       "--out", str(tmp_path / "out")), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "missing column(s) 'text'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
