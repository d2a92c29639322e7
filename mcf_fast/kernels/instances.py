"""Numba kernel of the greyscale reconstruction by dilation behind the h-maxima split.

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

from numba import jit

from mcf_fast._numba import JIT

__all__ = ["reconstruct_dilation_kernel"]


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
