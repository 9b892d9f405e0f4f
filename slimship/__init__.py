"""slimship: fine-tune, compress, export and ship transformer text classifiers."""

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake in the user's input (data, paths, options).

    The CLI prints the message on one line and exits with status 2, without a traceback.
    """
