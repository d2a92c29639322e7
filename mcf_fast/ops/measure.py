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
        If ``centres`` does not have one row per id or ``probability`` has another shape.
    """
    from scipy import ndimage as ndi
    from skimage.color import hed_from_rgb
    from skimage.measure import find_contours

    lab = np.asarray(labels)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    cen = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if cen.shape[0] != n:
        raise InputError(f"centres: expected {n} rows, got {cen.shape[0]}")
    h, w = lab.shape
    if probability is not None and np.shape(probability) != (h, w):
        raise InputError(
            f"probability: shape {np.shape(probability)} does not match labels {lab.shape}"
        )
    oy, ox = origin
    lab32 = lab.astype(np.int32, copy=False)
    boxes = ndi.find_objects(lab32, max_label=n) if n else []
    moments = _moments(lab32, n)
    area = moments[0]
    safe = np.maximum(area, 1.0)
    com = np.stack([moments[1] / safe, moments[2] / safe], axis=1)
    major, minor, ecc = _ellipse(moments)

    def mean_of(values: np.ndarray) -> np.ndarray:
        sums = np.bincount(lab32.ravel(), weights=values.ravel(), minlength=n + 1)[1 : n + 1]
        return np.where(area > 0, sums / safe, np.nan)

    means = [mean_of(rgb[:, :, ch].astype(np.float64)) for ch in range(3)] if n else []
    if n:
        od = -np.log10((rgb[:, :, :3].astype(np.float64) + 1.0) / 256.0)
        hed = od @ hed_from_rgb
        od_h, od_e = mean_of(hed[:, :, 0]), mean_of(hed[:, :, 1])
        prob = (
            mean_of(np.asarray(probability, np.float64))
            if probability is not None
            else np.full(n, np.nan)
        )
    else:
        means = [np.zeros(0)] * 3
        od_h = od_e = prob = np.zeros(0)
    edges = np.zeros(4, bool)  # top, left, bottom, right read edges inside the slide
    if read_box is not None and slide_shape is not None:
        ry0, rx0, ry1, rx1 = read_box
        edges[:] = (ry0 > 0, rx0 > 0, ry1 < slide_shape[0], rx1 < slide_shape[1])
    clipped = np.zeros(n, bool)
    perim = np.zeros(n)
    solidity = np.ones(n)
    rings: list[np.ndarray] = []
    for j in range(n):
        box = boxes[j] if j < len(boxes) else None
        if box is None:  # an id with no pixels: outline the centre pixel
            cy, cx = np.floor(cen[j] + 0.5) - (oy, ox)
            ring = np.array(
                [[cy, cx], [cy, cx + 1], [cy + 1, cx + 1], [cy + 1, cx], [cy, cx]], dtype=np.float64
            )
        else:
            sy, sx = box
            clipped[j] = (
                (edges[0] and sy.start == 0)
                or (edges[1] and sx.start == 0)
                or (edges[2] and sy.stop == h)
                or (edges[3] and sx.stop == w)
            )
            m = np.pad(lab[sy, sx] == j + 1, 1).astype(np.float32)
            contours = find_contours(m, 0.5)
            ring = max(contours, key=len) if contours else np.zeros((0, 2))
            # find_contours works on pixel centres; shift to corner coordinates
            ring = ring + (sy.start - 1 + 0.5, sx.start - 1 + 0.5)
            ring = _drop_collinear(ring)
            if len(ring) and not np.array_equal(ring[0], ring[-1]):
                ring = np.vstack([ring, ring[:1]])
        seg = np.diff(ring, axis=0)
        perim[j] = float(np.hypot(seg[:, 0], seg[:, 1]).sum()) if len(seg) else 0.0
        solidity[j] = _solidity(ring)
        rings.append(ring)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rings]) if n else []
    xy = np.concatenate(rings) if rings else np.zeros((0, 2))
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


def _moments(lab: np.ndarray, n: int) -> np.ndarray:
    """Raw moments (count, sum y, sum x, sum yy, sum xx, sum xy) of labels 1..n, (6, n)."""
    out = np.zeros((6, n))
    if n == 0:
        return out
    flat = lab.ravel()
    keep = flat > 0
    lk = flat[keep]
    yy, xx = np.nonzero(lab > 0)  # C order, as flat[keep]
    y = yy.astype(np.float64)
    x = xx.astype(np.float64)
    for k, wts in enumerate((None, y, x, y * y, x * x, y * x)):
        out[k] = np.bincount(lk, weights=wts, minlength=n + 1)[1 : n + 1]
    return out


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


def _polygon_area(ring: np.ndarray) -> float:
    """Unsigned shoelace area of a ring of (y, x) vertices (closed or not)."""
    if len(ring) < 3:
        return 0.0
    y, x = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2.0


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (Andrew's monotone chain) of 2-D points, counter-clockwise, not closed."""
    pts = sorted({(float(a), float(b)) for a, b in points})
    if len(pts) < 3:
        return np.asarray(pts, np.float64).reshape(-1, 2)

    def half(seq):
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2:
                (ay, ax), (by, bx) = chain[-2], chain[-1]
                if (by - ay) * (p[1] - ax) - (bx - ax) * (p[0] - ay) > 1e-12:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(reversed(pts))
    return np.asarray(lower[:-1] + upper[:-1], np.float64)


def _solidity(ring: np.ndarray) -> float:
    """Area of a ring over the area of its convex hull (1 when degenerate)."""
    area = _polygon_area(ring)
    hull = _polygon_area(_convex_hull(ring)) if len(ring) >= 3 else 0.0
    return area / hull if hull > 0 else 1.0


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove the vertices of a closed ring that lie on a straight run (exact, vectorised)."""
    r = ring[:-1] if len(ring) > 1 and np.array_equal(ring[0], ring[-1]) else ring
    if len(r) < 4:
        return ring
    d_in = r - np.roll(r, 1, axis=0)
    d_out = np.roll(r, -1, axis=0) - r
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    keep = np.abs(cross) > 1e-9
    return r[keep] if keep.sum() >= 3 else r
