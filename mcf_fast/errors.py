"""The error hierarchy of mcf_fast.

Every error the library raises on purpose derives from :class:`McfError`, so a caller can
catch the library's errors apart from bugs.  Errors about bad input or bad configuration
also derive from :class:`ValueError`, so code written against plain numpy idioms keeps
working.
"""

from __future__ import annotations

__all__ = [
    "McfError",
    "InputError",
    "ConfigError",
    "FormatError",
    "DataError",
    "describe",
]


class McfError(Exception):
    """Base class of every error raised by mcf_fast."""


class InputError(McfError, ValueError):
    """An argument, array or file does not hold what was expected."""


class ConfigError(McfError, ValueError):
    """A configuration field holds an invalid value."""


class FormatError(InputError):
    """A file exists but its format or version is not one mcf_fast reads."""


class DataError(InputError):
    """A dataset folder is missing files, or its images and masks do not pair up."""


#: words of numpy's and torch's advice to load a file unsafely, which must not reach a user
_UNSAFE_ADVICE = ("allow_pickle", "weights_only", "pickle.load")


def describe(exc: BaseException) -> str:
    """``"Type: message"`` of a reader's exception, for the reason part of an error.

    A message that advises loading the file unsafely (numpy's ``allow_pickle``, torch's
    ``weights_only=False``: both would run code from an untrusted file) is replaced by a
    plain statement that the file holds objects mcf_fast does not load.
    """
    msg = str(exc)
    if any(word in msg for word in _UNSAFE_ADVICE):
        msg = "it holds pickled objects or other data that mcf_fast never loads"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
