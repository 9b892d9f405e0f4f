"""One module per subcommand: ``add_arguments(parser)`` and ``run(args)``.

Options come from the config dataclasses' fields (slimship.core.config.add_options), so each default and help
text is written once, beside the field it belongs to.
"""

from dataclasses import fields

from slimship.core.config import DataConfig, add_options, from_args


def require(parser, *names: str) -> None:
    """Mark options as required after --config is applied (argparse's own required= ignores config files)."""
    parser.set_defaults(_required=list(names))


def add_data_options(parser, skip: tuple[str, ...] = ()) -> None:
    add_options(parser, DataConfig, skip=skip, title="data")


def add_training_options(parser) -> None:
    """The Trainer options of train and distill (and compress's students): slimship/train/config.py."""
    from slimship.train.config import TrainConfig

    add_options(parser, TrainConfig, title="training")


def field_names(cls) -> tuple[str, ...]:
    """The fields of ``cls``: what to skip when a subclass's own options go in a group of their own."""
    return tuple(f.name for f in fields(cls))


def data_config(args) -> DataConfig:
    return from_args(args, DataConfig)


def optional_data_config(args) -> DataConfig | None:
    """The data settings, or None when no --data was given (the stage then does without)."""
    return data_config(args) if getattr(args, "data", None) else None
