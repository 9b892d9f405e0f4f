"""Offline batch scoring: stream a large table through an ONNX artifact, chunk by chunk, resumably.

    score(ScoreConfig(model="runs/demo/model", inputs="big.csv", output="scores.parquet"))

The input (CSV, TSV, JSONL, Parquet, or a directory/glob of them) is read as a stream and cut into chunks of
``chunk_rows`` rows, so memory stays bounded whatever the file size. Each chunk is tokenized once, then scored
by the one inference path that serving and ``slimship evaluate`` use too (core/runtime.py ``Classifier.run``):
sorted by token length, cut into batches of ``batch_size`` rows padded only to their own longest text, and put
back into input order. A reader thread tokenizes the next chunk while ONNX Runtime scores this one
(tokenizers and ORT both release the GIL).

Crash safety: every chunk is written to its own part file in ``<output>.parts/``, fsynced, and only then
recorded in ``state.json`` (itself replaced atomically). After a kill, ``resume=True`` skips the committed rows
and carries on; uncommitted part files are discarded. At the end the parts are merged into ``<output>`` (and
``<output>.rejects.<ext>`` when any row was rejected) through a temporary file and a rename, so the output
either does not exist or is complete, with exactly one row per input row: rows out + rejects = rows in.

Rows whose text is missing, empty, not a string or not UTF-8 do not stop the job: they go to the rejects file
with the reason. A pair model reads the second text from ``text_pair_column`` (default ``text_pair``), with the
same rules. The output columns follow the model's task: classification id, label, score (prob_LABEL with
``probs``); multilabel id, labels (those over their thresholds, highest first, joined by ';'; prob_LABEL with
``probs``); regression id, score. The output keeps the input order; its id is the ``id_column`` or the
1-based row position across the inputs. ``engine="ray"`` runs the same scoring on Ray Data (slimship/score_ray.py).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from slimship.core.errors import UserError
from slimship.core import artifact
from slimship.core.data import DEFAULT_PAIR_COLUMN, FORMATS, NOT_UTF8, BadRow, DataError, file_format, iter_rows
from slimship.core.metrics import sigmoid
from slimship.core.tasks import CLASSIFICATION, MULTILABEL, REGRESSION, takes_pairs, task_of, thresholds_of

OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
STATE_FILE = "state.json"
ROW_COLUMN = "row"        # the id column's name in the output when rows are numbered
DIGITS = 6                # scores and probabilities are rounded: stable text output, ULP noise hidden


@dataclass
class ScoreConfig:
    model: str
    inputs: str
    output: str
    text_column: str = "text"
    text_pair_column: str | None = None  # pair models: default "text_pair"
    id_column: str | None = None
    batch_size: int = 64
    chunk_rows: int = 4096
    workers: int | None = None      # local: ONNX Runtime threads; ray: actors (default: from the CPU count)
    probs: bool = False
    resume: bool = False
    overwrite: bool = False
    engine: str = "local"
    prefetch: bool = True           # tokenize the next chunk while this one is scored
    quiet: bool = False


@dataclass
class Summary:
    output: str
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    seconds: float = 0.0
    resumed_rows: int = 0           # rows already committed by an interrupted run
    rejects_file: str | None = None
    engine: str = "local"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return (self.rows_in - self.resumed_rows) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = (f"rows in {self.rows_in:,}, rows out {self.rows_out:,}, rejected {self.rejected:,}; "
                f"{self.seconds:.1f} s, {self.rows_per_second:,.0f} rows/s ({self.engine}) -> {self.output}")
        if self.resumed_rows:
            text += f" (resumed after {self.resumed_rows:,} committed rows)"
        if self.rejects_file:
            text += f"; rejects in {self.rejects_file}"
        return text


# --- inputs ---------------------------------------------------------------------------------------------------


def input_files(spec: str | Path) -> list[Path]:
    """A file, a directory (its supported files, by name) or a glob pattern -> the files to read, in order."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
    elif path.is_file():
        files = [path]
    elif any(ch in str(spec) for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(spec)) if Path(p).is_file() and Path(p).suffix.lower() in FORMATS)
    else:
        raise DataError(f"{spec}: no such file or directory")
    if not files:
        raise DataError(f"{spec}: no CSV, TSV, JSONL or Parquet files found")
    for f in files:
        file_format(f)
    return files


def check_text(value: Any, text_column: str) -> tuple[str | None, str | None]:
    """``(text, None)`` for a scorable value, else ``(None, reason)``. Shared by both engines."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"{NOT_UTF8} in column {text_column!r}"
    if value is None:
        return None, f"missing text (column {text_column!r})"
    if not isinstance(value, str):
        return None, f"text is not a string ({type(value).__name__})"
    if not value.strip():
        return None, "empty text"
    return value, None


def shown_text(value: Any) -> str | None:
    """A rejected row's text as it can be written (undecodable bytes replaced, non-strings as their str)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return str(value)


def estimate_rows(files: list[Path], sample_bytes: int = 64 << 20) -> int:
    """Rows in the inputs, for the progress bar's ETA: exact for Parquet, a line count (sampled) otherwise."""
    total = 0
    for path in files:
        if file_format(path) == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
            continue
        size, lines, seen = path.stat().st_size, 0, 0
        with open(path, "rb") as f:
            while seen < sample_bytes and (block := f.read(1 << 22)):
                lines += block.count(b"\n")
                seen += len(block)
        if seen < size and seen:
            lines = int(lines * size / seen)
        elif seen and not ends_with_newline(path):
            lines += 1
        total += max(0, lines - (file_format(path) in ("csv", "tsv")))
    return total


def ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# --- chunks ---------------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """``rows`` input rows starting after ``start`` rows; scorable texts at ``keep``, rejects with their reason."""
    start: int
    rows: int
    ids: list[Any]
    texts: list[str]
    keep: list[int]
    rejects: list[tuple[int, str, str | None]]   # (index in chunk, reason, text shown)
    feeds: dict[str, np.ndarray] | None = None


def read_chunks(files: list[Path], cfg: ScoreConfig, skip_rows: int = 0,
                pair_column: str | None = None) -> Iterator[Chunk]:
    """Cut the input stream into chunks of ``cfg.chunk_rows``; the first ``skip_rows`` rows are read past.
    With ``pair_column`` each scorable input is a (text, text_pair) tuple."""
    text_columns = [cfg.text_column] + ([pair_column] if pair_column else [])
    columns = text_columns + ([cfg.id_column] if cfg.id_column else [])
    position = 0
    chunk = Chunk(start=skip_rows, rows=0, ids=[], texts=[], keep=[], rejects=[])
    for path in files:
        for _, values in iter_rows(path, columns, lenient=True):
            position += 1
            if position <= skip_rows:
                continue
            i = chunk.rows
            chunk.rows += 1
            if isinstance(values, BadRow):
                known = values.values or {}
                chunk.ids.append(position if cfg.id_column is None else shown_text(known.get(cfg.id_column)))
                chunk.rejects.append((i, values.reason, shown_text(known.get(cfg.text_column))))
            else:
                chunk.ids.append(position if cfg.id_column is None else values[cfg.id_column])
                checked = [check_text(values[column], column) for column in text_columns]
                reason = next((r for _, r in checked if r is not None), None)
                if reason is not None and checked[0][1] is None and "column" not in reason:
                    reason += f" (column {pair_column!r})"      # the text was fine: say it was the pair
                if reason is None:
                    chunk.keep.append(i)
                    chunk.texts.append(checked[0][0] if pair_column is None else (checked[0][0], checked[1][0]))
                else:
                    chunk.rejects.append((i, reason, shown_text(values[cfg.text_column])))
            if chunk.rows == cfg.chunk_rows:
                yield chunk
                chunk = Chunk(start=position, rows=0, ids=[], texts=[], keep=[], rejects=[])
    if chunk.rows:
        yield chunk


def result_columns(labels: list[str], id_name: str, probs: bool, task: str = CLASSIFICATION) -> list[str]:
    if task == REGRESSION:
        return [id_name, "score"]
    first = [id_name, "labels"] if task == MULTILABEL else [id_name, "label", "score"]
    return first + ([f"prob_{label}" for label in labels] if probs else [])


def reject_columns(id_column: str | None) -> list[str]:
    return [ROW_COLUMN] + ([id_column] if id_column else []) + ["reason", "text"]


def output_rows(ids: list[Any], keep: list[int], logits: np.ndarray, labels: list[str], probs: bool,
                task: str = CLASSIFICATION, thresholds: list[float] | None = None) -> list[list]:
    """One output row per scored text: id and the answer of the task (see ``result_columns``)."""
    if task == REGRESSION:
        scores = np.round(logits.astype(np.float64).reshape(len(logits), -1)[:, 0], DIGITS).tolist()
        return [[ids[i], score] for i, score in zip(keep, scores)]
    if task == MULTILABEL:
        p = sigmoid(logits)
        over = p > np.asarray(thresholds if thresholds is not None else [0.5] * len(labels))
        rounded = np.round(p, DIGITS).tolist()
        rows = []
        for i, row, chosen in zip(keep, rounded, over):
            names = ";".join(labels[j] for j in sorted(np.flatnonzero(chosen).tolist(), key=lambda j: -row[j]))
            rows.append([ids[i], names] + (row if probs else []))
        return rows
    shifted = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=-1, keepdims=True)
    best = p.argmax(axis=-1)
    rounded = np.round(p.astype(np.float64), DIGITS).tolist()
    rows = []
    for i, row, k in zip(keep, rounded, best.tolist()):
        rows.append([ids[i], labels[k], row[k]] + (row if probs else []))
    return rows


def prefetched(items: Iterator[Chunk], prepare: Callable[[Chunk], Chunk], depth: int = 2) -> Iterator[Chunk]:
    """``prepare`` each item in a background thread, ``depth`` items ahead of the consumer."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                item = prepare(item)
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as e:  # handed to the consumer, which re-raises it
            slots.put(e)

    thread = threading.Thread(target=produce, name="slimship-tokenize", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# --- committed output -----------------------------------------------------------------------------------------


def output_format(path: Path) -> str:
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: output must end in .csv, .jsonl or .parquet (the format follows the extension)")
    return fmt


def rejects_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects{output.suffix}")


def parts_dir(output: Path) -> Path:
    return output.with_name(f"{output.name}.parts")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def arrow_schema(columns: list[str], types: dict[str, str]):
    import pyarrow as pa

    kinds = {"int": pa.int64(), "string": pa.string(), "float": pa.float64()}
    return pa.schema([(c, kinds[types.get(c, "float")]) for c in columns])


def write_table(path: Path, fmt: str, columns: list[str], rows: list[list], types: dict[str, str]) -> None:
    """Write rows (no CSV header: parts are concatenated under one) and fsync before the rename."""
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = {c: [_typed(r[i], types.get(c)) for r in rows] for i, c in enumerate(columns)}
        pq.write_table(pa.Table.from_pydict(data, schema=arrow_schema(columns, types)), tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    else:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if fmt == "csv":
                csv.writer(f).writerows(rows)
            else:
                for r in rows:
                    f.write(json.dumps(dict(zip(columns, r)), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _typed(value: Any, kind: str | None) -> Any:
    if value is None or kind != "string":
        return value
    return value if isinstance(value, str) else str(value)


def merge_tables(parts: list[Path], dest: Path, fmt: str, columns: list[str], types: dict[str, str]) -> None:
    """Concatenate part files into ``dest`` through a temporary file and a rename."""
    tmp = dest.with_name(f".{dest.name}.merging")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(tmp, arrow_schema(columns, types)) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part))
    else:
        with open(tmp, "wb") as out:
            if fmt == "csv":
                out.write((",".join(_csv_cell(c) for c in columns) + "\r\n").encode("utf-8"))
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def _csv_cell(value: str) -> str:
    return f'"{value.replace(chr(34), 2 * chr(34))}"' if any(c in value for c in ',"\r\n') else value


class ChunkedOutput:
    """The output being written: committed chunks in ``<output>.parts/``, merged into place by ``finish``."""

    def __init__(self, output: Path, columns: list[str], reject_cols: list[str], types: dict[str, str],
                 signature: dict[str, Any]):
        self.output, self.fmt = output, output_format(output)
        self.rejects = rejects_path(output)
        self.dir = parts_dir(output)
        self.columns, self.reject_cols, self.types = columns, reject_cols, types
        self.signature = signature
        self.chunks: list[dict[str, int]] = []

    @property
    def rows_in(self) -> int:
        return sum(c["rows_in"] for c in self.chunks)

    def open(self, resume: bool, overwrite: bool) -> bool:
        """Prepare to write; False when a resumed run finds the output already complete."""
        if self.dir.exists():
            if resume:
                self._load_state()
                return True
            if not overwrite:
                raise UserError(f"{self.dir} holds an interrupted run's committed chunks; pass --resume to continue "
                                f"it or --overwrite to start again")
            shutil.rmtree(self.dir)
        elif resume and self.output.exists():
            return False
        elif not overwrite:
            for existing in (self.output, self.rejects):
                if existing.exists():
                    raise UserError(f"{existing} already exists; pass --overwrite to replace it")
        self.dir.mkdir(parents=True)
        self._save_state()
        return True

    def _load_state(self) -> None:
        try:
            state = json.loads((self.dir / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{self.dir}: cannot read {STATE_FILE} ({e}); pass --overwrite to start again") from None
        if state.get("signature") != self.signature:
            changed = sorted(k for k in self.signature if state.get("signature", {}).get(k) != self.signature[k])
            raise UserError(f"{self.dir}: the interrupted run used a different {', '.join(changed)}; "
                            f"rerun with the same options, or pass --overwrite to start again")
        self.chunks = state["chunks"]
        keep = {self._part(i, kind).name for i in range(len(self.chunks)) for kind in ("part", "rejects")}
        for path in self.dir.iterdir():        # written after the last commit: not part of the output
            if path.name != STATE_FILE and path.name not in keep:
                path.unlink()

    def _save_state(self) -> None:
        tmp = self.dir / (STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"signature": self.signature, "chunks": self.chunks}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / STATE_FILE)
        _fsync_dir(self.dir)

    def _part(self, index: int, kind: str) -> Path:
        return self.dir / f"{kind}-{index:06d}.{self.fmt}"

    def commit(self, rows_in: int, rows: list[list], rejects: list[list]) -> None:
        """Write one chunk's rows and rejects, fsync them, then record the chunk as committed."""
        if len(rows) + len(rejects) != rows_in:
            raise RuntimeError(f"chunk accounting: {len(rows)} rows + {len(rejects)} rejects != {rows_in} rows in")
        index = len(self.chunks)
        write_table(self._part(index, "part"), self.fmt, self.columns, rows, self.types)
        if rejects:
            write_table(self._part(index, "rejects"), self.fmt, self.reject_cols, rejects, self.types)
        _fsync_dir(self.dir)
        self.chunks.append({"rows_in": rows_in, "rows_out": len(rows), "rejects": len(rejects)})
        self._save_state()

    def finish(self) -> tuple[int, int, int]:
        """Merge the committed parts into the output (and rejects file); returns (rows in, out, rejected)."""
        n = len(self.chunks)
        rejected = sum(c["rejects"] for c in self.chunks)
        if rejected:
            merge_tables([p for i in range(n) if (p := self._part(i, "rejects")).exists()], self.rejects,
                         self.fmt, self.reject_cols, self.types)
        elif self.rejects.exists():
            self.rejects.unlink()                   # a stale file from the run this one overwrites
        merge_tables([self._part(i, "part") for i in range(n)], self.output, self.fmt, self.columns, self.types)
        _fsync_dir(self.output.parent)
        shutil.rmtree(self.dir)
        return self.rows_in, sum(c["rows_out"] for c in self.chunks), rejected


# --- the job --------------------------------------------------------------------------------------------------


def id_types(files: list[Path], id_column: str | None, out_fmt: str) -> dict[str, str]:
    """Column types for Parquet output: row numbers and integer Parquet ids stay int64, other ids are strings."""
    types = {"label": "string", "labels": "string", "reason": "string", "text": "string", ROW_COLUMN: "int"}
    if id_column is None or out_fmt != "parquet":
        return types
    kind = "string"
    if all(file_format(f) == "parquet" for f in files):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if all(pa.types.is_integer(pq.ParquetFile(f).schema_arrow.field(id_column).type) for f in files
               if id_column in pq.ParquetFile(f).schema_arrow.names):
            kind = "int"
    types[id_column] = kind
    return types


def run_signature(cfg: ScoreConfig, files: list[Path], out_fmt: str) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one for its chunks to fit together."""
    return {
        "model": artifact.manifest_digest(cfg.model),
        "inputs": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "text_column": cfg.text_column,
        "text_pair_column": cfg.text_pair_column,
        "id_column": cfg.id_column,
        "probs": cfg.probs,
        "chunk_rows": cfg.chunk_rows,
        "format": out_fmt,
    }


def progress_bar(cfg: ScoreConfig, files: list[Path], initial: int):
    from tqdm import tqdm

    if cfg.quiet:
        return tqdm(disable=True)
    tty = sys.stderr.isatty()
    return tqdm(total=estimate_rows(files) or None, initial=initial, unit=" rows",
                desc="scoring", file=sys.stderr, mininterval=0.5 if tty else 15, dynamic_ncols=tty,
                smoothing=0.1)


def score(cfg: ScoreConfig, engine: Callable | None = None) -> Summary:
    """Score ``cfg.inputs`` into ``cfg.output``; returns the summary (also of a resumed run).

    ``engine(cfg, files, labels, sink, bar) -> timings`` runs the chunks; the default runs them in this
    process (``slimship.score_ray.score_with_ray`` passes the Ray Data one).
    """
    if cfg.batch_size < 1 or cfg.chunk_rows < 1:
        raise UserError("--batch-size and --chunk-rows must be at least 1")
    if cfg.engine not in ("local", "ray"):
        raise UserError(f"unknown engine {cfg.engine!r} (use local or ray)")
    files = input_files(cfg.inputs)
    output = Path(cfg.output)
    out_fmt = output_format(output)
    if any(output.resolve() == f.resolve() for f in files):
        raise UserError(f"{output}: the output cannot be one of the inputs")
    manifest = artifact.load(cfg.model, format="onnx")
    labels = list(manifest["labels"])
    task = task_of(manifest)
    if cfg.engine == "ray" and (task != CLASSIFICATION or takes_pairs(manifest)):
        raise UserError("--engine ray scores single-text classification models; use --engine local for this "
                        f"{task} model" + (" on sentence pairs" if takes_pairs(manifest) else ""))
    if cfg.text_pair_column and not takes_pairs(manifest):
        raise UserError(f"--text-pair-column {cfg.text_pair_column}: {cfg.model} takes single texts, not pairs")
    id_name = cfg.id_column or ROW_COLUMN
    sink = ChunkedOutput(output, result_columns(labels, id_name, cfg.probs, task), reject_columns(cfg.id_column),
                         id_types(files, cfg.id_column, out_fmt), run_signature(cfg, files, out_fmt))
    summary = Summary(output=str(output), engine=cfg.engine)
    if not sink.open(cfg.resume, cfg.overwrite):
        artifact.stage_log(f"{output} is already complete; nothing to resume")
        return summary
    summary.resumed_rows = sink.rows_in
    if summary.resumed_rows:
        artifact.stage_log(f"resuming after {summary.resumed_rows:,} committed rows ({len(sink.chunks)} chunks)")
    started = time.perf_counter()
    with progress_bar(cfg, files, sink.rows_in) as bar:
        summary.timings = (engine or score_locally)(cfg, files, labels, sink, bar)
    summary.rows_in, summary.rows_out, summary.rejected = sink.finish()
    summary.seconds = time.perf_counter() - started
    summary.rejects_file = str(sink.rejects) if summary.rejected else None
    return summary


def score_locally(cfg: ScoreConfig, files: list[Path], labels: list[str], sink: ChunkedOutput, bar) -> dict:
    from slimship.core.runtime import Classifier, default_threads

    classifier = Classifier(cfg.model, threads=cfg.workers or default_threads(), verify=False)
    pair_column = (cfg.text_pair_column or DEFAULT_PAIR_COLUMN) if classifier.text_pairs else None
    thresholds = thresholds_of(classifier.manifest)
    timings = {"tokenize_s": 0.0, "infer_s": 0.0, "write_s": 0.0}

    def tokenize(chunk: Chunk) -> Chunk:
        t = time.perf_counter()
        chunk.feeds = classifier.encode(chunk.texts)
        timings["tokenize_s"] += time.perf_counter() - t
        return chunk

    chunks = read_chunks(files, cfg, skip_rows=sink.rows_in, pair_column=pair_column)
    stream = prefetched(chunks, tokenize) if cfg.prefetch else map(tokenize, chunks)
    for chunk in stream:
        t = time.perf_counter()
        logits = classifier.run(chunk.feeds, batch_size=cfg.batch_size)
        t2 = time.perf_counter()
        rows = output_rows(chunk.ids, chunk.keep, logits, labels, cfg.probs, classifier.task, thresholds)
        rejects = [reject_row(chunk.start + i + 1, chunk.ids[i], reason, text, cfg.id_column)
                   for i, reason, text in chunk.rejects]
        sink.commit(chunk.rows, rows, rejects)
        timings["infer_s"] += t2 - t
        timings["write_s"] += time.perf_counter() - t2
        bar.update(chunk.rows)
    return timings


def reject_row(position: int, row_id: Any, reason: str, text: str | None, id_column: str | None) -> list:
    return [position] + ([row_id] if id_column else []) + [reason, text]
