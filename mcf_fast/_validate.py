"""Checks shared by the public functions of every layer: one rule, one message.

Each check names the argument and the bad value in an :class:`~mcf_fast.errors.InputError`
(or :class:`~mcf_fast.errors.ConfigError`), as the rest of the package does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mcf_fast.errors import FormatError, InputError

__all__ = ["as_int", "check_version", "cuda_missing", "is_device"]


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


def check_version(found: Any, supported: int, what: str, *, hint: str = "") -> None:
    """The format-version rule of every versioned file: exactly the version this code writes.

    Parameters
    ----------
    found : any
        The version the file records (None when it records none).
    supported : int
        The one version this mcf_fast reads.
    what : str
        Where and what, e.g. ``"t.json: template-set format version"``.
    hint : str
        Appended to the message (e.g. what to do instead).

    Raises
    ------
    FormatError
        ``"{what} {found!r} is not supported (this mcf_fast reads version N){hint}"``.
    """
    if found != supported:
        raise FormatError(
            f"{what} {found!r} is not supported (this mcf_fast reads version {supported}){hint}"
        )


def is_device(device: Any) -> bool:
    """The one device rule: ``"cpu"``, or ``"cuda"`` / ``"cuda:N"`` (torch checks N)."""
    return isinstance(device, str) and (device == "cpu" or device.startswith("cuda"))


def cuda_missing(device: str) -> bool:
    """True when `device` is a CUDA device and torch finds none on this machine."""
    if not device.startswith("cuda"):
        return False
    import torch

    return not torch.cuda.is_available()
