"""MoNuSeg / Aperio ImageScope XML polygon annotations to instance masks.

The challenge distributes its annotations as Aperio XML: one ``<Region>`` per nucleus, each
with ``<Vertex X=".." Y=".."/>`` outline points in image pixels.  The organisers turned them
into masks with MATLAB's ``poly2mask``, whose coordinates are 1-based with pixel centres at
integers: pixel ``(row r, column c)`` (0-based) has its centre at ``(X, Y) = (c + 1, r + 1)``.

:func:`xml_to_labels` reproduces that conversion: a pixel belongs to a nucleus when its
centre lies inside the polygon, with ``poly2mask``'s rule for centres exactly on an edge
(such centres are frequent: most vertices are integers).  Regions are numbered 1..N in file
order; where regions overlap, the earlier one keeps the pixel.  See ``docs/formats.md`` for
the measured agreement with the official masks.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mcf_fast.errors import FormatError, InputError

__all__ = ["read_aperio_xml", "xml_to_labels", "rasterise_polygons"]


def read_aperio_xml(path: str | os.PathLike) -> list[np.ndarray]:
    """Read the region outlines of an Aperio XML annotation file.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    list of ndarray, each shape (M, 2), float64
        One outline per ``<Region>`` in file order, as ``(y, x)`` in pixel-index
        coordinates: the file's 1-based ``(Y - 1, X - 1)``; regions with fewer
        than 3 vertices are kept (they rasterise to few or no pixels).

    Raises
    ------
    FormatError
        If the file is not XML, has no ``<Region>`` or a vertex lacks a numeric X or Y.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such annotation file")
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as exc:
        raise FormatError(f"{p}: not an XML file ({exc})") from exc
    regions = root.findall(".//Region")
    if not regions:
        raise FormatError(f"{p}: no <Region> elements (expected Aperio/MoNuSeg XML)")
    out = []
    for i, reg in enumerate(regions):
        verts = reg.findall("./Vertices/Vertex")
        try:
            yx = -1.0 + np.array(
                [(float(v.attrib["Y"]), float(v.attrib["X"])) for v in verts], dtype=np.float64
            ).reshape(-1, 2)
        except (KeyError, ValueError) as exc:
            raise FormatError(f"{p}: region {i} has a vertex without numeric X/Y") from exc
        out.append(yx)
    return out


def rasterise_polygons(polys: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise (y, x) outlines (pixel-index coordinates) the way ``poly2mask`` does.

    The rule (``poly2mask``'s, re-implemented here): each vertex is snapped to a grid 5x
    finer than the pixels, ``s = round(5 * (V - 0.5) + 1)`` for the 1-based coordinate
    ``V = v + 1`` (round half away from zero); the
    outline is traced between snapped vertices as an integer line (stepping along the
    longer axis, the other coordinate rounded, computed from the left/lower endpoint); each
    step of the trace across a sub-grid line that holds pixel centres is an edge crossing,
    placed at the smaller of the two sub-grid positions of a diagonal step; a pixel is inside
    when an odd number of crossings lie before its centre along the scan.

    The scan runs along image rows (for each row of pixel centres, the crossings along
    it): the official MoNuSeg masks are reproduced with the roles of X and Y exchanged
    relative to MATLAB's column scan (as if ``poly2mask`` had been called with Y and X
    swapped and the result transposed); the two differ only for centres lying exactly on a
    diagonal edge.  Measured on the 14 test images: 17-241
    differing pixels per 1000x1000 image, foreground IoU >= 0.9989 (worst
    TCGA-CU-A0YN-01A-02-BSB); the residue sits on outlines with fractional vertices.  Plain
    pixel-centre tests do worse: ``skimage.draw.polygon`` on ``(Y - 1, X - 1)`` gives IoU
    0.90-0.93, and with a tiny shift towards +Y, +X about 0.991.

    Parameters
    ----------
    polys : list of ndarray, each (M, 2)
        ``(y, x)`` vertices in pixel-index coordinates, as :func:`read_aperio_xml` returns
        them (the file's 1-based ``(Y - 1, X - 1)``).
    shape : (int, int)

    Returns
    -------
    ndarray, shape `shape`, int32
        Region i (0-based) labelled i + 1; the earlier region keeps overlapping pixels.
    """
    h, w = (int(s) for s in shape)
    out = np.zeros((h, w), dtype=np.int32)
    for i, q in enumerate(polys, start=1):
        q = np.asarray(q, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] != 2 or len(q) == 0:
            continue
        inside = _poly2mask_box(q[:, 0], q[:, 1], w, h)
        if inside is None:
            continue
        c0, r0, m = inside
        m = m.T
        view = out[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]]
        view[m & (view == 0)] = i
    return out


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _trace(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer points along the closed outline through integer vertices (x, y)."""
    x1, y1, x2, y2 = x[:-1], y[:-1], x[1:], y[1:]
    dx, dy = x2 - x1, y2 - y1
    n = np.maximum(np.abs(dx), np.abs(dy)).astype(np.int64) + 1
    seg = np.repeat(np.arange(len(n)), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # 0..n-1 within each segment
    along_x = np.abs(dx) >= np.abs(dy)
    step_x = np.sign(dx)
    step_y = np.sign(dy)
    xs = np.empty(len(seg))
    ys = np.empty(len(seg))
    ax = along_x[seg]
    # stepping along x: x walks from x1 to x2; y from the left endpoint's line equation
    xl = np.where(dx >= 0, x1, x2)
    yl = np.where(dx >= 0, y1, y2)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = (np.where(dx >= 0, y2, y1) - yl) / (np.where(dx >= 0, x2, x1) - xl)
        yb = np.where(dy >= 0, y1, y2)
        xb = np.where(dy >= 0, x1, x2)
        my = (np.where(dy >= 0, x2, x1) - xb) / (np.where(dy >= 0, y2, y1) - yb)
    sa = seg[ax]
    xs[ax] = x1[sa] + step_x[sa] * k[ax]
    ys[ax] = _round_half_away(yl[sa] + mx[sa] * (xs[ax] - xl[sa]))
    degenerate = (dx == 0) & (dy == 0)
    ys[ax & degenerate[seg]] = y1[seg[ax & degenerate[seg]]]
    sb = seg[~ax]
    ys[~ax] = y1[sb] + step_y[sb] * k[~ax]
    xs[~ax] = _round_half_away(xb[sb] + my[sb] * (ys[~ax] - yb[sb]))
    return xs, ys


def _poly2mask_box(
    x: np.ndarray, y: np.ndarray, h: int, w: int
) -> tuple[int, int, np.ndarray] | None:
    """Inside-mask of one polygon, scanning down the columns, within its bounding box.

    ``x`` and ``y`` are pixel-index vertex coordinates (x: the column axis of an (h, w) grid);
    returns (row0, col0, bool mask of the box) or None when no pixel is inside.
    """
    if x[-1] != x[0] or y[-1] != y[0]:
        x = np.append(x, x[0])
        y = np.append(y, y[0])
    # 1-based V = v + 1, so V - 0.5 = v + 0.5 (the same double as MATLAB's V - 0.5)
    sx = _round_half_away(5.0 * (x + 0.5) + 1.0)
    sy = _round_half_away(5.0 * (y + 0.5) + 1.0)
    tx, ty = _trace(sx, sy)
    d = np.diff(tx)
    idx = np.flatnonzero(d)
    if idx.size == 0:
        return None
    xe = tx[idx] - (d[idx] < 0)
    ye = np.minimum(ty[idx], ty[idx + 1])
    keep = (xe + 2) % 5 == 0
    col = ((xe[keep] + 2) // 5).astype(np.int64) - 1  # 0-based pixel column
    row = np.ceil((ye[keep] + 2) / 5).astype(np.int64) - 1  # 0-based first row toggled
    ok = (col >= 0) & (col < w) & (row < h)
    col, row = col[ok], np.maximum(row[ok], 0)
    if col.size == 0:
        return None
    r0, r1 = int(row.min()), int(row.max())
    c0, c1 = int(col.min()), int(col.max())
    toggles = np.zeros((r1 - r0 + 1, c1 - c0 + 1), dtype=np.int64)
    np.add.at(toggles, (row - r0, col - c0), 1)
    inside = (np.cumsum(toggles, axis=0) % 2).astype(bool)
    # a column whose crossings were cut off below the image stays inside to the bottom
    if inside[-1].any() and r1 < h - 1:
        tail = np.repeat(inside[-1:], h - 1 - r1, axis=0)
        inside = np.concatenate([inside, tail], axis=0)
    return r0, c0, inside


def xml_to_labels(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels from an Aperio XML file, as the MoNuSeg organisers' converter makes them.

    Parameters
    ----------
    path : str or PathLike
        The XML file.
    shape : (int, int)
        (H, W) of the image.

    Returns
    -------
    ndarray, shape (H, W), int32
        0 = background, region i (file order) = i + 1.

    Raises
    ------
    FormatError
        See :func:`read_aperio_xml`.
    """
    return rasterise_polygons(read_aperio_xml(path), shape)
