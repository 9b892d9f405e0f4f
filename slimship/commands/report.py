"""Print the report of a compression or pipeline output directory (its report.json).

One row per stage/candidate: parameters, MACs, file MB, accuracy, macro-F1, Δ vs the teacher, batch-1 latency
p50/p95 and batch-32 throughput; the chosen candidate and the Pareto front are marked. report.md and
pareto.png sit beside report.json.

Example:
  slimship report runs/compressed
"""

import json


def add_arguments(parser) -> None:
    parser.add_argument("dir", nargs="?", help="a directory holding report.json (from compress or run)")
    parser.add_argument("--format", choices=["text", "markdown", "json"], default="text",
                        help="how to print it (default: text)")


def run(args) -> int:
    from slimship.core.errors import UserError
    from slimship.core.report import load_report, render_markdown, render_text

    if not args.dir:
        raise UserError("give the directory to report on, e.g. `slimship report runs/compressed`")
    report = load_report(args.dir)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    elif args.format == "markdown":
        print(render_markdown(report))
    else:
        print(render_text(report))
    return 0
