"""Labelled text data: read CSV/TSV/JSONL/Parquet, split, map labels to ids, and refuse bad input clearly.

``--data`` is either a directory holding ``train``/``validation``/``test`` files (any supported extension) or a
single file, which is then split deterministically with a seed. Labels may be ints or strings; the label list is
sorted (numerically when every label is an integer) so the label-to-id map is stable from run to run, and it is
recorded in every artifact's manifest.

Empty or whitespace-only texts are skipped and counted (they carry no signal and would only add noise); every
other problem -- a missing column, an empty file, bytes that are not UTF-8, a missing label, a validation label
that training never saw -- is a DataError naming the file, row and column.

Torch-free: the batch scorer streams rows through ``iter_rows`` too.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from slimship.core.errors import UserError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"validation": ("validation", "valid", "val", "dev"), "train": ("train",), "test": ("test",)}


class DataError(UserError):
    """Bad input data; the message names the file, row and column."""


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use one of {', '.join(sorted(FORMATS))})")
    return fmt


class BadRow:
    """A row that could not be read, yielded in place of its values by ``iter_rows(..., lenient=True)``."""

    __slots__ = ("reason", "values")

    def __init__(self, reason: str, values: dict[str, Any] | None = None):
        self.reason = reason
        self.values = values    # what could be read (undecodable bytes surrogate-escaped), if anything

    def __repr__(self) -> str:
        return f"BadRow({self.reason!r})"


NOT_UTF8 = "bytes that are not UTF-8"


def iter_rows(path: str | Path, columns: list[str], chunk_rows: int = 10_000, *,
              lenient: bool = False) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    """Stream ``(row_number, {column: value})`` from a table file, reading only ``columns``.

    Row numbers are 1-based data rows (the header is not counted). Raises DataError for a missing column or
    undecodable bytes; checks that the header has every column before yielding anything.

    ``lenient=True`` (batch scoring: one bad row must not stop a long job) yields ``(row_number, BadRow(reason))``
    for a row with undecodable bytes, a JSON line that does not parse or is not an object, or a JSON object that
    lacks a column. A missing column in the header (or in the first JSON object) is still a DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = file_format(path)
    if fmt in ("csv", "tsv"):
        yield from _iter_delimited(path, columns, "," if fmt == "csv" else "\t", lenient)
    elif fmt == "jsonl":
        yield from _iter_jsonl(path, columns, lenient)
    else:
        yield from _iter_parquet(path, columns, chunk_rows)


def _has_bad_bytes(value: str) -> bool:
    """True for text decoded with errors="surrogateescape" that holds escaped (undecodable) bytes."""
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _iter_delimited(path: Path, columns: list[str], delimiter: str,
                    lenient: bool = False) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    with open(path, "rb") as raw:
        errors = "surrogateescape" if lenient else "strict"
        text = io.TextIOWrapper(raw, encoding="utf-8", errors=errors, newline="")
        reader = csv.reader(text, delimiter=delimiter)
        row_number = 0
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file (no header row)")
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            index = _column_index(path, header, columns)
            for row_number, row in enumerate(reader, start=1):
                if not row:
                    continue
                values = {c: (row[i] if i < len(row) else None) for c, i in index.items()}
                if lenient:
                    bad = [c for c, v in values.items() if v is not None and _has_bad_bytes(v)]
                    if bad:
                        yield row_number, BadRow(f"{NOT_UTF8} in column {bad[0]!r}", values)
                        continue
                yield row_number, values
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: row {row_number + 1}: bytes that are not UTF-8 ({e.reason} at byte "
                            f"{e.start} of the block being read)") from None
        except csv.Error as e:
            raise DataError(f"{path}: row {row_number + 1}: malformed {delimiter!r}-separated line ({e})") from None


def _column_index(path: Path, header: list[str], columns: list[str]) -> dict[str, int]:
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; the header has {header}")
    return {c: header.index(c) for c in columns}


def parse_json_record(line: bytes | str, columns: list[str]) -> dict[str, Any] | BadRow:
    """One JSON line -> ``{column: value}``, or a BadRow saying why not (blank lines are the caller's business)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            return BadRow(f"{NOT_UTF8} ({e.reason})")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return BadRow(f"not valid JSON ({e.msg})")
    if not isinstance(record, dict):
        return BadRow(f"expected a JSON object, got {type(record).__name__}")
    missing = [c for c in columns if c not in record]
    if missing:
        return BadRow(f"missing column(s) {', '.join(map(repr, missing))}")
    return {c: record[c] for c in columns}


def _iter_jsonl(path: Path, columns: list[str], lenient: bool = False) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    with open(path, "rb") as f:
        seen_any = seen_object = False
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            values = parse_json_record(line, columns)
            if isinstance(values, BadRow):
                # Strict mode, or the first object lacking a column (a wrong --text-column, not one bad row).
                if not lenient or (not seen_object and values.reason.startswith("missing column")):
                    raise DataError(f"{path}: line {line_number}: {values.reason}")
            else:
                seen_object = True
            seen_any = True
            yield line_number, values
        if not seen_any:
            raise DataError(f"{path}: empty file (no JSON lines)")


def _iter_parquet(path: Path, columns: list[str], chunk_rows: int) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the install
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'slimship[parquet]')") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    names = parquet.schema_arrow.names
    _column_index(path, names, columns)
    row_number = 0
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
        values = {c: batch.column(c).to_pylist() for c in columns}
        for i in range(batch.num_rows):
            row_number += 1
            yield row_number, {c: values[c][i] for c in columns}


# --- labelled examples for training and evaluation ---------------------------------------------------------


@dataclass
class Split:
    texts: list[str]
    labels: list[int]
    source: str
    skipped_empty: int = 0

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class LabelledData:
    labels: list[str]                       # id -> label name; ids are list positions
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}


def _label_key(label: str):
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def label_name(value: Any) -> str | None:
    """The canonical string form of a raw label value (1, 1.0, "1" all give "1"); None when missing."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        if value != value:  # NaN from a Parquet/pandas null
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def read_examples(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str], int]:
    """All (text, label name) pairs of one file; empty texts are skipped and counted."""
    texts, labels, skipped = [], [], 0
    for row_number, row in iter_rows(path, [text_column, label_column]):
        text, label = row[text_column], label_name(row[label_column])
        if text is not None and not isinstance(text, str):
            raise DataError(f"{path}: row {row_number}: column {text_column!r} is not text ({type(text).__name__})")
        if text is None or not text.strip():
            skipped += 1
            continue
        if label is None:
            raise DataError(f"{path}: row {row_number}: column {label_column!r} is empty")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DataError(f"{path}: no usable rows (empty file, or every text is empty)")
    return texts, labels, skipped


def read_texts(path: str | Path, text_column: str) -> tuple[list[str], int]:
    """Every non-empty text of one file's text column (unlabelled text); empty texts are skipped and counted."""
    path = Path(path)
    texts, skipped = [], 0
    for row_number, row in iter_rows(path, [text_column]):
        text = row[text_column]
        if text is not None and not isinstance(text, str):
            raise DataError(f"{path}: row {row_number}: column {text_column!r} is not text ({type(text).__name__})")
        if text is None or not text.strip():
            skipped += 1
            continue
        texts.append(text)
    if not texts:
        raise DataError(f"{path}: no usable rows (empty file, or every text is empty)")
    return texts, skipped


def find_split_files(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            matches = [p for p in sorted(directory.iterdir()) if p.stem == alias and p.suffix.lower() in FORMATS]
            if len(matches) > 1:
                raise DataError(f"{directory}: more than one {split} file: {', '.join(p.name for p in matches)}")
            if matches:
                found[split] = matches[0]
                break
    if "train" not in found:
        raise DataError(f"{directory}: no train file (expected train.csv, train.tsv, train.jsonl or train.parquet)")
    return found


def load_data(
    data: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    labels: list[str] | None = None,
    validation_fraction: float = 0.1,
    seed: int = 42,
    max_train_rows: int | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> LabelledData:
    """Load labelled splits from a directory or a single file.

    ``labels`` fixes the label list (from an artifact's manifest) instead of deriving it from the training data;
    then any label outside it is refused. A single file is shuffled with ``seed`` and split into train and
    validation (``validation_fraction``). ``max_train_rows`` takes a deterministic sample of training rows.
    """
    path = Path(data)
    raw: dict[str, tuple[list[str], list[str], int, str]] = {}
    if path.is_dir():
        for split, file in find_split_files(path).items():
            if split in splits or split == "train":
                raw[split] = (*read_examples(file, text_column, label_column), str(file))
    elif path.is_file():
        texts, names, skipped = read_examples(path, text_column, label_column)
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        n_val = max(1, int(round(len(order) * validation_fraction)))
        if len(order) - n_val < 1:
            raise DataError(f"{path}: only {len(order)} usable rows; too few to split into train and validation")
        val, train = order[:n_val], order[n_val:]
        raw["train"] = ([texts[i] for i in train], [names[i] for i in train], skipped, f"{path} (train split)")
        raw["validation"] = ([texts[i] for i in val], [names[i] for i in val], 0, f"{path} (validation split)")
    elif _looks_like_hub_name(str(data)):
        raw = _load_hub_dataset(str(data), text_column, label_column)
    else:
        raise DataError(f"{data}: no such file or directory")

    train_texts, train_names, _, train_source = raw["train"]
    if labels is None:
        labels = sorted(set(train_names), key=_label_key)
        if len(labels) < 2:
            raise DataError(f"{train_source}: training data has only one label ({labels[0]!r}); need at least two")
    label2id = {name: i for i, name in enumerate(labels)}

    result = LabelledData(labels=list(labels))
    for split, (texts, names, skipped, source) in raw.items():
        if split not in splits:
            continue
        unknown = sorted(set(names) - set(label2id), key=_label_key)
        if unknown:
            origin = "training never saw" if split != "train" else "is not among the model's labels"
            first = next(i for i, n in enumerate(names) if n == unknown[0])
            raise DataError(f"{source}: label {unknown[0]!r} (first at example {first + 1}, column "
                            f"{label_column!r}) {origin}; known labels: {labels}")
        ids = [label2id[n] for n in names]
        if split == "train" and max_train_rows and len(texts) > max_train_rows:
            keep = sorted(random.Random(seed).sample(range(len(texts)), max_train_rows))
            texts, ids = [texts[i] for i in keep], [ids[i] for i in keep]
        result.splits[split] = Split(texts=texts, labels=ids, source=source, skipped_empty=skipped)
    return result


def _looks_like_hub_name(name: str) -> bool:
    return "/" in name.strip("/") and not Path(name).suffix and not name.startswith((".", "/"))


def _load_hub_dataset(name: str, text_column: str, label_column: str):
    """A dataset from the Hugging Face hub (only when the network allows; nothing in the tests depends on it)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{name}: loading a hub dataset needs the 'train' extra") from None
    try:
        loaded = datasets.load_dataset(name)
    except Exception as e:
        raise DataError(f"{name}: not a local path and could not be loaded from the hub ({e})") from None
    raw = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in loaded:
                part = loaded[alias]
                texts = [str(t) for t in part[text_column]]
                names = [label_name(v) for v in part[label_column]]
                raw[split] = (texts, names, 0, f"{name}[{alias}]")
                break
    if "train" not in raw:
        raise DataError(f"{name}: the hub dataset has no train split")
    return raw
