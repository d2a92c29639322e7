"""Checks shared by the public functions of every layer: one rule, one message.

Each check names the argument and the bad value in an :class:`~mcf_fast.errors.InputError`
(or :class:`~mcf_fast.errors.ConfigError`), as the rest of the package does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcf_fast.errors import InputError

__all__ = ["as_int"]


def as_int(v: Any, name: str) -> int:
    """`v` as an int: an integer, or a float with an integral value; never a bool.

    Raises
    ------
    InputError
        Naming `name` and the value, for anything else.
    """
    if isinstance(v, (bool, np.bool_)):
        raise InputError(f"{name}: expected an integer, got {v!r}")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    raise InputError(f"{name}: expected an integer, got {v!r}")
