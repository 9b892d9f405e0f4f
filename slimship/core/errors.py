"""Errors that the CLI reports on one line, without a traceback."""


class UserError(Exception):
    """A mistake in the user's input (data, paths, options).

    The CLI prints the message on one line and exits with status 2, without a traceback.
    """
