"""Numba kernel of the colour models of the pseudo labels: per-pixel quadratic forms."""

from __future__ import annotations

from numba import jit, prange

from mcf_fast._numba import JIT_PARALLEL

__all__ = ["quadratic_form_kernel"]


@jit(**JIT_PARALLEL)
def quadratic_form_kernel(x, mu, inv, out):  # pragma: no cover - compiled
    """``out[i] = (x[i] - mu) @ inv @ (x[i] - mu)`` for every row of x (N, D).

    Summed over j, then k, in float64 (``out`` is float64), without the (N, D) centred
    copy that ``numpy.einsum("ij,jk,ik->i", d, inv, d)`` needs.
    """
    n, dim = x.shape
    for i in prange(n):
        s = 0.0
        for j in range(dim):
            dj = float(x[i, j]) - mu[j]
            for k in range(dim):
                s += dj * inv[j, k] * (float(x[i, k]) - mu[k])
        out[i] = s
