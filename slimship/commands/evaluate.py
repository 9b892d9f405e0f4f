"""Print and write the metrics of an artifact (PyTorch or ONNX) on a data split.

The artifact's sha256 digests are verified first. Metrics (accuracy, macro-F1, per-class precision/recall,
confusion matrix) are written to DIR/evaluation-<split>.json.

Example:
  slimship evaluate --model runs/teacher --data examples/sentiment
"""

import json

from slimship.commands import add_data_options, data_config, require


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="artifact directory (PyTorch or ONNX)")
    parser.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the full metrics as JSON")
    add_data_options(parser, skip=("max_train_rows",))
    require(parser, "model", "data")


def run(args) -> int:
    from slimship.compress.evaluate import evaluate
    from slimship.core.metrics import summary_line

    data = data_config(args)
    metrics = evaluate(args.model, data.path, split=args.split, text_column=data.text_column,
                       label_column=data.label_column, max_rows=data.max_eval_rows, batch_size=args.eval_batch_size,
                       seed=data.split_seed, validation_fraction=data.validation_fraction,
                       text_pair_column=data.text_pair_column)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{args.model} on {args.split}: {summary_line(metrics)}")
        for label, m in metrics.get("per_class", {}).items():
            print(f"  {label:<16} precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
                  f"f1 {m['f1']:.3f}  support {m['support']}")
    return 0
