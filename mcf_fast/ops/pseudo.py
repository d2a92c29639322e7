"""Nucleus centres and the pseudo mask that the segmentation branch learns from.

Centres are the local maxima of the GDBP map D (or of the fused response S when GDBP is
off) whose normalised response reaches a score threshold.

The pseudo mask labels each pixel -1 (unknown), 0 (background) or 1 (nucleus).  Two rules:

``"paper"``
    Background where ``S < t1``; nucleus where, inside a window the size of the
    middle-scale filter around a centre, ``S > ratio * S(centre)``; the rest unknown.
``"gated"`` (ours, the default)
    The paper's regions are much wider than the nuclei, so a colour model decides.  A
    two-class Gaussian colour model in optical density (``-log((RGB + 1) / 256)``, a
    quadratic discriminant) is fitted per image: nucleus samples are the pixels at (and
    next to) the better-scoring half of the detected centres, background samples the
    pixels farther than ``2 r`` from every centre (``r = radius * window``).  Its
    posterior ``p`` (equal priors; the detector smooths it a little) then labels nucleus
    the pixels with ``p > fg_posterior`` within ``r`` of a centre and connected to it, and
    background the pixels with ``p < bg_posterior`` farther than ``r`` from every centre;
    pixels with ``p > free_posterior`` are nucleus anywhere (pieces of at least 30 pixels:
    nuclei the detector missed); the rest is unknown.  An undetected nucleus keeps its
    colour, so it is left unknown rather than called background.  Being conservative on
    both sides is the point: the U-Net learns only from confident pixels.

    With ``nucleus="hematoxylin"`` (the default of :class:`~mcf_fast.config.DetectionConfig`)
    the nucleus-coloured map is not the learnt posterior but the image's hematoxylin
    (colour deconvolution, smoothed by one pixel, stretched to [0, 1] by its 0.5th and
    99.5th percentiles) above Otsu's level over the tissue plus ``h_offset``, and the free
    pieces are the pixels above Otsu plus ``h_free``.  The learnt posterior follows whatever
    the strongest detections look like, and where many of them sit on dark cytoplasm or
    stroma it calls that tissue nucleus; the stain channel does not depend on the detections.

    With ``background="tissue"`` (the default of :class:`~mcf_fast.config.DetectionConfig`)
    the background labels also include the tissue that is not nucleus: stroma, collagen,
    cytoplasm and red cells (:func:`tissue_background`), not only white space, so that the
    network learns "nucleus" rather than "dark"; with ``fill_holes`` the nucleus label of
    a centre also covers the pale interior its dark rim encloses (vesicular nuclei).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from mcf_fast.errors import InputError
from mcf_fast.ops.tissue import WHITE_OD, hematoxylin_od, white_space

__all__ = [
    "colour_posterior",
    "find_centres",
    "gate_centres",
    "hematoxylin_levels",
    "nucleus_posterior",
    "pseudo_mask",
    "tissue_background",
]


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
    """Per-pixel nucleus posterior of a two-Gaussian colour model in optical density.

    Each class is a full-covariance Gaussian over ``-log((RGB + 1) / 256)`` fitted to its
    training pixels (a quadratic discriminant, equal priors).  Pixels darker in total optical
    density than the nucleus mean keep a posterior of at least 0.5, so that a wide
    background class cannot claim the darkest pixels.

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
    logs = []
    means = []
    for mask in (fn, fb):
        x = od[mask].astype(np.float64)
        mu = x.mean(0)
        cov = np.cov(x.T) + 1e-4 * np.eye(3)
        inv = np.linalg.inv(cov).astype(np.float32)
        d = od - mu.astype(np.float32)
        maha = np.einsum("ij,jk,ik->i", d, inv, d)
        logs.append(-0.5 * maha.astype(np.float64) - 0.5 * np.log(np.linalg.det(cov)))
        means.append(mu)
    post = 1.0 / (1.0 + np.exp(np.clip(logs[1] - logs[0], -50, 50)))
    dark = od.sum(1) > means[0].sum()
    post[dark] = np.maximum(post[dark], 0.5)
    return post.reshape(image.shape[:2]).astype(np.float32)


def _gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    mu = x.mean(0)
    cov = np.cov(x.T) + 1e-4 * np.eye(x.shape[1])
    return mu, np.linalg.inv(cov), float(np.log(np.linalg.det(cov)))


def _quadratic_form(x: np.ndarray, mu: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """``(x - mu) @ inv @ (x - mu)`` per row of x (N, 3), float64."""
    from mcf_fast.kernels.colour import quadratic_form_kernel

    out = np.empty(len(x))
    quadratic_form_kernel(
        np.ascontiguousarray(x), np.asarray(mu, np.float64), np.asarray(inv, np.float64), out
    )
    return out


def _log_likelihood(x: np.ndarray, model: tuple[np.ndarray, np.ndarray, float]) -> np.ndarray:
    mu, inv, logdet = model
    return -0.5 * _quadratic_form(x, mu, inv) - 0.5 * logdet


def tissue_background(
    image: np.ndarray,
    nucleus: np.ndarray,
    candidates: np.ndarray,
    *,
    quantile: float = 0.05,
    white_od: float = WHITE_OD,
    smooth: float = 1.0,
    iterations: int = 2,
) -> np.ndarray | None:
    """Confident background that includes tissue: white space and non-nuclear tissue.

    Two Gaussian colour models in optical density (``-log((RGB + 1) / 256)``, smoothed by
    ``smooth`` pixels) are fitted: the nucleus model on the ``nucleus`` sample pixels, the
    tissue model on the ``candidates`` that are not white space (total optical density at
    least ``white_od``).  The tissue sample still holds the nuclei the detector missed, so
    the tissue model is refitted ``iterations`` times on the candidates it explains better
    than the nucleus model does.  A pixel is confident background when it is white space,
    or when its log-likelihood ratio (nucleus over tissue) is below the ``quantile`` of
    that ratio over the nucleus samples: it looks less like a nucleus than all but that
    share of the known nucleus pixels.  The threshold is thus set per image by its own
    nuclei, whatever the stain.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
    nucleus : ndarray, shape (H, W), bool
        Pixels known to be nucleus (e.g. at the strongest detected centres).
    candidates : ndarray, shape (H, W), bool
        Pixels that may be background (e.g. far from every detected centre).
    quantile : float
        Share of nucleus samples allowed below the threshold, in (0, 1).
    white_od : float
        Total optical density below which a pixel is white space (glass, lumen, fat).
    smooth : float
        Gaussian sigma in pixels applied to the optical density (0: none).
    iterations : int
        Refits of the tissue model.

    Returns
    -------
    ndarray, shape (H, W), bool, or None when either sample has fewer than 10 pixels.

    Examples
    --------
    >>> img = np.full((40, 40, 3), 230, np.uint8); img[:, 20:] = (220, 120, 180)
    >>> img[8:14, 8:14] = img[26:32, 26:32] = (70, 40, 120)
    >>> nuc = np.zeros((40, 40), bool); nuc[9:13, 9:13] = True
    >>> bg = tissue_background(img, nuc, ~nuc, smooth=0)
    >>> bool(bg[2, 2]), bool(bg[5, 35]), bool(bg[28, 28])   # white, pink, missed nucleus
    (True, True, False)
    """
    if not 0 < quantile < 1:
        raise InputError(f"quantile = {quantile!r}: expected a number in (0, 1)")
    img = np.asarray(image)
    h, w = img.shape[:2]
    od = -np.log((img.astype(np.float32) + 1.0) / 256.0)
    if smooth > 0:
        od = np.stack([ndi.gaussian_filter(od[..., k], smooth) for k in range(3)], axis=-1)
    od = od.reshape(-1, 3).astype(np.float64)
    white = od.sum(1) < white_od
    nuc = np.asarray(nucleus, bool).reshape(-1) & ~white
    tissue = np.asarray(candidates, bool).reshape(-1) & ~white & ~nuc
    if nuc.sum() < 10 or tissue.sum() < 10:
        return None
    m_nuc = _gaussian(od[nuc])
    m_tis = _gaussian(od[tissue])
    l_nuc = _log_likelihood(od, m_nuc)
    for _ in range(max(0, int(iterations))):
        llr = l_nuc - _log_likelihood(od, m_tis)
        purer = tissue & (llr < np.quantile(llr[nuc], quantile))
        if purer.sum() < 10:
            break
        m_tis = _gaussian(od[purer])
    llr = l_nuc - _log_likelihood(od, m_tis)
    out = white | (llr < np.quantile(llr[nuc], quantile))
    return out.reshape(h, w)


def _smoothed_hematoxylin(image: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(hematoxylin_od(np.asarray(image)), 1.0)


def hematoxylin_levels(images: np.ndarray | list[np.ndarray]) -> tuple[float, float, float]:
    """The scale of the hematoxylin rule: (low, high, Otsu level) of one or more images.

    ``low`` and ``high`` are the 0.5th and 99.5th percentiles of the smoothed hematoxylin
    optical density over all pixels; the Otsu level is that of the map stretched by them to
    [0, 1] (so a level of 0.4 means 40% of the way from ``low`` to ``high``), over the
    tissue pixels only (white space excluded, when at least 100 pixels remain), so that the
    share of glass in a tile does not move it.  A slide fixes these once from sample tiles
    so that every tile uses the same threshold.

    Parameters
    ----------
    images : ndarray, shape (H, W, 3), uint8, or a list of such

    Returns
    -------
    (float, float, float)
    """
    imgs = [images] if isinstance(images, np.ndarray) else list(images)
    if not imgs:
        raise InputError("hematoxylin_levels: no image given")
    h = np.concatenate([_smoothed_hematoxylin(im).ravel() for im in imgs])
    tissue = ~np.concatenate([white_space(im).ravel() for im in imgs])
    return _levels(h, tissue)


def _levels(h: np.ndarray, tissue: np.ndarray) -> tuple[float, float, float]:
    """:func:`hematoxylin_levels` of a smoothed hematoxylin map and its tissue pixels."""
    from skimage.filters import threshold_otsu

    lo, hi = (float(v) for v in np.percentile(h, [0.5, 99.5]))
    if hi <= lo:
        return lo, hi, 1.0
    stretched = np.clip((h - lo) / (hi - lo), 0.0, 1.0)
    if tissue.sum() >= 100:
        stretched = stretched[tissue]
    if float(stretched.max()) <= float(stretched.min()):
        return lo, hi, 1.0
    return lo, hi, float(threshold_otsu(stretched))


def _hematoxylin_maps(
    image: np.ndarray, levels: tuple[float, float, float] | None, offsets: tuple[float, ...]
) -> list[np.ndarray]:
    """The pixels whose stretched hematoxylin exceeds Otsu's level plus each offset."""
    h = _smoothed_hematoxylin(image)
    lo, hi, otsu = _levels(h, ~white_space(image)) if levels is None else levels
    if hi <= lo:
        return [np.zeros(h.shape, bool) for _ in offsets]
    stretched = (h - lo) / (hi - lo)
    return [stretched > otsu + off for off in offsets]


def _fill_small_holes(mask: np.ndarray, *, max_area: float) -> np.ndarray:
    """``mask`` with its holes (background components not touching the border) of at most
    ``max_area`` pixels filled."""
    holes, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(holes.ravel())
    small = sizes <= max_area
    small[0] = False
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small[border] = False
    return mask | small[holes]


def _nucleus_seeds(
    shape: tuple[int, int], centres: np.ndarray, scores: np.ndarray | None
) -> np.ndarray:
    """Nucleus colour samples: the pixels at and next to the centres scoring at least their
    median (all centres without scores)."""
    strong = centres
    if scores is not None and len(scores) == len(centres):
        strong = centres[np.asarray(scores) >= np.median(scores)]
    seeds = np.zeros(shape, dtype=bool)
    seeds[strong[:, 0], strong[:, 1]] = True
    return ndi.binary_dilation(seeds, structure=np.ones((3, 3), bool))


def _centre_distance(shape: tuple[int, int], centres: np.ndarray) -> np.ndarray:
    marks = np.ones(shape, dtype=bool)
    marks[centres[:, 0], centres[:, 1]] = False
    return ndi.distance_transform_edt(marks)


def colour_posterior(
    image: np.ndarray,
    centres: np.ndarray,
    scores: np.ndarray | None,
    *,
    radius: float,
    dist: np.ndarray | None = None,
) -> np.ndarray | None:
    """Nucleus colour posterior learnt from one image's own detections.

    Nucleus samples: the pixels at and next to the centres scoring at least their median;
    background samples: the pixels farther than ``2 * radius`` from every centre.  See
    :func:`nucleus_posterior`.

    Returns
    -------
    ndarray, shape (H, W), float32, or None when either sample is too small.
    """
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    h, w = image.shape[:2]
    if len(c) == 0:
        return None
    if dist is None:
        dist = _centre_distance((h, w), c)
    return nucleus_posterior(image, _nucleus_seeds((h, w), c, scores), dist > 2.0 * radius)


def gate_centres(
    centres: np.ndarray, scores: np.ndarray, posterior: np.ndarray | None, *, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the centres whose 3 x 3 mean colour posterior is at least ``threshold``."""
    if posterior is None or threshold <= 0 or len(centres) == 0:
        return centres, scores
    mean = ndi.uniform_filter(posterior, size=3, mode="nearest")
    keep = mean[centres[:, 0], centres[:, 1]] >= threshold
    return centres[keep], scores[keep]


def pseudo_mask(
    image: np.ndarray,
    response: np.ndarray,
    centres: np.ndarray,
    *,
    window: int,
    rule: str = "gated",
    t1: float = 0.4,
    ratio: float = 0.8,
    scores: np.ndarray | None = None,
    radius: float = 0.3,
    fg_posterior: float = 0.5,
    bg_posterior: float = 0.1,
    free_posterior: float = 1.0,
    posterior: np.ndarray | None = None,
    background: str = "colour",
    bg_quantile: float = 0.05,
    fill_holes: bool = False,
    nucleus: str = "posterior",
    h_offset: float = 0.0,
    h_free: float = 0.1,
    h_levels: tuple[float, float, float] | None = None,
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
        The paper's rule: background where ``S < t1``; nucleus where
        ``S > ratio * S(centre)`` inside the window.
    scores : ndarray, shape (M,), optional
        Scores of the centres; the gated rule learns the nucleus colour from the centres
        scoring at least their median (all centres when omitted).
    radius, fg_posterior, bg_posterior : float
        Gated rule: nucleus labels lie within ``radius * window`` of a centre where the
        colour posterior exceeds ``fg_posterior``; background labels lie outside those
        discs where it is below ``bg_posterior``.
    free_posterior : float
        Gated rule: pixels whose posterior exceeds this are nucleus anywhere, in connected
        pieces of at least 30 pixels (1 turns this off).
    posterior : ndarray, shape (H, W), optional
        A colour posterior already computed by :func:`colour_posterior` for these centres.
    background : {"colour", "tissue"}
        Gated rule: "colour" labels background only where the colour posterior is below
        ``bg_posterior`` (in practice mostly white space); "tissue" adds the pixels that
        :func:`tissue_background` finds (stroma, cytoplasm, red cells), outside the discs.
    bg_quantile : float
        The ``quantile`` of :func:`tissue_background`.
    fill_holes : bool
        Gated rule: fill the holes of the nucleus-coloured map before labelling, up to
        ``window ** 2 / 4`` pixels (the pale interior of a vesicular nucleus enclosed by its
        dark rim), so that a centre on such an interior labels the whole nucleus.
    nucleus : {"posterior", "hematoxylin"}
        Gated rule: what makes a pixel nucleus-coloured: the colour posterior above
        ``fg_posterior`` (free pieces above ``free_posterior``), or the stretched
        hematoxylin above Otsu's level plus ``h_offset`` (free pieces above Otsu plus
        ``h_free``; with ``free_posterior >= 1`` there are none).
    h_offset, h_free : float
        Offsets of the hematoxylin rule, on the stretched [0, 1] scale.
    h_levels : (float, float, float), optional
        :func:`hematoxylin_levels` fixed for several images (a slide); by default this
        image's own.

    Returns
    -------
    ndarray, shape (H, W), int8

    Raises
    ------
    InputError
        For mismatched shapes, an unknown rule or a non-positive window.
    """
    s = _check_map(response, "response")
    c = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    h, w = s.shape
    if rule not in ("paper", "gated"):
        raise InputError(f"rule = {rule!r}: expected 'paper' or 'gated'")
    if background not in ("colour", "tissue"):
        raise InputError(f"background = {background!r}: expected 'colour' or 'tissue'")
    if nucleus not in ("posterior", "hematoxylin"):
        raise InputError(f"nucleus = {nucleus!r}: expected 'posterior' or 'hematoxylin'")
    if window < 1:
        raise InputError(f"window = {window!r}: expected a positive integer")
    out = np.full((h, w), -1, dtype=np.int8)
    half = int(window) // 2
    if rule == "paper":
        out[s < t1] = 0
        for y, x in c:
            y0, y1, x0, x1 = (
                max(0, y - half),
                min(h, y + half + 1),
                max(0, x - half),
                min(w, x + half + 1),
            )
            win = s[y0:y1, x0:x1]
            sub = out[y0:y1, x0:x1]
            sub[win > ratio * s[y, x]] = 1
        return out
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[:2] != s.shape:
        raise InputError(f"image: shape {img.shape} does not match the response {s.shape}")
    if len(c) == 0:
        return out
    r = max(1.0, radius * window)
    dist = _centre_distance((h, w), c)
    post = (
        posterior
        if posterior is not None
        else colour_posterior(img, c, scores, radius=r, dist=dist)
    )
    if post is None:  # nothing to learn colours from: fall back to the paper's rule
        return pseudo_mask(image, s, c, window=window, rule="paper", t1=t1, ratio=ratio)
    disc = dist <= r
    if nucleus == "hematoxylin":
        dark, free_map = _hematoxylin_maps(img, h_levels, (h_offset, h_free))
    else:
        dark, free_map = post > fg_posterior, post > free_posterior
    if fill_holes:  # a pale interior enclosed by a dark rim, up to a nucleus in size
        dark = _fill_small_holes(dark, max_area=window * window / 4.0)
    fg = disc & dark
    lab, _ = ndi.label(fg)
    ids = np.unique(lab[c[:, 0], c[:, 1]])
    fg = np.isin(lab, ids[ids > 0])
    if free_posterior < 1.0:
        if fill_holes:
            free_map = _fill_small_holes(free_map, max_area=window * window / 4.0)
        free, n_free = ndi.label(free_map)
        if n_free:
            sizes = np.bincount(free.ravel())
            big = sizes >= 30
            big[0] = False
            fg |= big[free]
    bg = post < bg_posterior
    if background == "tissue":
        seeds = _nucleus_seeds((h, w), c, scores)
        tissue = tissue_background(img, seeds, dist > 2.0 * r, quantile=bg_quantile)
        if tissue is not None:
            # the rim of anything nucleus-coloured is ambiguous: two pixels stay unknown
            rim = ndi.binary_dilation(dark | fg, structure=np.ones((3, 3), bool), iterations=2)
            bg |= tissue & ~rim
    out[bg & ~disc & ~fg] = 0
    out[fg] = 1
    return out
