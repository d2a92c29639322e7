"""Numba kernels of the response fusion, eqs. (2)-(3): per-pixel top-T / mean accumulation.

Layout: a batch of blocks of response maps, (B, M * n, H, W) C-contiguous float32, whose
maps are ordered group-major: map ``g * n + i`` is member ``i`` of group ``g``.  For block
``b`` the kernels read the top-left ``h`` x ``w`` pixels of each map and write them at
offset ``(y0, x0)`` of ``out`` (so overlap-save blocks are fused straight into the full
output, with one parallel launch per batch).  ``t >= n`` accumulates all
members (a plain sum); ``mean`` replaces the top-t sum by the mean over the group.

The top-t values of each pixel are kept in a (t, w) row buffer, sorted descending, and each
new value is pushed through it with a branch-free max/min exchange, one image row at a
time, so the inner loops run over contiguous pixels and vectorise.
"""

from __future__ import annotations

import numpy as np
from numba import jit, prange

from mcf_fast._numba import JIT, JIT_PARALLEL

__all__ = ["group_topk_kernel", "scale_template_kernel", "push_row", "topk_rows"]


@jit(**JIT)
def push_row(buf, vals, w, tmp):  # pragma: no cover - compiled
    """Insert ``vals[:w]`` into the descending (t, >= w) buffer ``buf``; ``tmp`` is scratch."""
    t = buf.shape[0]
    for j in range(w):
        tmp[j] = vals[j]
    for q in range(t):
        for j in range(w):
            b = buf[q, j]
            v = tmp[j]
            buf[q, j] = b if b >= v else v
            tmp[j] = v if b >= v else b


@jit(**JIT)
def topk_rows(r, first, n, i, w, t, mean, buf, tmp, out):  # pragma: no cover - compiled
    """out[:w] = top-t sum (or mean) over maps ``first .. first + n - 1`` at row ``i``."""
    if mean or t >= n:
        for j in range(w):
            out[j] = 0.0
        for u in range(n):
            row = r[first + u, i]
            for j in range(w):
                out[j] += row[j]
        if mean:
            for j in range(w):
                out[j] /= n
        return
    for q in range(t):
        for j in range(w):
            buf[q, j] = -np.inf
    for u in range(n):
        push_row(buf, r[first + u, i], w, tmp)
    for j in range(w):
        out[j] = 0.0
    for q in range(t):
        for j in range(w):
            out[j] += buf[q, j]


@jit(**JIT_PARALLEL)
def group_topk_kernel(r, n, t, mean, out, offsets):  # pragma: no cover - compiled
    """Crop fusion of a batch of blocks: top-t sum (or mean) over the n members of a group.

    r : (B, G * n, H, W) float32;  out : (G, H', W') float32;  offsets : (B, 4) int64 rows
    ``(y0, x0, h, w)``: block b's top-left h x w pixels go to ``out[:, y0:y0+h, x0:x0+w]``.
    """
    g_count = out.shape[0]
    n_b = r.shape[0]
    rows = r.shape[2]
    for job in prange(n_b * g_count * rows):
        b = job // (g_count * rows)
        g = (job // rows) % g_count
        i = job % rows
        y0, x0, h, w = offsets[b, 0], offsets[b, 1], offsets[b, 2], offsets[b, 3]
        if i >= h:
            continue
        buf = np.empty((max(min(t, n), 1), w), dtype=np.float32)
        tmp = np.empty(w, dtype=np.float32)
        res = np.empty(w, dtype=np.float32)
        topk_rows(r[b], g * n, n, i, w, t, mean, buf, tmp, res)
        dst = out[g, y0 + i]
        for j in range(w):
            dst[x0 + j] = res[j]


@jit(**JIT_PARALLEL)
def scale_template_kernel(r, n_t, n_k, tk, th, mean, out, offsets):  # pragma: no cover
    """MFF then template fusion of a batch of blocks: top-tk over the K scales of each
    template, then top-th over the N templates (means instead when ``mean``), per pixel.

    r : (B, N * K, H, W) float32;  out : (H', W') float32;  offsets : (B, 4) int64 rows
    ``(y0, x0, h, w)`` as in :func:`group_topk_kernel`.
    """
    n_b = r.shape[0]
    rows = r.shape[2]
    for job in prange(n_b * rows):
        b = job // rows
        i = job % rows
        y0, x0, h, w = offsets[b, 0], offsets[b, 1], offsets[b, 2], offsets[b, 3]
        if i >= h:
            continue
        buf = np.empty((max(min(tk, n_k), 1), w), dtype=np.float32)
        tmp = np.empty(w, dtype=np.float32)
        sn = np.empty((n_t, 1, w), dtype=np.float32)
        for a in range(n_t):
            topk_rows(r[b], a * n_k, n_k, i, w, tk, mean, buf, tmp, sn[a, 0])
        hb = np.empty((max(min(th, n_t), 1), w), dtype=np.float32)
        res = np.empty(w, dtype=np.float32)
        topk_rows(sn, 0, n_t, 0, w, th, mean, hb, tmp, res)
        dst = out[y0 + i]
        for j in range(w):
            dst[x0 + j] = res[j]
