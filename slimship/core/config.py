"""Configuration: the data settings every stage shares, and one way to fill config dataclasses.

Every option is defined once, as a field of a config dataclass: its type, its default and (in the field's
metadata, see ``opt``) its help. The command line is built from those fields (``add_options``), and a YAML
file or a grid mapping is validated against the same fields by pydantic with unknown keys refused, so
``train: {epoch: 3}`` stops with one line naming the key and the closest valid one instead of being ignored.

A YAML config file holds option names as keys (``max_length`` or ``max-length``). Keys at the top level apply to
every command that has that option; a section named after a command (``train:``, ``compress:``, ...) applies to
that command only. Command-line options win over the file, and the file wins over the defaults.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from slimship.core.errors import UserError

Task = Literal["classification", "multilabel", "regression"]


def opt(help: str, *, name: str | None = None, flags: tuple[str, ...] = (), parse=None) -> dict[str, Any]:
    """Field metadata for the command line: its help, its option name when it differs from the field's, extra
    flags (aliases), and a parser for the command-line string when the type alone cannot read it."""
    return {"help": help, "name": name, "flags": flags, "parse": parse}


def option_name(f) -> str:
    return f.metadata.get("name") or f.name


# --- the data every stage reads ------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the labelled data is and how to read and split it: shared by every stage that reads data."""

    path: str | None = field(default=None, metadata=opt(
        "a directory with train/validation[/test] files, or one file to split (CSV, TSV, JSONL or Parquet); "
        "rows with empty text are skipped and counted", name="data"))
    text_column: str = field(default="text", metadata=opt("column holding the text"))
    label_column: str = field(default="label", metadata=opt(
        "column holding the label: a label (classification), labels joined by ';' in CSV/TSV or an array in "
        "JSONL/Parquet (multilabel), or a number (regression)"))
    text_pair_column: str | None = field(default=None, metadata=opt(
        "column holding the second text of sentence pairs (default: text_pair, when the data has that column)"))
    task: Task | None = field(default=None, metadata=opt(
        "classification, multilabel or regression (default: inferred from the training labels: lists -> "
        "multilabel, numbers that are not all whole -> regression, else classification)"))
    validation_fraction: float = field(default=0.1, metadata=opt(
        "share of a single data file held out for validation"))
    max_train_rows: int | None = field(default=None, metadata=opt(
        "use a deterministic sample of this many training rows (default: every row)"))
    max_eval_rows: int | None = field(default=None, metadata=opt(
        "evaluate on only the first N validation/test rows (default: every row)"))
    split_seed: int = field(default=42, metadata=opt(
        "seed of the validation split of a single file and of the --max-train-rows sample"))

    def check(self) -> None:
        if not self.path:
            raise UserError("--data is needed")
        if not 0.0 < self.validation_fraction < 1.0:
            raise UserError(f"--validation-fraction must be between 0 and 1, not {self.validation_fraction}")
        for name in ("max_train_rows", "max_eval_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (or left out), not {value}")

    def options(self) -> dict[str, Any]:
        """The settings by option name (``data`` for the path), as manifests record them."""
        return {option_name(f): getattr(self, f.name) for f in fields(self)}

    def fingerprint(self) -> str:
        """sha256 of the data files' names and bytes and of every other setting: a cache key that changes when
        the data is edited, wherever it lives (a hub name is all there is to hash of a hub dataset)."""
        from slimship.core import artifact
        from slimship.core.data import FORMATS

        path = Path(self.path or "")
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in FORMATS) if path.is_dir() else [path]
        content = hashlib.sha256()
        if self.path and files and all(p.is_file() for p in files):
            for p in files:
                content.update(p.name.encode())
                content.update(artifact.sha256_file(p).encode())
        else:
            content.update(str(self.path).encode())
        return content_key({"files": content.hexdigest(), **{k: v for k, v in self.options().items() if k != "data"}})


def content_key(value: Any) -> str:
    """The one cache key: sha256 of canonical JSON, where 1 and 1.0 are the same value (a YAML file or Python
    may give an int where the command line gives a float)."""
    return hashlib.sha256(json.dumps(_numbers_as_floats(value), sort_keys=True, default=str).encode()).hexdigest()


def _numbers_as_floats(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers_as_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# --- the command line from the dataclasses -------------------------------------------------------------------


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_inner(hint):
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def cli_fields(cls, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> list:
    """The fields of ``cls`` that are command-line options: scalars (and those with their own parser)."""
    hints = _hints(cls)
    chosen = []
    for f in fields(cls):
        if f.name in skip or f.name.startswith("_") or (only is not None and f.name not in only):
            continue
        inner = _optional_inner(hints[f.name])
        if f.metadata.get("parse") or inner in (bool, int, float, str) or typing.get_origin(inner) is Literal:
            chosen.append(f)
    return chosen


def field_default(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def add_options(parser, cls, *, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                title: str | None = None) -> None:
    """One option per scalar field of ``cls``, with the field's default, type, choices and help."""
    target = parser.add_argument_group(title) if title else parser
    hints = _hints(cls)
    for f in cli_fields(cls, skip, only):
        name, hint = option_name(f), hints[f.name]
        inner = _optional_inner(hint)
        default = field_default(f)
        help_text = f.metadata.get("help") or ""
        if default not in (None, False) and "default" not in help_text:
            help_text += f" (default: {default})"
        flags = ["--" + name.replace("_", "-"), *f.metadata.get("flags", ())]
        kwargs: dict[str, Any] = {"dest": name, "default": default, "help": help_text.strip() or None}
        if inner is bool:
            kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        elif f.metadata.get("parse"):
            kwargs["type"] = f.metadata["parse"]
            hint = Union[hint, str]       # a config file may also give the command-line form
        elif typing.get_origin(inner) is Literal:
            kwargs["choices"] = list(typing.get_args(inner))
            kwargs["type"] = type(kwargs["choices"][0])
        else:
            kwargs["type"] = inner
        action = target.add_argument(*flags, **kwargs)
        action.annotation = hint          # what a config-file value for it must be (see parser_annotations)
        action.field_of = cls             # where its default and help come from (tests/test_config.py checks)


def from_args(args: argparse.Namespace, cls, **extra):
    """An instance of ``cls`` from parsed options: the fields the parser has, ``extra`` for the rest."""
    values = {f.name: getattr(args, option_name(f)) for f in fields(cls) if hasattr(args, option_name(f))}
    return cls(**{**values, **extra})


# --- YAML files and mappings, validated against the fields ---------------------------------------------------


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of option names to values")
    return data


def _normalise(mapping: dict[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in mapping.items()}


def _model(name: str, annotations: dict[str, Any]):
    """A pydantic model of optional fields that refuses any other key. The keys are aliases, so an option may
    have any name (``json``, ``copy``, ... would shadow a pydantic method)."""
    from pydantic import ConfigDict, Field, create_model

    return create_model(name, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                        **{f"field_{i}": (typing.Optional[hint], Field(None, alias=key))
                           for i, (key, hint) in enumerate(annotations.items())})


def annotations_of(*classes, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Option name -> type over the fields of ``classes`` (the keys a mapping of their settings may hold)."""
    found: dict[str, Any] = {}
    for cls in classes:
        hints = _hints(cls)
        for f in fields(cls):
            if f.name not in skip and not f.name.startswith("_"):
                found.setdefault(option_name(f), hints[f.name])
    return found


def validate(values: Any, annotations: dict[str, Any], source: str, section: str | None = None) -> dict[str, Any]:
    """``values`` checked against ``annotations`` (unknown keys and wrong types are one-line errors); returns the
    given keys with their validated values."""
    from pydantic import ValidationError

    if not isinstance(values, dict):
        raise UserError(f"{source}: section {section!r} must be a mapping, not {values!r}" if section else
                        f"{source}: must be a mapping, not {values!r}")
    values = _normalise(values)
    try:
        checked = _model("Options", annotations).model_validate(values)
    except ValidationError as e:
        raise UserError(validation_message(e, annotations, source, section)) from None
    dumped = checked.model_dump(by_alias=True)
    return {key: dumped[key] for key in values}


def validation_message(error, annotations: dict[str, Any], source: str, section: str | None) -> str:
    """The first problem of a pydantic ValidationError as one line; an unknown key names the closest known."""
    problems = sorted(error.errors(), key=lambda p: p["type"] not in ("extra_forbidden", "unexpected_keyword_argument"))
    problem = problems[0]
    loc = [str(part) for part in problem["loc"]]
    key = loc[-1] if loc else "?"
    where = ".".join(filter(None, [section, *loc[:-1]]))
    in_section = f" in section {where!r}" if where else ""
    if problem["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return unknown_key_message(key, list(annotations) if len(loc) == 1 else [], source, where)
    return f"{source}: {key!r}{in_section}: {problem['msg']} (got {problem.get('input')!r})"


def unknown_key_message(key: str, valid: list[str], source: str, section: str | None = None) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{source}: unknown key {key!r}" + (f" in section {section!r}" if section else "") + hint


def check_keys(mapping: dict[str, Any], valid: list[str], source: str, section: str | None = None) -> None:
    for key in mapping:
        if str(key).replace("-", "_") not in valid:
            raise UserError(unknown_key_message(str(key), valid, source, section))


def parse_dataclass(cls, values: Any, source: str, section: str | None = None):
    """An instance of the config dataclass ``cls`` from a mapping: unknown keys and wrong types refused."""
    checked = validate(values, annotations_of(cls), source, section)
    by_option = {option_name(f): f.name for f in fields(cls)}
    return cls(**{by_option[k]: v for k, v in checked.items()})


# --- a config file for the command line ----------------------------------------------------------------------


def parser_annotations(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """dest -> the type a config-file value for that option must have."""
    found = {}
    for action in parser._actions:
        if action.dest in ("help", "config", "command") or action.dest == argparse.SUPPRESS:
            continue
        hint = getattr(action, "annotation", None)
        if hint is None:
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                hint = bool
            elif action.choices is not None:
                hint = Literal[tuple(action.choices)]
            elif action.type in (int, float):
                hint = action.type
            elif action.type is None:
                hint = str
            else:
                hint = Any
        found[action.dest] = hint
    return found


class Located(dict):
    """A mapping value of a config file that knows where it was given (``compress.grid``, or ``grid`` at the
    top level), so an error about one of its keys names that section."""

    def __init__(self, values: dict, section: str):
        super().__init__(values)
        self.section = section


def section_of(value: Any, default: str) -> str:
    """Where a config file gave ``value`` (see Located); ``default`` for anything else."""
    return getattr(value, "section", None) or default


def config_file_values(path: str | Path, parsers: dict[str, argparse.ArgumentParser]) -> dict[str, dict[str, Any]]:
    """The values a config file gives each command: its top-level keys that the command has, then the
    command's own section over them. The whole file is checked, whichever command reads it."""
    source = str(path)
    document = _normalise(load_yaml(path))
    sections = {name.replace("-", "_"): parser_annotations(p) for name, p in parsers.items()}
    top: dict[str, Any] = {}
    for hints in sections.values():
        for key, hint in hints.items():
            top[key] = hint if top.get(key, hint) == hint else Any
    given_sections = {k: document.pop(k) for k in list(document) if k in sections}
    check_keys(document, sorted(top) + sorted(sections), source)
    top_values = validate(document, top, source)
    result = {}
    for name, hints in sections.items():
        own = validate(given_sections.get(name) or {}, hints, source, name)
        merged = {**{k: v for k, v in top_values.items() if k in hints}, **own}
        result[name] = {k: Located(v, f"{name}.{k}" if k in own else k) if isinstance(v, dict) else v
                        for k, v in merged.items()}
    return result
