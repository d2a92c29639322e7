"""Numba kernels of the dense per-pixel features: colour names and HOG.

The public, validating entry points are in :mod:`mcf_fast.ops.features`, which documents
the definitions; these kernels take C-contiguous arrays and caller-provided outputs.
Each ``prange`` runs over blocks of rows so that per-row scratch is allocated once per
block, never inside the pixel loops.
"""

from __future__ import annotations

import math

import numpy as np
from numba import jit, prange

from mcf_fast._numba import JIT_PARALLEL

__all__ = ["cn_kernel", "hog_cells_kernel", "hog_energy_kernel", "hog_normalise_kernel"]

_MAX_BLOCKS = 64


@jit(**JIT_PARALLEL)
def cn_kernel(image, table, out, offset):  # pragma: no cover - compiled
    """Gather colour-name rows: ``out[i, j, offset:offset + n] = table[index(image[i, j])]``.

    Parameters
    ----------
    image : uint8 (H, W, 3) RGB
    table : float32 (32768, n); row ``R//8 + 32*(G//8) + 1024*(B//8)``
    out : float32 (H, W, C) with ``C >= offset + n``
    offset : int
        First output channel.
    """
    h, w = image.shape[0], image.shape[1]
    n = table.shape[1]
    n_blocks = min(h, _MAX_BLOCKS)
    for blk in prange(n_blocks):
        for i in range(blk * h // n_blocks, (blk + 1) * h // n_blocks):
            for j in range(w):
                idx = (
                    (np.int64(image[i, j, 0]) >> 3)
                    + ((np.int64(image[i, j, 1]) >> 3) << 5)
                    + ((np.int64(image[i, j, 2]) >> 3) << 10)
                )
                for k in range(n):
                    out[i, j, offset + k] = table[idx, k]


@jit(**JIT_PARALLEL)
def hog_cells_kernel(image, bins, cell, hs):  # pragma: no cover - compiled
    """Orientation votes, summed over a ``cell``-wide window along each row.

    Parameters
    ----------
    image : uint8 (H, W, 3) RGB
    bins : int
        Orientation bins over [0, pi).
    cell : int
        Window width; columns ``j - cell//2 .. j - cell//2 + cell - 1``.
    hs : float32 (bins, H, W)
        Output: ``hs[k, i, j]`` = sum of bin-``k`` votes over that window of row ``i``.

    Notes
    -----
    Gradient: clamped central differences of each channel (integers in -255..255); the
    channel with the largest squared magnitude wins (the first on ties).  Magnitude
    ``sqrt(gx^2 + gy^2) / 255``; orientation ``atan2(gy, gx)`` (``gy`` along increasing
    rows) folded into [0, pi), split linearly between the two nearest bin centres
    ``(k + 1/2) pi / bins`` (circularly).
    """
    h, w = image.shape[0], image.shape[1]
    lo = cell // 2
    width = w + cell - 1
    scale = np.float32(bins / math.pi)
    pi32 = np.float32(math.pi)
    n_blocks = min(h, _MAX_BLOCKS)
    for blk in prange(n_blocks):
        votes = np.empty((bins, width), np.float32)
        for i in range(blk * h // n_blocks, (blk + 1) * h // n_blocks):
            up = max(i - 1, 0)
            dn = min(i + 1, h - 1)
            for k in range(bins):
                for t in range(width):
                    votes[k, t] = 0.0
            for j in range(w):
                jl = max(j - 1, 0)
                jr = min(j + 1, w - 1)
                best = np.int64(-1)
                bx = np.int64(0)
                by = np.int64(0)
                for ch in range(3):
                    gx = np.int64(image[i, jr, ch]) - np.int64(image[i, jl, ch])
                    gy = np.int64(image[dn, j, ch]) - np.int64(image[up, j, ch])
                    m2 = gx * gx + gy * gy
                    if m2 > best:
                        best = m2
                        bx = gx
                        by = gy
                if best == 0:
                    continue
                mag = np.float32(math.sqrt(np.float32(best))) / np.float32(255.0)
                theta = np.float32(math.atan2(np.float32(by), np.float32(bx)))
                if theta < 0:
                    theta += pi32
                t = theta * scale - np.float32(0.5)
                f = math.floor(t)
                fr = np.float32(t - f)
                b0 = np.int64(f)
                if b0 < 0:
                    b0 += bins
                elif b0 >= bins:
                    b0 -= bins
                b1 = b0 + 1
                if b1 == bins:
                    b1 = 0
                votes[b0, lo + j] += mag * (np.float32(1.0) - fr)
                votes[b1, lo + j] += mag * fr
            for k in range(bins):
                vk = votes[k]
                dst = hs[k, i]
                for j in range(w):
                    acc = np.float32(0.0)
                    for t in range(cell):
                        acc += vk[j + t]
                    dst[j] = acc


@jit(**JIT_PARALLEL)
def hog_energy_kernel(hs, cell, energy):  # pragma: no cover - compiled
    """Squared norm of each pixel's cell histogram.

    ``energy[i, j] = sum_k (sum_{r in rows(i)} hs[k, r, j])^2`` where ``rows(i)`` is the
    window ``i - cell//2 .. i - cell//2 + cell - 1`` clipped to the image.
    """
    bins, h, w = hs.shape
    lo = cell // 2
    n_blocks = min(h, _MAX_BLOCKS)
    for blk in prange(n_blocks):
        hrow = np.empty(w, np.float32)
        for i in range(blk * h // n_blocks, (blk + 1) * h // n_blocks):
            ra = max(i - lo, 0)
            rb = min(i - lo + cell, h)
            e = energy[i]
            for j in range(w):
                e[j] = 0.0
            for k in range(bins):
                for j in range(w):
                    hrow[j] = 0.0
                for r in range(ra, rb):
                    src = hs[k, r]
                    for j in range(w):
                        hrow[j] += src[j]
                for j in range(w):
                    e[j] += hrow[j] * hrow[j]


@jit(**JIT_PARALLEL)
def hog_normalise_kernel(hs, energy, cell, eps, clip, out, offset):  # pragma: no cover
    """Cell histograms normalised by the four 2x2-cell blocks that contain the cell.

    For the cell centred at ``(i, j)`` the blocks have top-left cells at ``(i + a, j + b)``,
    ``a, b in {-cell, 0}``; a block's energy is the sum of ``energy`` at its four cell
    positions (0 outside the image).  Each channel is
    ``0.5 * sum_blocks min(h_k / sqrt(block + eps), clip)``.

    Parameters
    ----------
    hs : float32 (bins, H, W) from :func:`hog_cells_kernel`
    energy : float32 (H, W) from :func:`hog_energy_kernel`
    cell : int
    eps, clip : float
    out : float32 (H, W, C), channels ``offset .. offset + bins - 1`` written
    offset : int
    """
    bins, h, w = hs.shape
    lo = cell // 2
    c = cell
    width = w + 2 * c
    eps32 = np.float32(eps)
    clip32 = np.float32(clip)
    half = np.float32(0.5)
    n_blocks = min(h, _MAX_BLOCKS)
    for blk in prange(n_blocks):
        vt = np.empty(width, np.float32)
        vb = np.empty(width, np.float32)
        norms = np.empty((4, w), np.float32)
        hrow = np.empty(w, np.float32)
        for i in range(blk * h // n_blocks, (blk + 1) * h // n_blocks):
            for t in range(c):
                vt[t] = 0.0
                vb[t] = 0.0
                vt[c + w + t] = 0.0
                vb[c + w + t] = 0.0
            e0 = energy[i]
            for j in range(w):
                vt[c + j] = e0[j]
                vb[c + j] = e0[j]
            if i - c >= 0:
                eu = energy[i - c]
                for j in range(w):
                    vt[c + j] += eu[j]
            if i + c < h:
                ed = energy[i + c]
                for j in range(w):
                    vb[c + j] += ed[j]
            n0 = norms[0]
            n1 = norms[1]
            n2 = norms[2]
            n3 = norms[3]
            for j in range(w):
                n0[j] = np.float32(1.0) / math.sqrt(vt[j] + vt[j + c] + eps32)
                n1[j] = np.float32(1.0) / math.sqrt(vt[j + c] + vt[j + 2 * c] + eps32)
                n2[j] = np.float32(1.0) / math.sqrt(vb[j] + vb[j + c] + eps32)
                n3[j] = np.float32(1.0) / math.sqrt(vb[j + c] + vb[j + 2 * c] + eps32)
            ra = max(i - lo, 0)
            rb = min(i - lo + cell, h)
            for k in range(bins):
                for j in range(w):
                    hrow[j] = 0.0
                for r in range(ra, rb):
                    src = hs[k, r]
                    for j in range(w):
                        hrow[j] += src[j]
                for j in range(w):
                    v = hrow[j]
                    out[i, j, offset + k] = half * (
                        min(v * n0[j], clip32)
                        + min(v * n1[j], clip32)
                        + min(v * n2[j], clip32)
                        + min(v * n3[j], clip32)
                    )
