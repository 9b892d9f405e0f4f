"""The `slimship` command: one subcommand per stage. Thin: parsing and error reporting only.

Each subcommand lives in ``slimship/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args)``;
heavy libraries (torch, transformers) are imported inside ``run`` so ``--help`` stays instant. Every mistake on
the command line or in a --config file (an unknown option or key, a wrong type) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from slimship import __version__
from slimship.core.errors import UserError
from slimship.core.config import config_file_values

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


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one-line UserErrors and no abbreviated option names (``--epoch`` must not
    quietly mean ``--epochs``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        raise UserError(message)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = Parser(
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


def _parse(parser: argparse.ArgumentParser, parsers: dict, argv: list[str]) -> argparse.Namespace:
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UserError(unknown_option_message(unknown[0], parsers[args.command]))
    return args


def unknown_option_message(option: str, parser: argparse.ArgumentParser) -> str:
    if not option.startswith("-"):
        return f"unexpected argument {option!r}"
    name = option.split("=", 1)[0]
    close = difflib.get_close_matches(name, [s for s in parser._option_string_actions if s.startswith("--")], n=1)
    return f"unknown option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def given_options(argv: list[str], parser: argparse.ArgumentParser) -> set[str]:
    """The dests of the options written on the command line (they win over a config file)."""
    actions = parser._option_string_actions
    return {actions[token.split("=", 1)[0]].dest for token in argv if token.split("=", 1)[0] in actions}


def command_args(command: str, file_values: dict[str, dict], overrides: dict) -> argparse.Namespace:
    """The options ``slimship COMMAND`` would run with, given a config file's values and the options written on
    the command line of another command (``slimship run`` runs train and compress this way)."""
    _, parsers = build_parser()
    sub = parsers[command]
    known = {a.dest for a in sub._actions}
    sub.set_defaults(**file_values.get(command.replace("-", "_"), {}))
    sub.set_defaults(**{k: v for k, v in overrides.items() if k in known})
    return sub.parse_args([])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, parsers = build_parser()
    args = _parse(parser, parsers, argv)
    sub = parsers[args.command]
    file_values: dict[str, dict] = {}
    if getattr(args, "config", None):
        file_values = config_file_values(args.config, parsers)
        sub.set_defaults(**file_values[args.command.replace("-", "_")])
        args = _parse(parser, parsers, argv)
    args._file_values = file_values
    args._given = given_options(argv, sub)
    missing = [a for a in getattr(args, "_required", []) if getattr(args, a, None) in (None, "")]
    if missing:
        raise UserError(f"{args.command}: the following options are required (on the command line or in --config): "
                        + ", ".join("--" + m.replace("_", "-") for m in missing))
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UserError as e:  # a bad option or --config file
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
