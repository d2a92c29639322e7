"""The arithmetic of the U-Net's passes: float32, or bfloat16 where the hardware has it.

``SegmentationConfig.precision`` (prediction) and ``train_precision`` (training steps) take
one of :data:`PRECISIONS`; :func:`inference_dtype` turns it into a torch dtype for the
device at hand and :func:`arithmetic` into the context a pass runs in.  The accuracy and
speed of bfloat16 are in docs/performance.md.
"""

from __future__ import annotations

import contextlib

import torch

from mcf_fast.config import PRECISIONS
from mcf_fast.errors import ConfigError

__all__ = ["PRECISIONS", "arithmetic", "inference_dtype"]


def inference_dtype(precision: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The arithmetic of a network pass: ``torch.float32`` or ``torch.bfloat16``.

    ``"bfloat16"`` runs the convolutions in bfloat16 (``torch.autocast``; the probabilities
    stay float32); ``"auto"`` chooses it only where the device computes it natively (a CPU
    with AVX-512 BF16 or AMX as oneDNN reports it, a GPU with bfloat16 support) and float32
    elsewhere, where emulated bfloat16 would be slower than float32.

    Raises
    ------
    ConfigError
        For another value.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r}: expected one of {PRECISIONS}")
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    dev = torch.device(device)
    if dev.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = dev.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return torch.bfloat16 if native else torch.float32


def arithmetic(precision: str, device: str | torch.device = "cpu"):
    """The context a network pass runs in: none for float32, ``torch.autocast`` otherwise.

    Raises
    ------
    ConfigError
        For a ``precision`` outside :data:`PRECISIONS`.
    """
    dev = torch.device(device)
    dtype = inference_dtype(precision, dev)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)
