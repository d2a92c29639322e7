"""Slow, obviously-correct float64 references of the kernels, for parity tests and benchmarks.

Each ``naive_*`` function is a direct loop transcription of the definition; each
``numpy_*`` function computes the same with whole-array numpy/scipy operations (the
baseline the benchmarks time beside the fast path) and is itself checked against the
loop version in the tests.
"""

from __future__ import annotations

import math

import numpy as np

# ----------------------------------------------------------------------------------------
# Features: colour names and dense HOG (mcf_fast.ops.features)
# ----------------------------------------------------------------------------------------


def naive_color_names(rgb: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(H, W, 11) float64: the table row of every pixel, one pixel at a time."""
    h, w = rgb.shape[:2]
    out = np.zeros((h, w, table.shape[1]))
    for i in range(h):
        for j in range(w):
            r, g, b = (int(v) for v in rgb[i, j, :3])
            out[i, j] = table[r // 8 + 32 * (g // 8) + 1024 * (b // 8)]
    return out


def numpy_color_names(rgb: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(H, W, 11): the same gather with numpy fancy indexing."""
    a = rgb.astype(np.int64)
    idx = a[..., 0] // 8 + 32 * (a[..., 1] // 8) + 1024 * (a[..., 2] // 8)
    return table[idx]


def _naive_gradient(rgb: np.ndarray, i: int, j: int) -> tuple[int, int]:
    h, w = rgb.shape[:2]
    best, bx, by = -1, 0, 0
    for ch in range(3):
        gx = int(rgb[i, min(j + 1, w - 1), ch]) - int(rgb[i, max(j - 1, 0), ch])
        gy = int(rgb[min(i + 1, h - 1), j, ch]) - int(rgb[max(i - 1, 0), j, ch])
        if gx * gx + gy * gy > best:
            best, bx, by = gx * gx + gy * gy, gx, gy
    return bx, by


def naive_hog(
    rgb: np.ndarray, *, bins: int = 9, cell: int = 4, eps: float = 1e-4, clip: float = 0.2
) -> np.ndarray:
    """(H, W, bins) float64 dense HOG as defined in mcf_fast.ops.features, with loops."""
    h, w = rgb.shape[:2]
    votes = np.zeros((h, w, bins))
    for i in range(h):
        for j in range(w):
            gx, gy = _naive_gradient(rgb, i, j)
            mag = math.hypot(gx, gy) / 255.0
            if mag == 0.0:
                continue
            theta = math.atan2(gy, gx) % math.pi  # [0, pi)
            t = theta * bins / math.pi - 0.5
            b0 = math.floor(t)
            frac = t - b0
            votes[i, j, b0 % bins] += mag * (1.0 - frac)
            votes[i, j, (b0 + 1) % bins] += mag * frac
    lo = cell // 2
    hist = np.zeros((h, w, bins))
    for i in range(h):
        for j in range(w):
            for a in range(i - lo, i - lo + cell):
                for b in range(j - lo, j - lo + cell):
                    if 0 <= a < h and 0 <= b < w:
                        hist[i, j] += votes[a, b]
    energy = (hist**2).sum(axis=2)

    def e(a: int, b: int) -> float:
        return energy[a, b] if 0 <= a < h and 0 <= b < w else 0.0

    out = np.zeros((h, w, bins))
    for i in range(h):
        for j in range(w):
            for a in (i - cell, i):
                for b in (j - cell, j):
                    block = e(a, b) + e(a + cell, b) + e(a, b + cell) + e(a + cell, b + cell)
                    n = math.sqrt(block + eps)
                    for k in range(bins):
                        out[i, j, k] += 0.5 * min(hist[i, j, k] / n, clip)
    return out


def numpy_hog(
    rgb: np.ndarray, *, bins: int = 9, cell: int = 4, eps: float = 1e-4, clip: float = 0.2
) -> np.ndarray:
    """(H, W, bins): the same dense HOG with numpy and scipy.ndimage.uniform_filter."""
    from scipy.ndimage import uniform_filter

    h, w = rgb.shape[:2]
    img = rgb[..., :3].astype(np.int64)
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    gx = p[1:-1, 2:] - p[1:-1, :-2]
    gy = p[2:, 1:-1] - p[:-2, 1:-1]
    m2 = gx * gx + gy * gy
    ch = np.argmax(m2, axis=2)[..., None]  # first maximum, like the kernel
    gx = np.take_along_axis(gx, ch, 2)[..., 0].astype(np.float64)
    gy = np.take_along_axis(gy, ch, 2)[..., 0].astype(np.float64)
    mag = np.hypot(gx, gy) / 255.0
    t = np.mod(np.arctan2(gy, gx), np.pi) * bins / np.pi - 0.5
    b0 = np.floor(t)
    frac = t - b0
    b0 = b0.astype(np.int64) % bins
    b1 = (b0 + 1) % bins
    hist = np.empty((h, w, bins))
    for k in range(bins):
        v = np.where(b0 == k, mag * (1.0 - frac), 0.0) + np.where(b1 == k, mag * frac, 0.0)
        hist[..., k] = uniform_filter(v, size=cell, mode="constant", cval=0.0) * cell * cell
    energy = np.pad((hist**2).sum(axis=2), cell)  # zero outside the image

    def e(da: int, db: int) -> np.ndarray:
        return energy[cell + da : cell + da + h, cell + db : cell + db + w]

    out = np.zeros_like(hist)
    for a in (-cell, 0):
        for b in (-cell, 0):
            block = e(a, b) + e(a + cell, b) + e(a, b + cell) + e(a + cell, b + cell)
            out += 0.5 * np.minimum(hist / np.sqrt(block + eps)[..., None], clip)
    return out


# ----------------------------------------------------------------------------------------
# GDBP, eq. (4) (mcf_fast.ops.gdbp)
# ----------------------------------------------------------------------------------------

#: E, W, S, N, SE, NW, SW, NE as (row step, column step)
GDBP_DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))


def naive_gdbp_directions(s: np.ndarray, *, p: int = 3, q: int = 10) -> np.ndarray:
    """(8, H, W) float64 d_r of eq. (4): the literal double sum, samples clamped to the edge."""
    h, w = s.shape
    s = s.astype(np.float64)
    d = np.zeros((8, h, w))

    def at(i: int, j: int) -> float:
        return s[min(max(i, 0), h - 1), min(max(j, 0), w - 1)]

    for r, (di, dj) in enumerate(GDBP_DIRECTIONS):
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for pp in range(1, p + 1):
                    for qq in range(pp + 1, q + 1):
                        acc += at(i + di * pp, j + dj * pp) - at(i + di * qq, j + dj * qq)
                d[r, i, j] = acc
    return d


def naive_gdbp(s: np.ndarray, *, p: int = 3, q: int = 10) -> np.ndarray:
    """(H, W) float64 D of eq. (4): sum of the d_r where all eight are positive, else 0."""
    d = naive_gdbp_directions(s, p=p, q=q)
    return np.where((d > 0).all(axis=0), d.sum(axis=0), 0.0)


def numpy_gdbp(s: np.ndarray, *, p: int = 3, q: int = 10) -> np.ndarray:
    """(H, W): the same D with whole-array numpy slices of an edge-padded map."""
    h, w = s.shape
    pad = np.pad(s.astype(np.float64), q, mode="edge")
    total = np.zeros((h, w))
    ok = np.ones((h, w), bool)
    for di, dj in GDBP_DIRECTIONS:
        d = np.zeros((h, w))
        for pp in range(1, p + 1):
            near = pad[q + di * pp : q + di * pp + h, q + dj * pp : q + dj * pp + w]
            for qq in range(pp + 1, q + 1):
                far = pad[q + di * qq : q + di * qq + h, q + dj * qq : q + dj * qq + w]
                d += near - far
        total += d
        ok &= d > 0
    return np.where(ok, total, 0.0)


# ---- end of the features / GDBP references ----------------------------------------------


# ----------------------------------------------------------------------------------------
# Instance labels: the h-maxima split (mcf_fast.ops.instances)
# ----------------------------------------------------------------------------------------


def skimage_hmaxima_markers(dist: np.ndarray, comps: np.ndarray, *, h: float) -> np.ndarray:
    """Watershed markers of the h-maxima split, component by component with scikit-image.

    ``skimage.morphology.h_maxima`` on each component's bounding box (4 pixels of margin,
    the rest zeroed), its 8-connected blobs numbered on, and one seed at the first deepest
    pixel of a component without an h-maximum.
    """
    from scipy import ndimage
    from skimage.morphology import h_maxima

    markers = np.zeros(comps.shape, np.int32)
    m = 0
    height, width = comps.shape
    pad = 4
    for k, box in enumerate(ndimage.find_objects(comps), start=1):
        y0, y1 = max(box[0].start - pad, 0), min(box[0].stop + pad, height)
        x0, x1 = max(box[1].start - pad, 0), min(box[1].stop + pad, width)
        own = comps[y0:y1, x0:x1] == k
        d = np.where(own, dist[y0:y1, x0:x1], 0.0)
        peaks = h_maxima(d, h).astype(bool) & own if d.max() > h else np.zeros_like(own)
        lab, c = ndimage.label(peaks, structure=np.ones((3, 3), bool))
        if c == 0:
            lab[np.unravel_index(np.argmax(d), d.shape)] = c = 1
        sub = markers[y0:y1, x0:x1]
        sub[lab > 0] = lab[lab > 0] + m
        m += c
    return markers


# ----------------------------------------------------------------------------------------
# Outlines: boundary polygons, perimeters, solidity (mcf_fast.ops.measure)
# ----------------------------------------------------------------------------------------


def skimage_outlines(lab: np.ndarray, n: int) -> list[tuple[np.ndarray, float, float] | None]:
    """Per label 1..n: the closed outline ring (pixel-corner (y, x)), its length and its
    solidity, from scikit-image's marching squares on each label's padded mask, the longest
    contour kept, collinear vertices dropped; the hull from scipy's Qhull.  None for a label
    whose longest contour is not unique (the choice between equals is arbitrary) or that
    has no pixels.
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull
    from skimage.measure import find_contours

    out: list[tuple[np.ndarray, float, float] | None] = []
    boxes = ndimage.find_objects(lab, max_label=n)
    for j, box in enumerate(boxes, start=1):
        if box is None:
            out.append(None)
            continue
        sy, sx = box
        m = np.pad(lab[sy, sx] == j, 1).astype(np.float64)
        contours = sorted(find_contours(m, 0.5), key=len, reverse=True)
        if len(contours) > 1 and len(contours[0]) == len(contours[1]):
            out.append(None)
            continue
        ring = contours[0][:-1] + (sy.start - 0.5, sx.start - 0.5)
        prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
        d_in, d_out = ring - prev, nxt - ring
        keep = np.abs(d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]) > 1e-9
        ring = ring[keep] if keep.sum() >= 3 else ring
        closed = np.vstack([ring, ring[:1]])
        length = float(np.hypot(*np.diff(closed, axis=0).T).sum())
        y, x = ring[:, 0], ring[:, 1]
        area = abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2
        try:
            hull = ConvexHull(ring).volume
        except Exception:  # all on one line
            hull = 0.0
        out.append((closed, length, area / hull if hull > 0 else 1.0))
    return out


# ----------------------------------------------------------------------------------------
# Detection: correlation, fusion (eqs. 2-3), local maxima
# ----------------------------------------------------------------------------------------


def correlate(features: np.ndarray, filters: np.ndarray, *, margin: int = 0) -> np.ndarray:
    """Direct spatial correlation with centre-anchored filters and mirrored borders.

    R_f(t) = sum_c sum_tau Z_c(t + tau - a) w_fc(tau), a = f // 2, Z mirrored ("symmetric").
    """
    z = np.asarray(features, dtype=np.float64)
    w = np.asarray(filters, dtype=np.float64)
    h, wd, _ = z.shape
    f = w.shape[-1]
    a = f // 2
    pad = a + margin
    p = np.pad(z, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    oh, ow = h + 2 * margin, wd + 2 * margin
    out = np.zeros((w.shape[0], oh, ow))
    for k in range(w.shape[0]):
        wk = np.moveaxis(w[k], 0, 2)
        for i in range(oh):
            for j in range(ow):
                out[k, i, j] = np.sum(p[i : i + f, j : j + f, :] * wk)
    return out


def correlate2d_zero(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'same' correlation of a 2-D map with a centred odd kernel, zero outside the map."""
    im = np.asarray(image, dtype=np.float64)
    k = np.asarray(kernel, dtype=np.float64)
    a = k.shape[0] // 2
    p = np.pad(im, a)
    out = np.zeros_like(im)
    for i in range(im.shape[0]):
        for j in range(im.shape[1]):
            out[i, j] = np.sum(p[i : i + k.shape[0], j : j + k.shape[1]] * k)
    return out


def topk_sum(values, t: int) -> float:
    v = sorted((float(x) for x in values), reverse=True)
    return float(sum(v[:t]))


def fuse(
    responses: np.ndarray, *, top_t: int, top_h: int, mode: str = "topk", scale_weights=None
) -> np.ndarray:
    """Eqs. (2)-(3) on (N, K, U, H, W) maps with plain loops (float64)."""
    r = np.asarray(responses, dtype=np.float64)
    n, k, u, h, w = r.shape
    agg = (lambda v, t: float(np.mean(v))) if mode == "mean" else topk_sum
    sk = np.zeros((n, k, h, w))
    for a in range(n):
        for b in range(k):
            for i in range(h):
                for j in range(w):
                    sk[a, b, i, j] = agg(r[a, b, :, i, j], top_t)
            if scale_weights is not None:
                sk[a, b] = correlate2d_zero(sk[a, b], scale_weights[a][b])
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            sn = [agg(sk[a, :, i, j], top_t) for a in range(n)]
            out[i, j] = agg(sn, top_h)
    return out


def local_maxima(d: np.ndarray, s: np.ndarray, *, min_distance: int, min_score: float):
    """Pixels that are the maximum of their (2r+1)^2 window (edge-clamped), D > 0, S >= t."""
    h, w = d.shape
    r = min_distance
    out = []
    for i in range(h):
        for j in range(w):
            win = d[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
            if d[i, j] > 0 and d[i, j] == win.max() and s[i, j] >= min_score:
                out.append((i, j))
    return out
