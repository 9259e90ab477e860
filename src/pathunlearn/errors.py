"""Errors a user can cause. The CLI prints them as one line and exits with code 2.

Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (config, data file, path), reported as one line."""


class ConfigError(UserError):
    """The experiment config is invalid: the message names the file and the key."""


class DataError(UserError):
    """A data file or source is malformed: the message names the file, record and field."""
