"""Numba kernels of the nucleus measurements: per-label sums, and the outlines (boundary
tracing, collinear pruning, convex hulls).

The outline of a nucleus is the 0.5 iso-line of its mask, the polygon through the midpoints
of the pixel edges ("cracks") between the nucleus and the rest, as marching squares draws it
with the background diagonally connected (scikit-image's ``find_contours`` default).  Walking
the cracks with the nucleus on the right and turning right whenever the pixel ahead on the
right is not the nucleus, straight on when the pixel ahead on the left is not, left
otherwise, visits exactly that polygon's vertices in order: the nucleus is 4-connected, the
background 8-connected.  Every vertex has half-integer coordinates, so areas are exact in
float64.

Coordinates are pixel corners: pixel ``(y, x)`` covers ``[y, y + 1] x [x, x + 1]``.  A
directed crack is a corner and a direction (0 east, 1 south, 2 west, 3 north); the pixel on
its right is the nucleus.
"""

from __future__ import annotations

import numpy as np
from numba import jit

from mcf_fast._numba import JIT

__all__ = [
    "finish_rings_kernel",
    "label_sums_kernel",
    "longest_boundaries_kernel",
    "trace_kernel",
]


@jit(**JIT)
def label_sums_kernel(lab, rgb, od_of, prob, has_prob, n, out):  # pragma: no cover
    """Per-label sums over the pixels of labels 1..n, in row-major pixel order.

    ``out[j]`` (float64 (n + 1, 13)) receives label j's pixel count, sums of y, x, y * y,
    x * x and y * x, of the three channels of ``rgb`` (uint8 (H, W, >= 3)), of their
    optical densities ``od_of[value]`` and, when ``has_prob``, of ``prob`` (H, W).
    """
    h, w = lab.shape
    for j in range(n + 1):
        for k in range(13):
            out[j, k] = 0.0
    for y in range(h):
        fy = float(y)
        for x in range(w):
            j = lab[y, x]
            if j < 1 or j > n:
                continue
            fx = float(x)
            out[j, 0] += 1.0
            out[j, 1] += fy
            out[j, 2] += fx
            out[j, 3] += fy * fy
            out[j, 4] += fx * fx
            out[j, 5] += fy * fx
            for c in range(3):
                v = rgb[y, x, c]
                out[j, 6 + c] += float(v)
                out[j, 9 + c] += od_of[v]
            if has_prob:
                out[j, 12] += float(prob[y, x])


@jit(**JIT)
def _label_at(lab, y, x):  # pragma: no cover - compiled
    if y < 0 or x < 0 or y >= lab.shape[0] or x >= lab.shape[1]:
        return 0
    return lab[y, x]


@jit(**JIT)
def _right_pixel(cy, cx, k):  # pragma: no cover - compiled
    """The pixel on the right of the crack leaving corner (cy, cx) in direction k."""
    if k == 0:
        return cy, cx
    if k == 1:
        return cy, cx - 1
    if k == 2:
        return cy - 1, cx - 1
    return cy - 1, cx


@jit(**JIT)
def _left_pixel(cy, cx, k):  # pragma: no cover - compiled
    """The pixel on the left of the crack leaving corner (cy, cx) in direction k."""
    if k == 0:
        return cy - 1, cx
    if k == 1:
        return cy, cx
    if k == 2:
        return cy, cx - 1
    return cy - 1, cx - 1


@jit(**JIT)
def _next_crack(lab, j, cy, cx, k):  # pragma: no cover - compiled
    """The crack after (cy, cx, k) on the boundary of label j (which lies on its right)."""
    dy = (0, 1, 0, -1)
    dx = (1, 0, -1, 0)
    qy = cy + dy[k]
    qx = cx + dx[k]
    ry, rx = _right_pixel(qy, qx, k)
    if _label_at(lab, ry, rx) != j:
        return qy, qx, (k + 1) % 4  # turn right round the nucleus' corner
    ly, lx = _left_pixel(qy, qx, k)
    if _label_at(lab, ly, lx) != j:
        return qy, qx, k
    return qy, qx, (k + 3) % 4


@jit(**JIT)
def longest_boundaries_kernel(lab, n, visited, length, start, box):  # pragma: no cover
    """The longest boundary cycle of every label 1..n, and its bounding box.

    Parameters
    ----------
    lab : int32 (H, W)
        Labels; values outside 1..n are background.
    n : int
        The largest label.
    visited : uint8 (H + 1, W + 1, 4)
        Work buffer, all zero on entry.
    length : int64 (n + 1,)
        Out: crack count of label j's longest boundary cycle (0 for a label with no pixels);
        of equal cycles the first met in row-major order of their first pixel.
    start : int64 (n + 1, 3)
        Out: a directed crack (corner y, corner x, direction) on that cycle.
    box : int64 (n + 1, 4)
        Out: y0, x0, y1, x1 (exclusive) of label j's pixels.
    """
    h, w = lab.shape
    for j in range(n + 1):
        length[j] = 0
        box[j, 0] = h
        box[j, 1] = w
        box[j, 2] = 0
        box[j, 3] = 0
    for y in range(h):
        for x in range(w):
            j = lab[y, x]
            if j < 1 or j > n:
                continue
            box[j, 0] = min(box[j, 0], y)
            box[j, 1] = min(box[j, 1], x)
            box[j, 2] = max(box[j, 2], y + 1)
            box[j, 3] = max(box[j, 3], x + 1)
            # the four cracks with this pixel on their right: top, right, bottom, left
            for side in range(4):
                if side == 0:
                    cy, cx, ny, nx = y, x, y - 1, x
                elif side == 1:
                    cy, cx, ny, nx = y, x + 1, y, x + 1
                elif side == 2:
                    cy, cx, ny, nx = y + 1, x + 1, y + 1, x
                else:
                    cy, cx, ny, nx = y + 1, x, y, x - 1
                if _label_at(lab, ny, nx) == j or visited[cy, cx, side]:
                    continue
                count = 0
                py, px, k = cy, cx, side
                while True:
                    visited[py, px, k] = 1
                    count += 1
                    py, px, k = _next_crack(lab, j, py, px, k)
                    if py == cy and px == cx and k == side:
                        break
                if count > length[j]:
                    length[j] = count
                    start[j, 0] = cy
                    start[j, 1] = cx
                    start[j, 2] = side


@jit(**JIT)
def trace_kernel(lab, n, length, start, offsets, out):  # pragma: no cover - compiled
    """Write the crack midpoints of each label's chosen cycle, in walking order.

    ``out[offsets[j - 1]:offsets[j]]`` (float64 (y, x) rows) receives label j's
    ``length[j]`` midpoints, from the crack ``start[j]`` on.
    """
    dy = (0.0, 1.0, 0.0, -1.0)
    dx = (1.0, 0.0, -1.0, 0.0)
    for j in range(1, n + 1):
        py, px, k = start[j, 0], start[j, 1], start[j, 2]
        o = offsets[j - 1]
        for i in range(length[j]):
            out[o + i, 0] = py + 0.5 * dy[k]
            out[o + i, 1] = px + 0.5 * dx[k]
            py, px, k = _next_crack(lab, j, py, px, k)


@jit(**JIT)
def _area(pts, m):  # pragma: no cover - compiled
    """Unsigned shoelace area of the first m rows of pts (an open ring)."""
    s = 0.0
    for i in range(m):
        i1 = (i + 1) % m
        s += pts[i, 1] * pts[i1, 0] - pts[i, 0] * pts[i1, 1]
    return abs(s) / 2.0


@jit(**JIT)
def _hull_area(pts, m, width, hull):  # pragma: no cover - compiled
    """Area of the convex hull (monotone chain) of the first m rows of pts (distinct
    half-integer points); ``hull`` is a work buffer of at least 2 m + 1 rows."""
    if m < 3:
        return 0.0
    key = np.empty(m, np.int64)
    for i in range(m):
        key[i] = np.int64(round(2.0 * pts[i, 0])) * (2 * width + 8) + np.int64(
            round(2.0 * pts[i, 1])
        )
    order = np.argsort(key)
    t = 0
    for half in range(2):
        base = t
        for q in range(m):
            i = order[q] if half == 0 else order[m - 1 - q]
            py, px = pts[i, 0], pts[i, 1]
            while t - base >= 2:
                ay, ax = hull[t - 2, 0], hull[t - 2, 1]
                by, bx = hull[t - 1, 0], hull[t - 1, 1]
                if (by - ay) * (px - ax) - (bx - ax) * (py - ay) > 1e-12:
                    break
                t -= 1
            hull[t, 0] = py
            hull[t, 1] = px
            t += 1
        t -= 1  # each half's last point is the other's first
    return _area(hull, t)


@jit(**JIT)
def _turns(raw, a, m, i):  # pragma: no cover - compiled
    """1 when vertex i of the cycle raw[a:a + m] is off the line through its neighbours."""
    p = a + (i - 1) % m
    c = a + i
    q = a + (i + 1) % m
    din_y, din_x = raw[c, 0] - raw[p, 0], raw[c, 1] - raw[p, 1]
    dout_y, dout_x = raw[q, 0] - raw[c, 0], raw[q, 1] - raw[c, 1]
    return 1 if abs(din_y * dout_x - din_x * dout_y) > 1e-9 else 0


@jit(**JIT)
def finish_rings_kernel(
    raw, raw_offsets, width, rings, ring_len, perimeter, solidity
):  # pragma: no cover - compiled
    """Drop collinear vertices, close each ring, and measure its length and solidity.

    Parameters
    ----------
    raw : float64 (M, 2)
        The midpoints of each label's cycle, label j at ``raw_offsets[j - 1]:raw_offsets[j]``.
    width : int
        W (for the hull's sort keys).
    rings : float64 (M + n, 2)
        Out: label j's closed ring at ``raw_offsets[j - 1] + j - 1`` on, ``ring_len[j - 1]``
        rows (the first vertex repeated at the end); a vertex goes when it lies on the line
        through its two neighbours in the cycle, unless fewer than 3 would stay.
    ring_len, perimeter, solidity : (n,)
        Out: rows written, summed edge lengths, polygon area over its hull's area (1 when
        the hull has no area).
    """
    n = len(raw_offsets) - 1
    hull = np.empty((2 * (len(raw) + 1), 2))
    for j in range(n):
        a, b = raw_offsets[j], raw_offsets[j + 1]
        m = b - a
        o = a + j
        kept = 0
        if m >= 4:
            for i in range(m):
                kept += _turns(raw, a, m, i)
        if kept >= 3:
            t = 0
            for i in range(m):
                if _turns(raw, a, m, i):
                    rings[o + t, 0] = raw[a + i, 0]
                    rings[o + t, 1] = raw[a + i, 1]
                    t += 1
        else:
            t = m
            for i in range(m):
                rings[o + i, 0] = raw[a + i, 0]
                rings[o + i, 1] = raw[a + i, 1]
        if t > 0:
            rings[o + t, 0] = rings[o, 0]
            rings[o + t, 1] = rings[o, 1]
            ring_len[j] = t + 1
        else:
            ring_len[j] = 0
        s = 0.0
        for i in range(t):
            dy = rings[o + i + 1, 0] - rings[o + i, 0]
            s += np.hypot(dy, rings[o + i + 1, 1] - rings[o + i, 1])
        perimeter[j] = s
        pts = rings[o : o + t]
        hull_area = _hull_area(pts, t, width, hull)
        solidity[j] = _area(pts, t) / hull_area if hull_area > 0 else 1.0
