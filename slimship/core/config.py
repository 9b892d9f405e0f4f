"""Plain YAML configs: any CLI option can also come from a file.

A config file holds option names as keys (``max_length`` or ``max-length``). Keys at the top level apply to
every command that has that option; a section named after a command (``train:``, ``distill:``, ...) applies
to that command only. Options given on the command line win over the file, and the file wins over defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from slimship.core.errors import UserError

SECTIONS = ("train", "distill", "prune", "trim_vocab", "export", "quantize", "compress", "evaluate", "serve",
            "build", "containerize", "score", "run", "report")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of option names to values")
    return data


def _normalise(key: str) -> str:
    return str(key).replace("-", "_")


def options_for(config: dict[str, Any], command: str, known: set[str], all_known: set[str], source: str) -> dict:
    """The values a config gives for ``command``: its top-level keys, then its own section over them.

    ``known`` are the command's option names; ``all_known`` every command's. A key no command knows is an
    error (a typo would otherwise be silently ignored).
    """
    values: dict[str, Any] = {}
    for key, value in config.items():
        name = _normalise(key)
        if name in SECTIONS and isinstance(value, dict):
            continue
        if name not in all_known:
            raise UserError(f"{source}: unknown option {key!r}")
        if name in known:
            values[name] = value
    section = config.get(command) or {}
    if not isinstance(section, dict):
        raise UserError(f"{source}: section {command!r} must be a mapping")
    for key, value in section.items():
        name = _normalise(key)
        if name not in known:
            raise UserError(f"{source}: unknown option {key!r} in section {command!r}")
        values[name] = value
    return values


def parser_dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest not in ("help", "config", "command")}
