"""Score a large file offline with an ONNX artifact: streaming, resumable, in input order.

The input (CSV, TSV, JSONL or Parquet; or a directory or glob of them) is streamed in chunks, so memory stays
bounded whatever its size. The output format follows its extension (.csv, .jsonl, .parquet): one row per scored
input row, in input order, with the id (--id-column, or the 1-based row position) and the answer, by the
model's task: classification "label", "score" (with --probs every class probability, prob_LABEL); multilabel
"labels" (the labels over their thresholds, highest first, joined by ';'; with --probs prob_LABEL); regression
"score". A model trained on sentence pairs reads the second text from --text-pair-column (default:
text_pair). Rows whose text (or pair) is missing, empty, not a string or not UTF-8 go to OUTPUT.rejects.EXT
with the reason; rows out + rejects = rows in.

Every chunk is committed (fsynced) to OUTPUT.parts/ as it is scored; after a crash or kill, --resume carries on
from the last committed chunk. The finished output replaces nothing unless --overwrite is given.

--engine ray runs the same scoring on Ray Data with an actor pool (one ONNX session per actor); it starts a
local Ray sized to this machine, or joins the cluster named by RAY_ADDRESS.

Examples:
  slimship score --model runs/demo/model --input reviews.csv --output scores.parquet
  slimship score --model runs/demo/model --input 'shards/*.jsonl' --output scores.csv --id-column id --probs
  slimship score --model runs/demo/model --input reviews.csv --output scores.csv --resume
"""

from slimship.commands import require


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="ONNX artifact directory (from export, quantize or compress)")
    parser.add_argument("--input", help="CSV/TSV/JSONL/Parquet file, a directory of them, or a quoted glob")
    parser.add_argument("--output", help="output file; .csv, .jsonl or .parquet")
    parser.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    parser.add_argument("--text-pair-column",
                        help="pair models: column holding the second text of each pair (default: text_pair)")
    parser.add_argument("--id-column", help="column to copy into the output as the id (default: the row number)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per ONNX Runtime call (default: 64)")
    parser.add_argument("--chunk-rows", type=int, default=4096,
                        help="rows read, sorted by length and committed together (default: 4096)")
    parser.add_argument("--workers", type=int,
                        help="local: ONNX Runtime threads; ray: scoring actors (default: from the CPU count)")
    parser.add_argument("--probs", action="store_true", help="also write every class probability (prob_LABEL)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last commit")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (and its rejects)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: threads in this process; ray: Ray Data actor pool (default: local)")
    parser.add_argument("--no-prefetch", action="store_true",
                        help="tokenize and score one after the other (default: tokenize the next chunk meanwhile)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    require(parser, "model", "input", "output")


def run(args) -> int:
    from slimship.score import ScoreConfig, score

    cfg = ScoreConfig(model=args.model, inputs=args.input, output=args.output, text_column=args.text_column,
                      text_pair_column=args.text_pair_column, id_column=args.id_column,
                      batch_size=args.batch_size, chunk_rows=args.chunk_rows,
                      workers=args.workers, probs=args.probs, resume=args.resume, overwrite=args.overwrite,
                      engine=args.engine, prefetch=not args.no_prefetch, quiet=args.quiet)
    if cfg.engine == "ray":
        from slimship.score_ray import score_with_ray

        summary = score_with_ray(cfg)
    else:
        summary = score(cfg)
    print(summary.line())
    return 0
