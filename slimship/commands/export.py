"""Export a PyTorch artifact to an ONNX artifact, refused unless it passes the parity gate.

The PyTorch model and the finished ONNX artifact (run through the serving runtime, tokenizer included) are
compared on validation rows: the share of rows whose predicted label agrees and the largest |logit difference|
are recorded in the manifest. Below --min-agreement the export fails and nothing is written. Rows come from
--data, else from the data the model was trained on (as its manifest records), else built-in probe sentences.

--optimize O1/O2/O3 applies ONNX Runtime's transformer optimizer (O2/O3 fuse attention, layer norm, GELU). It
is not always faster: on a 2-core x86 CPU the fused MiniLM graph was slower at batch 32, so measure
(`slimship compress` tries both).

Examples:
  slimship export --model runs/teacher --out runs/teacher-onnx --data examples/sentiment
  slimship export --model runs/student --out runs/student-o2 --optimize O2
"""

from slimship.commands import add_data_options, optional_data_config, require
from slimship.compress.config import ExportConfig
from slimship.core.config import add_options, from_args


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="PyTorch artifact directory (from train, distill or prune)")
    parser.add_argument("--out", help="ONNX artifact directory to write")
    add_options(parser, ExportConfig, title="export and parity gate")
    add_data_options(parser, skip=("max_train_rows",))   # --data: its validation rows are the parity rows
    require(parser, "model", "out")


def run(args) -> int:
    from slimship.compress.export import export

    out = export(args.model, args.out, optional_data_config(args), from_args(args, ExportConfig))
    from slimship.core import artifact

    m = artifact.load(out)
    p = m["parity"]
    print(f"exported {out}: {m['file_mb']:.1f} MB, optimize {m['optimize']}; parity {p['agreement'] * 100:.2f}% "
          f"agreement over {p['rows']} rows, max |Δlogit| {p['max_abs_logit_diff']:.2e}")
    validation = (m.get("metrics") or {}).get("validation")
    if validation and "metrics_from" not in m:
        from slimship.core.metrics import summary_line

        print(f"  validation {summary_line(validation)}")
    return 0
