"""The `slimship` command: one subcommand per stage. Thin: parsing and error reporting only.

Each subcommand lives in ``slimship/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args)``;
heavy libraries (torch, transformers) are imported inside ``run`` so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from slimship import __version__
from slimship.core.errors import UserError
from slimship.core.config import load_yaml, options_for, parser_dests

# (name, module, one-line help) in pipeline order.
COMMANDS = [
    ("train", "train", "fine-tune a pretrained model on labelled text (AMP, early stopping, resume)"),
    ("evaluate", "evaluate", "metrics of a PyTorch or ONNX artifact on a data split"),
    ("distill", "distill", "knowledge-distil a teacher artifact into a smaller student"),
    ("prune", "prune", "structured pruning of heads / FFN channels / hidden size, with recovery"),
    ("trim-vocab", "trim_vocab", "keep only the tokens the training data uses (smaller word embeddings)"),
    ("export", "export", "export a PyTorch artifact to ONNX, with a parity gate"),
    ("quantize", "quantize", "INT8-quantize an ONNX artifact (dynamic or static)"),
    ("compress", "compress", "search distill/prune/export/quantize for the fastest model within a budget"),
    ("report", "report", "print the report of a pipeline or compression output"),
    ("serve", "serve", "serve an ONNX artifact over HTTP with BentoML"),
    ("build", "build", "build a bento from an ONNX artifact and print its tag"),
    ("containerize", "containerize", "build (and push) an OCI image of the service"),
    ("score", "score", "score a large file offline, streaming and resumable"),
    ("run", "run", "the whole chain: train, compress, export, report, bento (and image)"),
]


def _command_module(module: str):
    return importlib.import_module(f"slimship.commands.{module}")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="slimship",
        description="Fine-tune, compress, export and ship transformer text classifiers. "
                    "Every stage reads an artifact directory and writes another (see docs/ARCHITECTURE.md).",
    )
    parser.add_argument("--version", action="version", version=f"slimship {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parsers = {}
    for name, module, help_text in COMMANDS:
        mod = _command_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", metavar="FILE.yaml",
                       help="read options from a YAML file (command-line options win)")
        mod.add_arguments(p)
        p.set_defaults(_module=module)
        parsers[name] = p
    return parser, parsers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser, parsers = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        config = load_yaml(args.config)
        all_known = set().union(*(parser_dests(p) for p in parsers.values()))
        sub = parsers[args.command]
        values = options_for(config, args.command, parser_dests(sub), all_known, args.config)
        sub.set_defaults(**values)
        args = parser.parse_args(argv)
    missing = [a for a in getattr(args, "_required", []) if getattr(args, a, None) in (None, "")]
    if missing:
        parsers[args.command].error("the following options are required (on the command line or in --config): "
                                    + ", ".join("--" + m.replace("_", "-") for m in missing))
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UserError as e:  # a bad --config file
        print(f"slimship: error: {e}", file=sys.stderr)
        return 2
    try:
        result = _command_module(args._module).run(args)
    except UserError as e:
        print(f"slimship {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"slimship {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
