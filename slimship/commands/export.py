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

from slimship.commands import require


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="PyTorch artifact directory (from train, distill or prune)")
    parser.add_argument("--out", help="ONNX artifact directory to write")
    parser.add_argument("--optimize", choices=["none", "O1", "O2", "O3"], default="none",
                        help="ONNX Runtime graph optimization / fusion level (default: none)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: optimum's choice for the model)")
    gate = parser.add_argument_group("parity gate")
    gate.add_argument("--data", help="data whose validation rows the gate compares on (default: the model's own)")
    gate.add_argument("--parity-rows", type=int, help="compare on only the first N validation rows")
    gate.add_argument("--min-agreement", type=float, default=0.995,
                      help="least share of rows whose predicted label must agree (default: 0.995)")
    gate.add_argument("--max-logit-diff", type=float,
                      help="also fail when any |logit difference| exceeds this (default: recorded only)")
    gate.add_argument("--text-column", default="text")
    gate.add_argument("--label-column", default="label")
    require(parser, "model", "out")


def run(args) -> int:
    from slimship.compress.export import ExportConfig, export

    cfg = ExportConfig(optimize=args.optimize, opset=args.opset, min_agreement=args.min_agreement,
                       max_logit_diff=args.max_logit_diff, parity_rows=args.parity_rows,
                       text_column=args.text_column, label_column=args.label_column)
    out = export(args.model, args.out, data=args.data, cfg=cfg)
    from slimship.core import artifact

    m = artifact.load(out)
    p = m["parity"]
    print(f"exported {out}: {m['file_mb']:.1f} MB, optimize {m['optimize']}; parity {p['agreement'] * 100:.2f}% "
          f"agreement over {p['rows']} rows, max |Δlogit| {p['max_abs_logit_diff']:.2e}")
    validation = (m.get("metrics") or {}).get("validation")
    if validation and "metrics_from" not in m:
        print(f"  validation accuracy {validation['accuracy'] * 100:.2f}%  macro-F1 {validation['macro_f1'] * 100:.2f}%")
    return 0
