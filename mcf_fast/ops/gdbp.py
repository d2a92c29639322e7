"""Gradient-direction-based post-processing (GDBP), eq. (4) of the paper.

For every pixel ``(i, j)`` and each of the eight directions ``r`` (E, W, S, N, SE, NW, SW,
NE; the paper's r = 4 line repeats ``p`` where it means ``q`` and mirrors r = 3)::

    d_r = sum_{1 <= p' <= P}  sum_{p' < q' <= Q}  S(p' steps out) - S(q' steps out)

    D = sum_r d_r   if every d_r > 0,   else 0.

The double sum has O(P Q) terms; expanding it, the sample ``s`` steps out appears with
``+1`` in every pair where it is the near member (``p' = s``, which needs ``s <= P``;
there are ``Q - s`` such pairs) and with ``-1`` in every pair where it is the far member
(``q' = s``; there are ``min(P, s - 1)`` such pairs).  So

    d_r = sum_{s=1}^{Q} w_s S(s steps out),
    w_s = (Q - s) [s <= P] - min(P, s - 1),

which costs O(Q) per direction.  For P = 3, Q = 10 the weights are 9, 7, 5, -3 (x 7).
Each pair contributes +1 and -1, so the weights sum to zero and a constant map gives
``d_r = 0`` and hence ``D = 0``.

Out-of-image samples take the value of the nearest edge pixel (clamping, numpy's "edge"
padding).  A pixel on the image border thus sees a flat profile in the outward direction,
``d_r = 0`` there and ``D = 0``: maxima of D lie at least one pixel inside the image.
"""

from __future__ import annotations

import numpy as np

from mcf_fast.errors import InputError
from mcf_fast.kernels.gdbp import DIRECTIONS, gdbp_kernel

__all__ = ["gdbp", "gdbp_weights", "gdbp_halo"]


def _check_pq(p: int, q: int) -> None:
    for name, v in (("p", p), ("q", q)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"gdbp: {name} = {v!r}; expected a positive integer")
    if p >= q:
        raise InputError(f"gdbp: p = {p} must be smaller than q = {q}")


def gdbp_weights(*, p: int = 3, q: int = 10) -> np.ndarray:
    """Per-step weights that turn eq. (4)'s double sum into one sum.

    Parameters
    ----------
    p, q : int
        P (radius of the nucleus centre) and Q (radius of the nucleus area), ``1 <= p < q``.

    Returns
    -------
    ndarray, shape (q + 1,), float64
        ``w[s]`` for ``s = 0..q`` (``w[0] = 0``): ``(q - s) [s <= p] - min(p, s - 1)``.

    Raises
    ------
    InputError
        If ``p`` or ``q`` is not a positive integer or ``p >= q``.

    Examples
    --------
    >>> gdbp_weights(p=3, q=10).tolist()
    [0.0, 9.0, 7.0, 5.0, -3.0, -3.0, -3.0, -3.0, -3.0, -3.0, -3.0]
    """
    _check_pq(p, q)
    s = np.arange(q + 1)
    w = np.where(s <= p, q - s, 0) - np.minimum(p, np.maximum(s - 1, 0))
    w[0] = 0
    return w.astype(np.float64)


def gdbp_halo(*, q: int = 10) -> int:
    """Pixels of context D depends on: a tile with this halo gives exact D inside it.

    Examples
    --------
    >>> gdbp_halo(q=10)
    10
    """
    return int(q)


def gdbp(response: np.ndarray, *, p: int = 3, q: int = 10) -> np.ndarray:
    """Accumulated gradient map D of eq. (4).

    Parameters
    ----------
    response : ndarray, shape (H, W)
        The fused, normalised response map S (any real dtype; computed from float32).
    p, q : int
        P and Q of eq. (4) (``DetectionConfig.gdbp_p`` / ``gdbp_q``), ``1 <= p < q``.

    Returns
    -------
    ndarray, shape (H, W), float32
        ``D``: the sum of the eight directional gradients where all eight are positive,
        0 elsewhere.  Out-of-image samples are clamped to the edge (module docstring).

    Raises
    ------
    InputError
        If `response` is not 2-D and real, holds NaN or infinite values, or `p`, `q` are
        invalid.

    Examples
    --------
    >>> yy, xx = np.mgrid[:21, :21]
    >>> s = np.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 20.0)
    >>> d = gdbp(s)
    >>> np.unravel_index(np.argmax(d), d.shape)
    (np.int64(10), np.int64(10))
    """
    _check_pq(p, q)
    a = np.asarray(response)
    if a.ndim != 2:
        raise InputError(f"gdbp: response must be a 2-D map, got shape {a.shape}")
    if a.dtype == np.bool_ or not (
        np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
    ):
        raise InputError(f"gdbp: response must be real numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size and not np.isfinite(a).all():
        raise InputError("gdbp: response contains NaN or infinite values")
    out = np.empty(a.shape, np.float32)
    if a.size:
        padded = np.pad(a, q, mode="edge")
        gdbp_kernel(padded, gdbp_weights(p=p, q=q), DIRECTIONS, out)
    return out
