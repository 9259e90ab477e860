"""Errors a user can cause. The CLI prints them as one line and exits with code 2.

Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (config, data file, path), reported as one line."""


class ConfigError(UserError):
    """The experiment config is invalid: the message names the file and the key."""


class DataError(UserError):
    """A data file or source is malformed: the message names the file, record and field."""


def one_line(e: BaseException, *, first: bool = False, limit: int = 300) -> str:
    """What an exception from a library says, as one line of at most ``limit`` characters:
    its text with every run of whitespace (newlines too) made one space, or with ``first``
    its first non-empty line only; its type's name when it says nothing."""
    text = str(e).strip()
    if first:
        text = text.splitlines()[0] if text else ""
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
