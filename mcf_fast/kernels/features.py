"""Numba kernels of the dense per-pixel features: colour names and HOG.

The public, validating entry points are in :mod:`mcf_fast.ops.features`, which documents
the definitions; these kernels take C-contiguous arrays and caller-provided outputs.
Each ``prange`` runs over blocks of rows so that per-row scratch is allocated once per
block, never inside the pixel loops.

Inner loops index 1-D row views from 0 (``src = a[r, c0 : c0 + w]; src[j]``) rather
than ``a[r, j + c0]``: numba's negative-index fix-up of an index it cannot prove
non-negative keeps LLVM from vectorising the loop (3-4x slower here).
"""

from __future__ import annotations

import math

import numpy as np
from numba import jit, prange

from mcf_fast._numba import JIT, JIT_PARALLEL

__all__ = [
    "cn_kernel",
    "atan01",
    "hog_cells_kernel",
    "hog_normalise_kernel",
]

_MAX_BLOCKS = 64


@jit(**JIT_PARALLEL)
def cn_kernel(image, table, out, offset):
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
            irow = image[i]
            orow = out[i]
            for j in range(w):
                idx = (
                    (np.int64(irow[j, 0]) >> 3)
                    + ((np.int64(irow[j, 1]) >> 3) << 5)
                    + ((np.int64(irow[j, 2]) >> 3) << 10)
                )
                trow = table[idx]
                dst = orow[j, offset : offset + n]
                for k in range(n):
                    dst[k] = trow[k]


# atan(x) = x * P(x^2) on [0, 1]: a weighted least-squares fit of degree 7 in x^2, max
# error 4e-8 rad in float64 and 1.4e-7 rad evaluated in float32 (near float32 rounding)
_ATAN_C0 = np.float32(0.9999992546034318)
_ATAN_C1 = np.float32(-0.33329552653774613)
_ATAN_C2 = np.float32(0.19943209985531285)
_ATAN_C3 = np.float32(-0.13892574781392591)
_ATAN_C4 = np.float32(0.0960283275562322)
_ATAN_C5 = np.float32(-0.055395905050171404)
_ATAN_C6 = np.float32(0.021518127095323154)
_ATAN_C7 = np.float32(-0.003962498061000352)


@jit(**JIT, inline="always")
def atan01(x):
    """float32 arctangent of ``x`` in [0, 1] as a polynomial (vectorises, unlike libm)."""
    u = x * x
    p = _ATAN_C7
    p = p * u + _ATAN_C6
    p = p * u + _ATAN_C5
    p = p * u + _ATAN_C4
    p = p * u + _ATAN_C3
    p = p * u + _ATAN_C2
    p = p * u + _ATAN_C1
    p = p * u + _ATAN_C0
    return x * p


@jit(**JIT, inline="always")
def _fill_plane(image, x, plane):
    """Channel planes of image row ``x`` (clamped to the image), padded by one column."""
    h, w = image.shape[0], image.shape[1]
    src = image[min(max(x, 0), h - 1)]
    for j in range(w):
        for c in range(3):
            plane[c, j + 1] = src[j, c]
    for c in range(3):
        plane[c, 0] = plane[c, 1]
        plane[c, w + 1] = plane[c, w]


@jit(**JIT, inline="always")
def _row_cell_sums(image, i, bins, cell, planes, v0, v1, b0, b1, vk, dst):
    """Votes of image row ``i`` summed over ``cell``-wide windows: ``dst[k, j]``.

    ``planes[(x + 3) % 3]`` must hold the planes of rows ``x = i - 1, i, i + 1``.
    """
    w = image.shape[1]
    lo = cell // 2
    scale = np.float32(bins / math.pi)
    pi32 = np.float32(math.pi)
    half_pi = np.float32(math.pi / 2)
    inv255 = np.float32(1.0 / 255.0)
    cur = planes[(i + 3) % 3]
    up = planes[(i + 2) % 3, :, 1 : w + 1]
    dn = planes[(i + 4) % 3, :, 1 : w + 1]
    right = cur[:, 2 : w + 2]
    left = cur[:, 0:w]
    for j in range(w):
        gx = right[0, j] - left[0, j]
        gy = dn[0, j] - up[0, j]
        best = gx * gx + gy * gy
        for c in range(1, 3):
            tx = right[c, j] - left[c, j]
            ty = dn[c, j] - up[c, j]
            m2 = tx * tx + ty * ty
            if m2 > best:
                best = m2
                gx = tx
                gy = ty
        mag = math.sqrt(best) * inv255
        # fold into the upper half plane: (gx, gy) and (-gx, -gy) share an orientation
        if gy < 0 or (gy == 0 and gx < 0):
            gx = -gx
            gy = -gy
        ax = abs(gx)
        big = max(ax, gy)
        small = min(ax, gy)
        ratio = small / big if big > 0 else np.float32(0.0)
        phi = atan01(ratio)
        if gy > ax:
            phi = half_pi - phi
        theta = pi32 - phi if gx < 0 else phi
        t = theta * scale - np.float32(0.5)
        f = math.floor(t)
        fr = t - f
        k0 = np.int32(f)
        if k0 < 0:
            k0 += bins
        elif k0 >= bins:
            k0 -= bins
        k1 = k0 + 1
        if k1 >= bins:
            k1 = 0
        v0[j] = mag * (np.float32(1.0) - fr)
        v1[j] = mag * fr
        b0[j] = k0
        b1[j] = k1
    vmid = vk[lo : lo + w]
    for k in range(bins):
        for j in range(w):
            a = v0[j] if b0[j] == k else np.float32(0.0)
            b = v1[j] if b1[j] == k else np.float32(0.0)
            vmid[j] = a + b
        dk = dst[k]
        for j in range(w):
            dk[j] = vk[j]
        for t in range(1, cell):
            src = vk[t : t + w]
            for j in range(w):
                dk[j] += src[j]


@jit(**JIT_PARALLEL)
def hog_cells_kernel(image, bins, cell, hist, energy):
    """Dense cell histograms of oriented gradients and their squared norms.

    Parameters
    ----------
    image : uint8 (H, W, 3) RGB
    bins : int
        Orientation bins over [0, pi).
    cell : int
        Cell size: the cell of pixel ``(i, j)`` covers rows and columns
        ``i - cell//2 .. i - cell//2 + cell - 1`` (same for ``j``), clipped to the image.
    hist : float32 (bins, H, W)
        Output: ``hist[k, i, j]`` = sum of the bin-``k`` votes over the cell of ``(i, j)``.
    energy : float32 (H, W)
        Output: ``sum_k hist[k, i, j]^2``.

    Notes
    -----
    Gradient: clamped central differences of each channel (integers in -255..255); the
    channel with the largest squared magnitude wins (the first on ties).  Magnitude
    ``sqrt(gx^2 + gy^2) / 255``; orientation ``atan2(gy, gx)`` (``gy`` along increasing
    rows) folded into [0, pi) and split linearly between the two nearest bin centres
    ``(k + 1/2) pi / bins`` (circularly).  The arctangent is :func:`atan01` after octant
    reduction, so the pixel loops are branch-free and vectorise.

    Each block of output rows computes the row-wise cell sums it needs (its own rows and
    ``cell - 1`` halo rows) into a ring buffer of ``cell`` rows, then adds ``cell`` ring
    rows in ascending row order for each output row.
    """
    h, w = image.shape[0], image.shape[1]
    lo = cell // 2
    n_blocks = max(1, min(h // 32, _MAX_BLOCKS))
    for blk in prange(n_blocks):
        r0 = blk * h // n_blocks
        r1 = (blk + 1) * h // n_blocks
        planes = np.empty((3, 3, w + 2), np.float32)  # rows x - 1, x, x + 1 by x % 3
        v0 = np.empty(w, np.float32)
        v1 = np.empty(w, np.float32)
        b0 = np.empty(w, np.int32)
        b1 = np.empty(w, np.int32)
        vk = np.zeros(w + cell - 1, np.float32)  # the padding stays 0
        ring = np.empty((cell, bins, w), np.float32)
        next_row = max(r0 - lo, 0)
        _fill_plane(image, next_row - 1, planes[(next_row + 2) % 3])
        _fill_plane(image, next_row, planes[next_row % 3])
        for i in range(r0, r1):
            ra = max(i - lo, 0)
            rb = min(i - lo + cell, h)
            while next_row < rb:
                _fill_plane(image, next_row + 1, planes[(next_row + 1) % 3])
                _row_cell_sums(
                    image,
                    next_row,
                    bins,
                    cell,
                    planes,
                    v0,
                    v1,
                    b0,
                    b1,
                    vk,
                    ring[next_row % cell],
                )
                next_row += 1
            e = energy[i]
            for j in range(w):
                e[j] = 0.0
            for k in range(bins):
                hk = hist[k, i]
                first = ring[ra % cell, k]
                for j in range(w):
                    hk[j] = first[j]
                for r in range(ra + 1, rb):
                    src = ring[r % cell, k]
                    for j in range(w):
                        hk[j] += src[j]
                for j in range(w):
                    e[j] += hk[j] * hk[j]


@jit(**JIT_PARALLEL)
def hog_normalise_kernel(hist, energy, cell, eps, clip, out, offset, image, table, cn_offset):
    """Cell histograms normalised by the four 2x2-cell blocks that contain the cell.

    For the cell centred at ``(i, j)`` the blocks have top-left cells at ``(i + a, j + b)``,
    ``a, b in {-cell, 0}``; a block's energy is the sum of ``energy`` at its four cell
    positions (0 outside the image).  Each channel is
    ``0.5 * sum_blocks min(h_k / sqrt(block + eps), clip)``.

    Parameters
    ----------
    hist, energy : float32 (bins, H, W) and (H, W) from :func:`hog_cells_kernel`
    cell : int
    eps, clip : float
    out : float32 (H, W, C); channels ``offset .. offset + bins - 1`` are written
    offset : int
    image : uint8 (H, W, 3) RGB
    table : float32 (32768, n) colour-name table, or (0, 0) for none
    cn_offset : int
        With a table, its channels go to ``cn_offset .. cn_offset + n - 1`` in the same
        pass (each output pixel is then written once, in full).
    """
    bins, h, w = hist.shape
    n_cn = table.shape[1] if table.shape[0] > 0 else 0
    c = cell
    width = w + 2 * c
    eps32 = np.float32(eps)
    clip32 = np.float32(clip)
    half = np.float32(0.5)
    one = np.float32(1.0)
    n_blocks = min(h, _MAX_BLOCKS)
    for blk in prange(n_blocks):
        vt = np.zeros(width, np.float32)  # the padding stays 0
        vb = np.zeros(width, np.float32)
        n0 = np.empty(w, np.float32)
        n1 = np.empty(w, np.float32)
        n2 = np.empty(w, np.float32)
        n3 = np.empty(w, np.float32)
        feat = np.empty((bins, w), np.float32)
        for i in range(blk * h // n_blocks, (blk + 1) * h // n_blocks):
            # slices instead of offset indices: numba's negative-index handling of an
            # ``a[j + c]`` access would keep these loops from vectorising
            e0 = energy[i]
            vt_mid = vt[c : c + w]
            vb_mid = vb[c : c + w]
            for j in range(w):
                vt_mid[j] = e0[j]
                vb_mid[j] = e0[j]
            if i - c >= 0:
                eu = energy[i - c]
                for j in range(w):
                    vt_mid[j] += eu[j]
            if i + c < h:
                ed = energy[i + c]
                for j in range(w):
                    vb_mid[j] += ed[j]
            vt_lo = vt[0:w]
            vt_hi = vt[2 * c : 2 * c + w]
            vb_lo = vb[0:w]
            vb_hi = vb[2 * c : 2 * c + w]
            for j in range(w):
                n0[j] = one / math.sqrt(vt_lo[j] + vt_mid[j] + eps32)
                n1[j] = one / math.sqrt(vt_mid[j] + vt_hi[j] + eps32)
                n2[j] = one / math.sqrt(vb_lo[j] + vb_mid[j] + eps32)
                n3[j] = one / math.sqrt(vb_mid[j] + vb_hi[j] + eps32)
            for k in range(bins):
                hrow = hist[k, i]
                fk = feat[k]
                for j in range(w):
                    v = hrow[j]
                    fk[j] = half * (
                        min(v * n0[j], clip32)
                        + min(v * n1[j], clip32)
                        + min(v * n2[j], clip32)
                        + min(v * n3[j], clip32)
                    )
            orow = out[i]
            irow = image[i]
            for j in range(w):
                px = orow[j]
                if n_cn > 0:
                    idx = (
                        (np.int64(irow[j, 0]) >> 3)
                        + ((np.int64(irow[j, 1]) >> 3) << 5)
                        + ((np.int64(irow[j, 2]) >> 3) << 10)
                    )
                    trow = table[idx]
                    pcn = px[cn_offset : cn_offset + n_cn]
                    for k in range(n_cn):
                        pcn[k] = trow[k]
                phog = px[offset : offset + bins]
                for k in range(bins):
                    phog[k] = feat[k, j]
