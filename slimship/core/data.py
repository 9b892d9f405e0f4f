"""Labelled text data: read CSV/TSV/JSONL/Parquet, split, map labels to ids, and refuse bad input clearly.

``--data`` is either a directory holding ``train``/``validation``/``test`` files (any supported extension) or a
single file, which is then split deterministically with a seed. Labels may be ints or strings; the label list is
sorted (numerically when every label is an integer) so the label-to-id map is stable from run to run, and it is
recorded in every artifact's manifest.

The task (core/tasks.py) is inferred from the training labels or forced: lists (an array in JSONL/Parquet,
names joined by ';' in CSV/TSV) make a multi-label task, numbers that are not all whole a regression, anything
else single-label classification. A ``text_pair`` column (or ``text_pair_column``) makes sentence-pair data.

Empty or whitespace-only texts are skipped and counted (they carry no signal and would only add noise); every
other problem -- a missing column, an empty file, bytes that are not UTF-8, a missing label or pair, a
validation label that training never saw (alone or in a list), a score that is not a number -- is a DataError
naming the file, row and column.

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

import numpy as np

from slimship.core.errors import UserError
from slimship.core.tasks import CLASSIFICATION, MULTILABEL, REGRESSION, REGRESSION_LABELS, TASKS

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
    """One split's examples. ``labels`` holds the training targets of the task: label ids (classification),
    0/1 rows over every label (multilabel) or floats (regression). ``text_pairs`` is set for pair data."""

    texts: list[str]
    labels: list
    source: str
    skipped_empty: int = 0
    text_pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> list:
        """What a model reads: the texts, or (text, text_pair) tuples for pair data."""
        return self.texts if self.text_pairs is None else list(zip(self.texts, self.text_pairs))

    def take(self, rows) -> None:
        """Keep only ``rows`` (a slice or a list of indices), in place."""
        pick = (lambda values: values[rows]) if isinstance(rows, slice) else (lambda values: [values[i] for i in rows])
        self.texts, self.labels = pick(self.texts), pick(self.labels)
        if self.text_pairs is not None:
            self.text_pairs = pick(self.text_pairs)


@dataclass
class LabelledData:
    labels: list[str]                       # id -> label name; ids are list positions (["score"] for regression)
    splits: dict[str, Split] = field(default_factory=dict)
    task: str = CLASSIFICATION
    text_pairs: bool = False

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    def manifest_fields(self) -> dict[str, Any]:
        """What every artifact trained on this data records about its task shape."""
        return {"task": self.task, "text_pairs": self.text_pairs}


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


LIST_SEPARATOR = ";"


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray"


def _is_missing(value: Any) -> bool:
    return (value is None or (isinstance(value, float) and value != value)
            or (isinstance(value, str) and not value.strip()))


def label_names_of(value: Any) -> list[str]:
    """A multi-label value -> its label names: a JSON/Parquet array, or names joined by ';' in a CSV/TSV cell."""
    if _is_list(value):
        items = list(value)
    elif isinstance(value, str):
        items = value.split(LIST_SEPARATOR)
    else:
        items = [value]
    names = [label_name(item) for item in items]
    return sorted({n for n in names if n is not None}, key=_label_key)


def score_of(value: Any) -> float | None:
    """A regression target as a finite float, None when it is not one."""
    if isinstance(value, bool) or _is_list(value):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


@dataclass
class RawExamples:
    """One file's usable rows before the task is known: texts, pairs, raw label values and row numbers."""

    texts: list[str]
    pairs: list[str] | None
    values: list[Any]
    rows: list[int]
    skipped: int
    source: str
    file: str

    def pick(self, order: list[int], source: str, skipped: int) -> "RawExamples":
        pairs = None if self.pairs is None else [self.pairs[i] for i in order]
        return RawExamples([self.texts[i] for i in order], pairs, [self.values[i] for i in order],
                           [self.rows[i] for i in order], skipped, source, self.file)


def _check_text(path: Path, row_number: int, row: dict[str, Any], column: str) -> str | None:
    """A row's value of a text column: text or nothing (a number or list there is a DataError naming the row)."""
    value = row[column]
    if value is not None and not isinstance(value, str):
        raise DataError(f"{path}: row {row_number}: column {column!r} is not text ({type(value).__name__})")
    return value


def read_examples(path: Path, text_column: str, label_column: str, pair_column: str | None = None) -> RawExamples:
    """All usable rows of one file; rows with an empty text are skipped and counted. A present text with a
    missing pair, or a missing label, is a DataError naming the row."""
    texts, pairs, values, rows, skipped = [], [] if pair_column else None, [], [], 0
    columns = [text_column] + ([pair_column] if pair_column else []) + [label_column]
    for row_number, row in iter_rows(path, columns):
        text, label = row[text_column], row[label_column]
        for column in [text_column] + ([pair_column] if pair_column else []):
            _check_text(path, row_number, row, column)
        if text is None or not text.strip():
            skipped += 1
            continue
        if pair_column:
            pair = row[pair_column]
            if pair is None or not pair.strip():
                raise DataError(f"{path}: row {row_number}: column {pair_column!r} is empty (every row of pair "
                                "data needs both texts)")
            pairs.append(pair)
        if (not _is_list(label)) and _is_missing(label):
            raise DataError(f"{path}: row {row_number}: column {label_column!r} is empty")
        texts.append(text)
        values.append(label)
        rows.append(row_number)
    if not texts:
        raise DataError(f"{path}: no usable rows (empty file, or every text is empty)")
    return RawExamples(texts, pairs, values, rows, skipped, str(path), str(path))


def columns_of(path: Path) -> list[str]:
    """The column names of a table file (the header, the first JSON object's keys, the Parquet schema)."""
    fmt = file_format(path)
    if fmt in ("csv", "tsv"):
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            return next(csv.reader(f, delimiter="," if fmt == "csv" else "\t"), [])
    if fmt == "jsonl":
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    try:
                        record = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        return []
                    return list(record) if isinstance(record, dict) else []
        return []
    try:
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception:
        return []


DEFAULT_PAIR_COLUMN = "text_pair"


def read_texts(path: str | Path, text_column: str) -> tuple[list[str], int]:
    """Every non-empty text of one file's text column (unlabelled text); empty texts are skipped and counted."""
    path = Path(path)
    texts, skipped = [], 0
    for row_number, row in iter_rows(path, [text_column]):
        text = _check_text(path, row_number, row, text_column)
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


def infer_task(values: list[Any]) -> str:
    """The task the training labels call for: lists (arrays, or ';' in a cell) -> multilabel; numbers that are
    not all whole -> regression; anything else -> classification. Whole-number scores need --task regression."""
    if any(_is_list(v) or (isinstance(v, str) and LIST_SEPARATOR in v) for v in values):
        return MULTILABEL
    scores = [score_of(v) for v in values]
    if all(s is not None for s in scores) and any(not float(s).is_integer() for s in scores):
        return REGRESSION
    return CLASSIFICATION


def _where(raw: RawExamples, i: int, label_column: str) -> str:
    return f"{raw.file}: row {raw.rows[i]}: column {label_column!r}"


def _label_names(raw: RawExamples, task: str, label_column: str) -> list:
    """Per example: one label name (classification), a list of names (multilabel), a float (regression)."""
    out = []
    for i, value in enumerate(raw.values):
        if task == CLASSIFICATION:
            if _is_list(value):
                raise DataError(f"{_where(raw, i, label_column)} holds a list; for several labels per text use "
                                "--task multilabel")
            out.append(label_name(value))
        elif task == MULTILABEL:
            out.append(label_names_of(value))
        else:
            score = score_of(value)
            if score is None:
                raise DataError(f"{_where(raw, i, label_column)}: {value!r} is not a number (a regression "
                                "target must be a finite number)")
            out.append(score)
    return out


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
    text_pair_column: str | None = None,
    task: str | None = None,
    text_pairs: bool | None = None,
) -> LabelledData:
    """Load labelled splits from a directory or a single file.

    ``labels`` fixes the label list (from an artifact's manifest) instead of deriving it from the training data;
    then any label outside it is refused. A single file is shuffled with ``seed`` and split into train and
    validation (``validation_fraction``). ``max_train_rows`` takes a deterministic sample of training rows.

    ``task`` forces the task (else it is inferred from the training labels: ``infer_task``). Pairs are read from
    ``text_pair_column``, or from a ``text_pair`` column when the data has one; ``text_pairs`` (from a manifest)
    says whether the model takes pairs: then the column must be there, and without pairs it is not read.
    """
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task {task!r} (use one of {', '.join(TASKS)})")
    path = Path(data)
    raw: dict[str, RawExamples] = {}
    if path.is_dir():
        files = find_split_files(path)
        pair_column = _pair_column(files["train"], text_pair_column, text_pairs)
        for split, file in files.items():
            if split in splits or split == "train":
                raw[split] = read_examples(file, text_column, label_column, pair_column)
    elif path.is_file():
        pair_column = _pair_column(path, text_pair_column, text_pairs)
        every = read_examples(path, text_column, label_column, pair_column)
        order = list(range(len(every.texts)))
        random.Random(seed).shuffle(order)
        n_val = max(1, int(round(len(order) * validation_fraction)))
        if len(order) - n_val < 1:
            raise DataError(f"{path}: only {len(order)} usable rows; too few to split into train and validation")
        raw["train"] = every.pick(order[n_val:], f"{path} (train split)", every.skipped)
        raw["validation"] = every.pick(order[:n_val], f"{path} (validation split)", 0)
    elif _looks_like_hub_name(str(data)):
        raw = _load_hub_dataset(str(data), text_column, label_column)
    else:
        raise DataError(f"{data}: no such file or directory")

    train = raw["train"]
    task = task or infer_task(train.values)
    names = {split: _label_names(examples, task, label_column) for split, examples in raw.items()}
    if labels is None:
        labels = _derive_labels(task, names["train"], train.source)
    label2id = {name: i for i, name in enumerate(labels)}

    result = LabelledData(labels=list(labels), task=task, text_pairs=train.pairs is not None)
    for split, examples in raw.items():
        if split not in splits:
            continue
        targets = _targets(task, examples, names[split], label2id, labels, label_column, split)
        result.splits[split] = Split(texts=examples.texts, labels=targets, source=examples.source,
                                     skipped_empty=examples.skipped, text_pairs=examples.pairs)
        if split == "train" and max_train_rows and len(examples.texts) > max_train_rows:
            result.splits[split].take(sorted(random.Random(seed).sample(range(len(examples.texts)), max_train_rows)))
    return result


def _pair_column(train_file: Path, given: str | None, model_takes_pairs: bool | None) -> str | None:
    """The column to read second texts from, or None for single-text data."""
    if model_takes_pairs is False:
        return None
    column = given or DEFAULT_PAIR_COLUMN
    if given or model_takes_pairs or column in columns_of(train_file):
        return column           # read_examples refuses a file without it, naming the column
    return None


def _derive_labels(task: str, names: list, source: str) -> list[str]:
    if task == REGRESSION:
        return list(REGRESSION_LABELS)
    if task == MULTILABEL:
        labels = sorted({n for row in names for n in row}, key=_label_key)
        if not labels:
            raise DataError(f"{source}: no row of the training data has a label")
        return labels
    labels = sorted(set(names), key=_label_key)
    if len(labels) < 2:
        raise DataError(f"{source}: training data has only one label ({labels[0]!r}); need at least two")
    return labels


def _targets(task: str, examples: RawExamples, names: list, label2id: dict[str, int], labels: list[str],
             label_column: str, split: str) -> list:
    if task == REGRESSION:
        return names
    origin = "training never saw" if split != "train" else "is not among the model's labels"
    targets = []
    for i, name in enumerate(names):
        row_names = name if task == MULTILABEL else [name]
        unknown = [n for n in row_names if n not in label2id]
        if unknown:
            raise DataError(f"{examples.file}: label {unknown[0]!r} (row {examples.rows[i]}, column "
                            f"{label_column!r}) {origin}; known labels: {labels}")
        if task == MULTILABEL:
            hot = [0.0] * len(labels)
            for n in row_names:
                hot[label2id[n]] = 1.0
            targets.append(hot)
        else:
            targets.append(label2id[name])
    return targets


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
                values = list(part[label_column])
                source = f"{name}[{alias}]"
                raw[split] = RawExamples(texts, None, values, list(range(1, len(texts) + 1)), 0, source, source)
                break
    if "train" not in raw:
        raise DataError(f"{name}: the hub dataset has no train split")
    return raw


def load_configured(data, manifest: dict[str, Any] | None = None, *, splits: tuple[str, ...] = SPLITS,
                    sample_train: bool = True) -> LabelledData:
    """``load_data`` as a DataConfig says (columns, task, split, seed, training sample); with a model's
    ``manifest``, its labels, task and whether it takes pairs are fixed by it."""
    from slimship.core.tasks import takes_pairs, task_of

    fixed: dict[str, Any] = {}
    task = getattr(data, "task", None)
    if manifest is not None:
        if task and task != task_of(manifest):
            raise DataError(f"--task {task}: the model is a {task_of(manifest)} model")
        fixed = {"labels": manifest["labels"], "task": task_of(manifest), "text_pairs": takes_pairs(manifest)}
    else:
        fixed = {"task": task}
    return load_data(data.path, text_column=data.text_column, label_column=data.label_column,
                     text_pair_column=getattr(data, "text_pair_column", None),
                     validation_fraction=data.validation_fraction, seed=data.split_seed,
                     max_train_rows=data.max_train_rows if sample_train else None, splits=splits, **fixed)
