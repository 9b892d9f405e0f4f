"""``slimship score --engine ray``: the same scoring on Ray Data, for inputs that outgrow one machine.

    Ray Data read  ->  map_batches(ScoringActor, actor pool, one ONNX session per actor)  ->  ordered write

Reading: CSV/TSV with pyarrow's reader (the text column read as bytes, so a row with undecodable bytes becomes
a reject instead of failing the read; the id column read as a string, as the local engine's csv module does),
JSONL as text lines parsed by the actors with the local engine's own parser, Parquet natively. The actors apply
the local engine's checks (``check_text``), the runtime's length-sorted batches (``Classifier.run``) and rounding
(``output_rows``), each over a batch of ``chunk_rows`` rows.

Writing: the result is consumed in order (``preserve_order``) by the driver and committed chunk by chunk
through the same ``ChunkedOutput`` as the local engine, so the output is one file in the same format, with the
same rows in the same order, the same rejects file, and the same crash safety. A resumed run re-reads the
committed rows and drops them (Ray Data has no cheap row offset).

Locally a Ray runtime is started with one CPU per core (one single-threaded ONNX session per CPU); with
``RAY_ADDRESS`` set it joins that cluster instead (slimship must be installed on its nodes).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from slimship.core.errors import UserError
from slimship.core.data import BadRow, file_format, parse_json_record
from slimship.score import ChunkedOutput, ScoreConfig, check_text, output_rows, reject_row, shown_text

LINE_COLUMN = "text"      # read_text's column


class ScoringActor:
    """One ONNX session; scores a batch of input rows into one result row each (rejects carry a reason)."""

    def __init__(self, model: str, fmt: str, text_column: str, id_column: str | None, batch_size: int,
                 labels: list[str], threads: int):
        from slimship.core.runtime import Classifier

        self.classifier = Classifier(model, threads=threads, verify=False)   # the driver verified it
        self.fmt, self.text_column, self.id_column = fmt, text_column, id_column
        self.columns = [text_column] + ([id_column] if id_column else [])
        self.batch_size, self.labels = batch_size, labels

    def records(self, batch) -> list[dict[str, Any] | BadRow]:
        if self.fmt == "jsonl":
            return [parse_json_record(line, self.columns) for line in batch.column(LINE_COLUMN).to_pylist()]
        values = {c: batch.column(c).to_pylist() for c in self.columns}
        return [{c: values[c][i] for c in self.columns} for i in range(batch.num_rows)]

    def __call__(self, batch):
        import pyarrow as pa

        n = batch.num_rows
        ids: list[Any] = [None] * n
        reasons: list[str | None] = [None] * n
        shown: list[str | None] = [None] * n
        texts, keep = [], []
        for i, record in enumerate(self.records(batch)):
            if isinstance(record, BadRow):
                reasons[i] = record.reason
                continue
            if self.id_column:
                ids[i] = record[self.id_column]
            text, reason = check_text(record[self.text_column], self.text_column)
            if reason is None:
                keep.append(i)
                texts.append(text)
            else:
                reasons[i], shown[i] = reason, shown_text(record[self.text_column])
        logits = self.classifier.run(self.classifier.encode(texts), batch_size=self.batch_size)
        label, score, probs = [None] * n, [None] * n, [None] * n
        for i, row in zip(keep, output_rows(ids, keep, logits, self.labels, probs=True)):
            label[i], score[i], probs[i] = row[1], row[2], row[3:]
        return pa.table({
            "id_json": pa.array([json.dumps(v, default=str) for v in ids], pa.string()),  # any id type, as is
            "label": pa.array(label, pa.string()),
            "score": pa.array(score, pa.float64()),
            "probs": pa.array(probs, pa.list_(pa.float64())),
            "reason": pa.array(reasons, pa.string()),
            "shown": pa.array(shown, pa.string()),
        })


def start_ray() -> bool:
    """Join RAY_ADDRESS's cluster or start a local runtime sized to this machine; True if we started one."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return False
    from slimship.core.runtime import default_threads

    ray.init(num_cpus=max(2, default_threads()), include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="warning")
    return True


# Ray schedules by logical CPUs. The actors together leave one CPU unreserved, or the read operators (a file
# listing task, then read tasks asking for READ_CPUS each) could never be scheduled beside them and the job would
# hang; the real work is bounded by each actor's ONNX Runtime threads, not by these numbers.
READ_CPUS = 0.5


def read_dataset(files: list[Path], cfg: ScoreConfig):
    import ray

    read_args = {"num_cpus": READ_CPUS}

    formats = {file_format(f) for f in files}
    if len(formats) > 1:
        raise UserError(f"--engine ray reads one format at a time; the inputs mix {', '.join(sorted(formats))}")
    fmt, paths = formats.pop(), [str(f.resolve()) for f in files]
    columns = [cfg.text_column] + ([cfg.id_column] if cfg.id_column else [])
    if fmt in ("csv", "tsv"):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        types = {cfg.text_column: pa.binary(), **({cfg.id_column: pa.string()} if cfg.id_column else {})}
        return fmt, ray.data.read_csv(
            paths, parse_options=pacsv.ParseOptions(delimiter="," if fmt == "csv" else "\t", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=types,
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
            **read_args)
    if fmt == "jsonl":
        return fmt, ray.data.read_text(paths, drop_empty_lines=True, **read_args)
    return fmt, ray.data.read_parquet(paths, columns=columns, **read_args)


def score_on_ray(cfg: ScoreConfig, files: list[Path], labels: list[str], sink: ChunkedOutput, bar) -> dict:
    import ray

    started_here = start_ray()
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True   # output order = input order
        context.enable_progress_bars = False               # ours counts committed rows
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = cfg.workers or cpus
        actor_cpus = max(0.05, min(1.0, (cpus - 1) / actors))
        fmt, dataset = read_dataset(files, cfg)
        scored = dataset.map_batches(
            ScoringActor, batch_format="pyarrow", batch_size=cfg.chunk_rows,
            fn_constructor_kwargs=dict(model=str(Path(cfg.model).resolve()), fmt=fmt, text_column=cfg.text_column,
                                       id_column=cfg.id_column, batch_size=cfg.batch_size, labels=labels,
                                       threads=max(1, cpus // actors)),
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus)
        return write_in_order(scored, cfg, sink, bar)
    except UserError:
        raise
    except Exception as e:   # a read or actor failure arrives wrapped; committed chunks stay for --resume
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"the Ray job failed: {first} (committed chunks are kept; fix and rerun with --resume, "
                        f"or try --engine local)") from None
    finally:
        if started_here:
            ray.shutdown()


def write_in_order(scored, cfg: ScoreConfig, sink: ChunkedOutput, bar) -> dict:
    """Commit the results chunk by chunk, numbering rows by position exactly as the local engine does."""
    skip, position = sink.rows_in, 0
    rows: list[list] = []
    rejects: list[list] = []
    started = time.perf_counter()
    for batch in scored.iter_batches(batch_size=cfg.chunk_rows, batch_format="pyarrow"):
        columns = batch.to_pydict()
        for id_json, label, score, probs, reason, shown in zip(columns["id_json"], columns["label"],
                                                               columns["score"], columns["probs"],
                                                               columns["reason"], columns["shown"]):
            position += 1
            if position <= skip:
                continue
            row_id = json.loads(id_json) if cfg.id_column else position
            if reason is None:
                rows.append([row_id, label, score] + (probs if cfg.probs else []))
            else:
                rejects.append(reject_row(position, row_id, reason, shown, cfg.id_column))
            if len(rows) + len(rejects) == cfg.chunk_rows:
                sink.commit(cfg.chunk_rows, rows, rejects)
                bar.update(cfg.chunk_rows)
                rows, rejects = [], []
    if rows or rejects:
        sink.commit(len(rows) + len(rejects), rows, rejects)
        bar.update(len(rows) + len(rejects))
    return {"ray_s": time.perf_counter() - started}


def score_with_ray(cfg: ScoreConfig):
    """``slimship.score.score`` with the chunks run on Ray Data."""
    from slimship.score import score

    return score(cfg, engine=score_on_ray)
