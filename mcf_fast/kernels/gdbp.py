"""Numba kernel of the gradient-direction-based post-processing (GDBP, eq. 4).

The public, validating entry point is :func:`mcf_fast.ops.gdbp.gdbp`; the weights and the
out-of-image rule are explained there.
"""

from __future__ import annotations

import numpy as np
from numba import jit, prange

from mcf_fast._numba import JIT_PARALLEL

__all__ = ["DIRECTIONS", "gdbp_kernel"]

#: the eight directions r = 1..8 of eq. (4) as (row step, column step):
#: E, W, S, N, SE, NW, SW, NE
DIRECTIONS = np.array(
    [[0, 1], [0, -1], [1, 0], [-1, 0], [1, 1], [-1, -1], [1, -1], [-1, 1]], dtype=np.int64
)


@jit(**JIT_PARALLEL)
def gdbp_kernel(padded, weights, directions, out):
    """D map of eq. (4) with per-step weights.

    Parameters
    ----------
    padded : float32 (H + 2Q, W + 2Q), C-contiguous
        The response map with Q pixels of padding on every side (the caller chooses the
        out-of-image rule through the padding).
    weights : float64 (Q + 1,)
        ``weights[s]`` weighs the sample ``s`` steps out (index 0 unused); they sum to zero.
    directions : int64 (R, 2)
        Row and column unit steps.
    out : float32 (H, W)
        Written in full.

    Notes
    -----
    Each ``d_r`` is accumulated in float32 as ``sum_s w_s * (S_s - S_0)``, equal to
    ``sum_s w_s S_s`` because the weights sum to zero, so a flat neighbourhood gives exactly
    zero.  Rows are independent (``prange`` over blocks of rows); the inner loops run along
    contiguous rows of the padded map with no index clamping, so they vectorise.
    """
    h, w = out.shape
    q = weights.shape[0] - 1
    n_dir = directions.shape[0]
    n_blocks = min(h, 64)
    for blk in prange(n_blocks):
        r0 = blk * h // n_blocks
        r1 = (blk + 1) * h // n_blocks
        acc = np.empty(w, np.float32)
        total = np.empty(w, np.float32)
        ok = np.empty(w, np.bool_)
        for i in range(r0, r1):
            centre = padded[i + q, q : q + w]
            for j in range(w):
                total[j] = 0.0
                ok[j] = True
            for r in range(n_dir):
                di = directions[r, 0]
                dj = directions[r, 1]
                for j in range(w):
                    acc[j] = 0.0
                for s in range(1, q + 1):
                    ws = np.float32(weights[s])
                    if ws == 0.0:
                        continue
                    c0 = q + dj * s
                    src = padded[i + q + di * s, c0 : c0 + w]
                    for j in range(w):
                        acc[j] += ws * (src[j] - centre[j])
                for j in range(w):
                    total[j] += acc[j]
                    ok[j] = ok[j] and acc[j] > 0.0
            for j in range(w):
                out[i, j] = total[j] if ok[j] else np.float32(0.0)
