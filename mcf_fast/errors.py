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
