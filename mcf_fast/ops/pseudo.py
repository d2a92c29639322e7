"""Nucleus centres and the pseudo mask that the segmentation branch learns from.

Centres are the local maxima of the GDBP map D (or of the fused response S when GDBP is
off) whose normalised response reaches a score threshold.

The pseudo mask labels each pixel -1 (unknown), 0 (background) or 1 (nucleus).  Two rules:

``"paper"``
    Background where ``S < t1``; nucleus where, inside a window the size of the
    middle-scale filter around a centre, ``S > ratio * S(centre)``; the rest unknown.
``"gated"`` (ours, the default)
    The paper's regions are much wider than the nuclei, so a colour gate decides.  A
    two-class linear discriminant in optical density (``-log((RGB + 1) / 256)``) is fitted
    per image: nucleus samples are the pixels at the detected centres, background samples
    those with ``S < t1``.  Its posterior ``p`` (equal priors) then labels nucleus the
    pixels with ``p > 0.5`` inside a disc of radius ``0.3 * window`` around a centre and
    connected to it, and background the pixels with ``p < bg_posterior`` that are outside
    every disc; the rest is unknown.  Being conservative on both sides is the point: the
    U-Net learns only from confident pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from mcf_fast.errors import InputError

__all__ = ["find_centres", "pseudo_mask", "nucleus_posterior"]


def _check_map(a: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(a)
    if m.ndim != 2:
        raise InputError(f"{name}: expected a 2-D map, got shape {m.shape}")
    m = m.astype(np.float32, copy=False)
    if not np.all(np.isfinite(m)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return m


def find_centres(
    response: np.ndarray,
    *,
    gdbp: np.ndarray | None = None,
    min_distance: int = 5,
    min_score: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus centres: local maxima of D (or of S) with ``S >= min_score``.

    Parameters
    ----------
    response : ndarray, shape (H, W)
        The normalised fused response S~ in [0, 1].
    gdbp : ndarray, shape (H, W), optional
        The GDBP map D; its positive local maxima are the candidates.  Without it the local
        maxima of S are.
    min_distance : int
        Peaks closer than this (Chebyshev distance) are merged; the higher one is kept.
    min_score : float
        Smallest S~ at a kept centre.

    Returns
    -------
    centres : ndarray, shape (M, 2), int64
        (y, x), ordered by decreasing score.
    scores : ndarray, shape (M,), float32
        S~ at each centre.

    Examples
    --------
    >>> s = np.zeros((9, 9), np.float32); s[4, 4] = 1.0
    >>> find_centres(s)[0].tolist()
    [[4, 4]]
    """
    s = _check_map(response, "response")
    d = s if gdbp is None else _check_map(gdbp, "gdbp")
    if d.shape != s.shape:
        raise InputError(f"gdbp: shape {d.shape} differs from the response's {s.shape}")
    if isinstance(min_distance, bool) or int(min_distance) < 1:
        raise InputError(f"min_distance = {min_distance!r}: expected a positive integer")
    size = 2 * int(min_distance) + 1
    mx = ndi.maximum_filter(d, size=size, mode="nearest")
    cand = (d == mx) & (d > 0) & (s >= min_score)
    ys, xs = np.nonzero(cand)
    if ys.size == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    # order by the peak's own height (D), break ties by position; then suppress plateau
    # duplicates and neighbours closer than min_distance, greedily
    key = d[ys, xs]
    order = np.lexsort((xs, ys, -key))
    ys, xs = ys[order], xs[order]
    taken = np.zeros(s.shape, dtype=bool)
    keep = []
    r = int(min_distance)
    for i in range(ys.size):
        y, x = ys[i], xs[i]
        if taken[y, x]:
            continue
        keep.append(i)
        taken[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
    ys, xs = ys[keep], xs[keep]
    sc = s[ys, xs]
    order = np.argsort(-sc, kind="stable")
    centres = np.stack([ys[order], xs[order]], axis=1).astype(np.int64)
    return centres, sc[order].astype(np.float32)


def nucleus_posterior(
    image: np.ndarray,
    nucleus: np.ndarray,
    background: np.ndarray,
) -> np.ndarray | None:
    """Per-pixel nucleus posterior of a linear discriminant in optical density.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
    nucleus, background : ndarray, shape (H, W), bool
        Training pixels of each class.

    Returns
    -------
    ndarray, shape (H, W), float32 in [0, 1], or None when a class has fewer than 10 pixels.
    """
    od = -np.log((image.astype(np.float32) + 1.0) / 256.0).reshape(-1, 3)
    fn = nucleus.reshape(-1)
    fb = background.reshape(-1)
    if fn.sum() < 10 or fb.sum() < 10:
        return None
    xn, xb = od[fn].astype(np.float64), od[fb].astype(np.float64)
    mn, mb = xn.mean(0), xb.mean(0)
    cov = 0.5 * (np.cov(xn.T) + np.cov(xb.T)) + 1e-4 * np.eye(3)
    d = np.linalg.solve(cov, mn - mb)
    pn, pb = xn @ d, xb @ d
    mu1, mu0 = pn.mean(), pb.mean()
    v1, v0 = pn.var() + 1e-9, pb.var() + 1e-9
    proj = (od @ d.astype(np.float32)).astype(np.float64)
    l1 = -0.5 * (proj - mu1) ** 2 / v1 - 0.5 * np.log(v1)
    l0 = -0.5 * (proj - mu0) ** 2 / v0 - 0.5 * np.log(v0)
    post = 1.0 / (1.0 + np.exp(np.clip(l0 - l1, -50, 50)))
    # beyond the nucleus mean the posterior must not fall back (wider background variance)
    post[proj > mu1] = np.maximum(post[proj > mu1], 0.5)
    return post.reshape(image.shape[:2]).astype(np.float32)


def pseudo_mask(
    image: np.ndarray,
    response: np.ndarray,
    centres: np.ndarray,
    *,
    window: int,
    rule: str = "gated",
    t1: float = 0.4,
    ratio: float = 0.8,
    bg_posterior: float = 0.1,
    radius_factor: float = 0.3,
) -> np.ndarray:
    """The pseudo mask {-1 unknown, 0 background, 1 nucleus} (module docstring).

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
    response : ndarray, shape (H, W)
        Normalised fused response S~.
    centres : ndarray, shape (M, 2), int
        Detected centres (y, x).
    window : int
        Side of the middle-scale filter (the paper's window).
    rule : {"gated", "paper"}
    t1, ratio : float
        The paper's background threshold and the 0.8 of S(centre).
    bg_posterior, radius_factor : float
        Gated rule: background needs a nucleus posterior below ``bg_posterior``; nucleus
        labels lie within ``radius_factor * window`` of a centre.

    Returns
    -------
    ndarray, shape (H, W), int8
    """
    s = _check_map(response, "response")
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    h, w = s.shape
    if rule not in ("paper", "gated"):
        raise InputError(f"rule = {rule!r}: expected 'paper' or 'gated'")
    if window < 1:
        raise InputError(f"window = {window!r}: expected a positive integer")
    out = np.full((h, w), -1, dtype=np.int8)
    half = int(window) // 2
    if rule == "paper":
        out[s < t1] = 0
        for y, x in c:
            y0, y1, x0, x1 = max(0, y - half), min(h, y + half + 1), max(0, x - half), \
                min(w, x + half + 1)
            win = s[y0:y1, x0:x1]
            sub = out[y0:y1, x0:x1]
            sub[win > ratio * s[y, x]] = 1
        return out
    img = np.asarray(image)
    if img.shape[:2] != s.shape or img.ndim != 3:
        raise InputError(f"image: shape {img.shape} does not match the response {s.shape}")
    seeds = np.zeros((h, w), dtype=bool)
    if len(c):
        seeds[c[:, 0], c[:, 1]] = True
        seeds = ndi.binary_dilation(seeds, structure=np.ones((3, 3), bool))
    post = nucleus_posterior(img, seeds, s < t1)
    if post is None:  # nothing to learn colours from: fall back to the paper's rule
        return pseudo_mask(image, s, c, window=window, rule="paper", t1=t1, ratio=ratio)
    radius = max(1.0, radius_factor * window)
    disc = np.zeros((h, w), dtype=bool)
    if len(c):
        marks = np.ones((h, w), dtype=bool)
        marks[c[:, 0], c[:, 1]] = False
        dist = ndi.distance_transform_edt(marks)
        disc = dist <= radius
    fg = disc & (post > 0.5)
    # keep only the gated pieces that contain a centre
    lab, _ = ndi.label(fg)
    if len(c):
        ids = np.unique(lab[c[:, 0], c[:, 1]])
        ids = ids[ids > 0]
        fg = np.isin(lab, ids)
    out[(post < bg_posterior) & ~disc] = 0
    out[fg] = 1
    return out
