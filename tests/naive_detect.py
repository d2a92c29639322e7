"""Slow, obviously-correct float64 references for the detection kernels."""

from __future__ import annotations

import numpy as np


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
