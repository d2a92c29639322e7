"""Per-nucleus measurements of an instance-label map: the table behind the slide outputs.

:func:`measure_nuclei` gives one row per nucleus (centre, centroid, area, perimeter, fitted
ellipse, solidity, mean colour and optical densities, mean probability) in level-0 pixels
and microns; :mod:`mcf_fast.io.export` writes the table as GeoJSON, CSV and Parquet.
"""

from __future__ import annotations

import numpy as np

from mcf_fast.errors import InputError

__all__ = ["NucleusTable", "measure_nuclei"]

NucleusTable = dict[str, np.ndarray]


def measure_nuclei(
    labels: np.ndarray,
    rgb: np.ndarray,
    *,
    ids: np.ndarray,
    centres: np.ndarray,
    origin: tuple[int, int],
    downsample: float = 1.0,
    mpp: float | None = None,
    slide_shape: tuple[int, int] | None = None,
    read_box: tuple[int, int, int, int] | None = None,
    probability: np.ndarray | None = None,
) -> NucleusTable:
    """Measurements and outline polygons of the nuclei of one tile (or one whole image).

    Parameters
    ----------
    labels : ndarray, shape (h, w), integer
        Compact labels over the tile's read region: label ``j`` is nucleus ``ids[j - 1]``.
    rgb : ndarray, shape (h, w, 3), uint8
        The pixels the labels were predicted on.
    ids : ndarray, shape (n,), int64
        Slide-wide ids.
    centres : ndarray, shape (n, 2)
        Detected centres (y, x), pixel-index coordinates of the processed level.
    origin : tuple of int
        Slide-level (y, x) of ``labels[0, 0]``.
    downsample : float
        Level-0 pixels per level pixel; coordinates and lengths are scaled to level 0.
    mpp : float, optional
        Microns per pixel at the processed level (for the µm measurements; NaN without it).
    slide_shape, read_box : optional
        The level's (H, W) and the tile's read box; a nucleus touching a read-box edge that
        is not a slide edge is flagged ``clipped`` (its outline may be cut by the tile).
    probability : ndarray, shape (h, w), optional
        Nucleus probability of each pixel (``mean_probability``; NaN without it).

    Returns
    -------
    dict of ndarray
        One entry per nucleus for each of :data:`~mcf_fast.io.export.CSV_COLUMNS` but
        ``tile`` (coordinates in level-0 pixels with pixel corners on integers; ``*_px``
        lengths and areas in level-0 pixels), and the outlines as ``poly_xy`` (M, 2) float64
        level-0 (x, y) vertices with ``poly_offsets`` (n + 1,) so that ring ``j`` is
        ``poly_xy[poly_offsets[j]:poly_offsets[j + 1]]`` (closed: first vertex repeated at
        the end).  Outlines run through the midpoints between pixel centres (the 0.5
        iso-line of the nucleus' mask), with collinear vertices removed.

        Shape: ``major_axis`` and ``minor_axis`` are the lengths of the ellipse with the
        same second moments as the nucleus' pixels (4 sqrt of the eigenvalues of their
        covariance, as scikit-image's ``regionprops``); ``eccentricity`` is that ellipse's,
        ``sqrt(1 - minor^2 / major^2)`` (0 for a disk or a single pixel); ``solidity`` is
        the outline polygon's area over the area of its convex hull (1 for a convex
        nucleus).  Stain: ``mean_od_h`` and ``mean_od_e`` are the mean hematoxylin and
        eosin optical densities (base-10 OD of ``(I + 1) / 256`` per channel, unmixed with
        the Ruifrok-Johnston H&E-DAB vectors of :data:`skimage.color.hed_from_rgb`).

    Raises
    ------
    InputError
        If ``centres`` does not have one row per id, ``rgb`` is not uint8 pixels of the
        labels' shape or ``probability`` has another shape.
    """
    from skimage.color import hed_from_rgb

    lab = np.asarray(labels)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    cen = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if cen.shape[0] != n:
        raise InputError(f"centres: expected {n} rows, got {cen.shape[0]}")
    h, w = lab.shape
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[:2] != (h, w) or rgb.shape[2] < 3:
        raise InputError(
            f"rgb: expected uint8 pixels of shape ({h}, {w}, 3) like the labels, "
            f"got {rgb.dtype} {rgb.shape}"
        )
    if probability is not None and np.shape(probability) != (h, w):
        raise InputError(
            f"probability: shape {np.shape(probability)} does not match labels {lab.shape}"
        )
    oy, ox = origin
    lab32 = np.ascontiguousarray(lab, dtype=np.int32)
    sums = _label_sums(lab32, rgb, probability, n)
    area = sums[:, 0]
    safe = np.maximum(area, 1.0)
    com = np.stack([sums[:, 1] / safe, sums[:, 2] / safe], axis=1)
    major, minor, ecc = _ellipse(sums[:, :6].T)
    mean = np.where(area[:, None] > 0, sums[:, 6:] / safe[:, None], np.nan)
    means = [mean[:, 0], mean[:, 1], mean[:, 2]]
    # the unmixing is linear: unmix the per-channel means of the optical densities
    od_h = mean[:, 3:6] @ hed_from_rgb[:, 0]
    od_e = mean[:, 3:6] @ hed_from_rgb[:, 1]
    prob = mean[:, 6] if probability is not None else np.full(n, np.nan)
    edges = np.zeros(4, bool)  # top, left, bottom, right read edges inside the slide
    if read_box is not None and slide_shape is not None:
        ry0, rx0, ry1, rx1 = read_box
        edges[:] = (ry0 > 0, rx0 > 0, ry1 < slide_shape[0], rx1 < slide_shape[1])
    xy, offsets, perim, solidity, box = _outlines(lab32, n, cen - (oy, ox))
    clipped = (
        (edges[0] & (box[:, 0] == 0))
        | (edges[1] & (box[:, 1] == 0))
        | (edges[2] & (box[:, 2] == h))
        | (edges[3] & (box[:, 3] == w))
    ) & (area > 0)
    xy = (xy + (oy, ox))[:, ::-1] * downsample  # level-0 (x, y)
    m = float("nan") if mpp is None else float(mpp)
    ds = float(downsample)
    return {
        "id": ids,
        "y": (cen[:, 0] + 0.5) * ds,
        "x": (cen[:, 1] + 0.5) * ds,
        "centroid_y": (com[:, 0] + oy + 0.5) * ds,
        "centroid_x": (com[:, 1] + ox + 0.5) * ds,
        "area_px": area * ds * ds,
        "area_um2": area * m * m,
        "perimeter_px": perim * ds,
        "perimeter_um": perim * m,
        "major_axis_px": major * ds,
        "minor_axis_px": minor * ds,
        "major_axis_um": major * m,
        "minor_axis_um": minor * m,
        "eccentricity": ecc,
        "solidity": solidity,
        "mean_r": means[0],
        "mean_g": means[1],
        "mean_b": means[2],
        "mean_od_h": od_h,
        "mean_od_e": od_e,
        "mean_probability": prob,
        "clipped": clipped,
        "poly_xy": np.ascontiguousarray(xy, dtype=np.float64),
        "poly_offsets": offsets,
    }


def _label_sums(lab: np.ndarray, rgb: np.ndarray, prob: np.ndarray | None, n: int) -> np.ndarray:
    """Per-label sums (n, 13) of :func:`~mcf_fast.kernels.measure.label_sums_kernel`."""
    from mcf_fast.kernels.measure import label_sums_kernel

    out = np.zeros((n + 1, 13))
    if n:
        od_of = -np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
        p = np.zeros((1, 1)) if prob is None else np.ascontiguousarray(prob, np.float64)
        rgb3 = np.ascontiguousarray(rgb[:, :, :3])
        label_sums_kernel(lab, rgb3, od_of, p, prob is not None, n, out)
    return out[1:]


def _ellipse(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Major and minor axis lengths and eccentricity of the moment ellipses."""
    m0, sy, sx, syy, sxx, sxy = moments
    safe = np.maximum(m0, 1.0)
    cy, cx = sy / safe, sx / safe
    vyy = np.maximum(syy / safe - cy * cy, 0.0)
    vxx = np.maximum(sxx / safe - cx * cx, 0.0)
    vxy = sxy / safe - cy * cx
    half = (vyy + vxx) / 2.0
    root = np.sqrt(((vyy - vxx) / 2.0) ** 2 + vxy * vxy)
    l1 = half + root
    l2 = np.maximum(half - root, 0.0)
    major = 4.0 * np.sqrt(l1)
    minor = 4.0 * np.sqrt(l2)
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0.0, 1.0)), 0.0)
    return major, minor, ecc


def _outlines(
    lab: np.ndarray, n: int, centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Closed outline rings of labels 1..n (tile (y, x) corner coordinates), their offsets,
    perimeters, solidities and bounding boxes (y0, x0, y1, x1; zeros for an empty label).

    Each ring is the label's longest boundary cycle (its outer boundary; of a label in
    pieces, the piece with the longest one), see :mod:`mcf_fast.kernels.outline`.  A label
    with no pixels gets the square of the pixel at its centre.
    """
    from mcf_fast.kernels.measure import (
        finish_rings_kernel,
        longest_boundaries_kernel,
        trace_kernel,
    )

    h, w = lab.shape
    length = np.zeros(n + 1, np.int64)
    start = np.zeros((n + 1, 3), np.int64)
    box = np.zeros((n + 1, 4), np.int64)
    if n:
        visited = np.zeros((h + 1, w + 1, 4), np.uint8)
        longest_boundaries_kernel(np.ascontiguousarray(lab), n, visited, length, start, box)
    raw_offsets = np.zeros(n + 1, np.int64)
    raw_offsets[1:] = np.cumsum(length[1:])
    raw = np.empty((int(raw_offsets[-1]), 2))
    rings = np.empty((len(raw) + n, 2))
    ring_len = np.zeros(n, np.int64)
    perimeter = np.zeros(n)
    solidity = np.ones(n)
    if n:
        trace_kernel(np.ascontiguousarray(lab), n, length, start, raw_offsets, raw)
        finish_rings_kernel(raw, raw_offsets, w, rings, ring_len, perimeter, solidity)
    parts = [rings[raw_offsets[j] + j : raw_offsets[j] + j + ring_len[j]] for j in range(n)]
    for j in np.flatnonzero(length[1:] == 0):  # an id with no pixels: its centre pixel
        cy, cx = np.floor(centres[j] + 0.5)
        parts[j] = np.array(
            [[cy, cx], [cy, cx + 1], [cy + 1, cx + 1], [cy + 1, cx], [cy, cx]], np.float64
        )
        perimeter[j], solidity[j] = 4.0, 1.0
        box[j + 1] = 0
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in parts]) if n else []
    xy = np.concatenate(parts) if parts else np.zeros((0, 2))
    return xy, offsets, perimeter, solidity, box[1:]
