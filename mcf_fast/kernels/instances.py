"""Numba kernels of the h-maxima split: pixel order, reconstruction by dilation, flood.

The reconstruction of a marker ``g <= f`` under a mask ``f`` is, at pixel ``x``, the
largest ``min(g(y), b(x, y))`` over all pixels ``y``, where ``b(x, y)`` is the best
bottleneck (the largest, over 8-connected paths from ``x`` to ``y``, of the smallest ``f``
on the path).  Flooding the pixels by decreasing ``f`` with a union-find builds the
component tree of the upper level sets: a pixel's chain of parents visits, level by level,
the roots of the growing component that holds it, and each root records the largest ``g``
of its component when it was added.  The reconstruction is then the largest
``min(f(root), g_max(root))`` along that chain, one pass from the lowest pixel up.  Every
value is a copy of an input value (only comparisons), so the result is the same bits as any
other exact algorithm's (scikit-image's ``reconstruction`` included).
"""

from __future__ import annotations

import numpy as np
from numba import jit

from mcf_fast._numba import JIT

__all__ = ["component_order", "flood_kernel", "reconstruct_dilation_kernel"]


@jit(**JIT)
def _find(zpar, p):  # pragma: no cover - compiled
    r = p
    while zpar[r] != r:
        r = zpar[r]
    while zpar[p] != r:  # path compression
        q = zpar[p]
        zpar[p] = r
        p = q
    return r


@jit(**JIT)
def reconstruct_dilation_kernel(
    order, f, g, region, width, parent, zpar, gmax, out
):  # pragma: no cover - compiled
    """Reconstruction by dilation of ``g`` under ``f`` on the pixels listed in ``order``.

    Parameters
    ----------
    order : int64 (N,)
        Flat (row-major) indices of the pixels taking part, by decreasing ``f`` (ties in
        any order).
    f, g : float64 (H * W,)
        Mask and marker, ``g <= f`` on the listed pixels.
    region : int32 (H * W,)
        Region id of each pixel, 0 for pixels that take no part: two neighbours are
        connected when their ids are equal and not 0.  Every pixel with a non-zero id
        must be listed in ``order``.
    width : int
        W, the row length.
    parent, zpar : int64 (H * W,)
        Work buffers (written at the listed pixels; no initial value needed).
    gmax : float64 (H * W,)
        Work buffer.
    out : float64 (H * W,)
        The reconstruction at the listed pixels (other entries are not touched).
    """
    n = order.shape[0]
    size = f.shape[0]
    height = size // width
    for i in range(n):  # mark as unprocessed
        zpar[order[i]] = -1
    for i in range(n):
        p = order[i]
        parent[p] = p
        zpar[p] = p
        gmax[p] = g[p]
        y = p // width
        x = p - y * width
        for dy in range(-1, 2):
            yy = y + dy
            if yy < 0 or yy >= height:
                continue
            for dx in range(-1, 2):
                xx = x + dx
                if (dy == 0 and dx == 0) or xx < 0 or xx >= width:
                    continue
                q = yy * width + xx
                if region[q] != region[p] or zpar[q] < 0:  # other region, or not yet flooded
                    continue
                r = _find(zpar, q)
                if r != p:
                    parent[r] = p
                    zpar[r] = p
                    if gmax[r] > gmax[p]:
                        gmax[p] = gmax[r]
    for i in range(n - 1, -1, -1):  # from the lowest pixel up: parents come first
        p = order[i]
        v = gmax[p] if gmax[p] < f[p] else f[p]
        r = parent[p]
        if r != p and out[r] > v:
            v = out[r]
        out[p] = v


@jit(**JIT)
def component_order(region, f, n):  # pragma: no cover - compiled
    """The pixels of regions 1..n, region by region, each by decreasing ``f``.

    A counting sort by region (stable: row-major inside each region) then a stable sort
    of each region's values, so ties stay in row-major order: the same order as
    ``np.lexsort((-f[idx], region[idx]))`` over the pixels ``idx`` with a region, at a
    fraction of its cost, since each region's values fit in cache.

    Parameters
    ----------
    region : int32 (H * W,)
        Region ids 0..n, 0 for pixels that are not listed.
    f : float64 (H * W,)
    n : int
        The largest id.

    Returns
    -------
    order : int64 (N,)
        Flat indices of the N pixels with a region.
    start : int64 (n + 2,)
        Region ``r``'s pixels are ``order[start[r]:start[r + 1]]`` (``start[0]`` =
        ``start[1]`` = 0).
    """
    start = np.zeros(n + 2, np.int64)
    for p in range(region.shape[0]):
        if region[p] > 0:
            start[region[p] + 1] += 1
    for r in range(1, n + 1):
        start[r + 1] += start[r]
    order = np.empty(start[n + 1], np.int64)
    fill = start.copy()
    for p in range(region.shape[0]):
        r = region[p]
        if r > 0:
            order[fill[r]] = p
            fill[r] += 1
    for r in range(1, n + 1):
        a, b = start[r], start[r + 1]
        piece = order[a:b].copy()
        v = np.empty(b - a)
        for i in range(b - a):
            v[i] = -f[piece[i]]
        rank = np.argsort(v, kind="mergesort")
        for i in range(b - a):
            order[a + i] = piece[rank[i]]
    return order, start


@jit(**JIT)
def _heap_push(val, age, idx, n, v, a, i):  # pragma: no cover - compiled
    """Add (v, a, i) to the binary min-heap of its first ``n`` entries; returns ``n + 1``."""
    k = n
    while k > 0:
        up = (k - 1) >> 1
        if val[up] < v or (val[up] == v and age[up] < a):
            break
        val[k], age[k], idx[k] = val[up], age[up], idx[up]
        k = up
    val[k], age[k], idx[k] = v, a, i
    return n + 1


@jit(**JIT)
def _heap_pop(val, age, idx, n):  # pragma: no cover - compiled
    """Remove the smallest (value, age) entry; returns its index and the new size."""
    top = idx[0]
    n -= 1
    v, a, i = val[n], age[n], idx[n]
    k = 0
    while True:
        c = 2 * k + 1
        if c >= n:
            break
        if c + 1 < n and (val[c + 1] < val[c] or (val[c + 1] == val[c] and age[c + 1] < age[c])):
            c += 1
        if v < val[c] or (v == val[c] and a < age[c]):
            break
        val[k], age[k], idx[k] = val[c], age[c], idx[c]
        k = c
    if n > 0:
        val[k], age[k], idx[k] = v, a, i
    return top, n


@jit(**JIT)
def flood_kernel(f, labels, region, order, start, width):  # pragma: no cover - compiled
    """Watershed of ``-f`` from markers, region by region, in place.

    Every pixel of a region reachable from one of its markers (4-connected, inside the
    region) takes the label of the marker that floods it first.  Pixels leave a priority
    queue by cost, ties by the order they entered it: a region's markers first (at cost
    ``-f``, in ``order``), then each newly reached pixel (neighbours visited up, left,
    right, down), labelled when it enters, at cost ``max(-f, cost of the pixel that reached
    it)``: a path costs its highest point of ``-f``, as in scikit-image's watershed.
    Regions are separate, so flooding them one at a time gives the same labels as one
    queue over the image, with a queue that stays small.

    Parameters
    ----------
    f : float64 (H * W,)
        The relief; high values flood first.
    labels : int32 (H * W,)
        Markers (> 0) on input, the labels on output; 0 where no marker reaches.
    region : int32 (H * W,)
        Region ids, 0 outside; markers must lie in a region.
    order, start : int64
        From :func:`component_order`: the pixels of each region.
    width : int
        W, the row length.
    """
    size = f.shape[0]
    height = size // width
    largest = 0
    for r in range(1, start.shape[0] - 1):
        largest = max(largest, start[r + 1] - start[r])
    val = np.empty(largest, np.float64)
    age = np.empty(largest, np.int64)
    idx = np.empty(largest, np.int64)
    for r in range(1, start.shape[0] - 1):
        n = 0
        stamp = 0
        for i in range(start[r], start[r + 1]):
            p = order[i]
            if labels[p] > 0:
                n = _heap_push(val, age, idx, n, -f[p], stamp, p)
                stamp += 1
        while n > 0:
            level = val[0]
            p, n = _heap_pop(val, age, idx, n)
            y = p // width
            x = p - y * width
            lab = labels[p]
            for k in range(4):
                if k == 0:
                    if y == 0:
                        continue
                    q = p - width
                elif k == 1:
                    if x == 0:
                        continue
                    q = p - 1
                elif k == 2:
                    if x == width - 1:
                        continue
                    q = p + 1
                else:
                    if y == height - 1:
                        continue
                    q = p + width
                if labels[q] != 0 or region[q] != r:
                    continue
                labels[q] = lab
                n = _heap_push(val, age, idx, n, max(-f[q], level), stamp, q)
                stamp += 1
