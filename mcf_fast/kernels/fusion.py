"""Numba kernels of the response fusion, eqs. (2)-(3): per-pixel top-T / mean accumulation.

Layout: response maps are (M * n, h, w) float32 arrays (any strides) whose maps are ordered
group-major: map ``g * n + i`` is member ``i`` of group ``g``.  ``t >= n`` accumulates all
members (a plain sum); ``mean`` replaces the top-t sum by the mean over the group.
"""

from __future__ import annotations

import numpy as np
from numba import jit, prange

from mcf_fast._numba import JIT, JIT_PARALLEL

__all__ = ["group_topk_kernel", "scale_template_kernel", "topk_sum"]


@jit(**JIT)
def topk_sum(vals, n, t, scratch):  # pragma: no cover - compiled
    """Sum of the ``t`` largest of ``vals[:n]`` (all of them when ``t >= n``)."""
    if t >= n:
        s = 0.0
        for i in range(n):
            s += vals[i]
        return s
    for i in range(n):
        scratch[i] = vals[i]
    s = 0.0
    for _ in range(t):
        best = 0
        for i in range(1, n):
            if scratch[i] > scratch[best]:
                best = i
        s += scratch[best]
        scratch[best] = -np.inf
    return s


@jit(**JIT_PARALLEL)
def group_topk_kernel(r, n, t, mean, out):  # pragma: no cover - compiled
    """out[g] = top-t sum (or mean) over the n members of group g, per pixel.

    r : (G * n, h, w) float32;  out : (G, h, w) float32.
    """
    g_count, h, w = out.shape
    for row in prange(g_count * h):
        g = row // h
        i = row % h
        vals = np.empty(n, dtype=np.float64)
        scratch = np.empty(n, dtype=np.float64)
        for j in range(w):
            for u in range(n):
                vals[u] = r[g * n + u, i, j]
            if mean:
                s = 0.0
                for u in range(n):
                    s += vals[u]
                out[g, i, j] = s / n
            else:
                out[g, i, j] = topk_sum(vals, n, t, scratch)


@jit(**JIT_PARALLEL)
def scale_template_kernel(r, n_t, n_k, tk, th, mean, out):  # pragma: no cover - compiled
    """MFF then template fusion: top-tk over the K scales of each template, then top-th
    over the N templates (means instead when ``mean``), per pixel.

    r : (N * K, h, w) float32;  out : (h, w) float32.
    """
    h, w = out.shape
    for i in prange(h):
        vk = np.empty(n_k, dtype=np.float64)
        vn = np.empty(n_t, dtype=np.float64)
        scratch = np.empty(max(n_k, n_t), dtype=np.float64)
        for j in range(w):
            for a in range(n_t):
                for k in range(n_k):
                    vk[k] = r[a * n_k + k, i, j]
                if mean:
                    s = 0.0
                    for k in range(n_k):
                        s += vk[k]
                    vn[a] = s / n_k
                else:
                    vn[a] = topk_sum(vk, n_k, tk, scratch)
            if mean:
                s = 0.0
                for a in range(n_t):
                    s += vn[a]
                out[i, j] = s / n_t
            else:
                out[i, j] = topk_sum(vn, n_t, th, scratch)
