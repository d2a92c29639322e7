"""QuPath GeoJSON in: points and polygons of annotated nuclei.

QuPath writes image coordinates in pixels with the origin at the top-left corner of the
top-left pixel, so pixel ``(row r, column c)`` covers ``[c, c + 1) x [r, r + 1)`` and its
centre is ``(c + 0.5, r + 0.5)``.  mcf_fast uses pixel-index coordinates (the centre of pixel
``(r, c)`` is ``(r, c)``); the readers here convert by subtracting 0.5 and swapping to
``(y, x)`` order.

Accepted documents: a ``FeatureCollection``, a list of features (QuPath's "export as
array"), a single ``Feature``, or a bare geometry.  Geometry types: ``Point``,
``MultiPoint``, ``Polygon``, ``MultiPolygon`` (other types are ignored).  Polygon holes
(interior rings) are ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import FormatError, InputError

__all__ = ["read_geojson_points", "read_geojson_polygons", "polygons_to_labels", "polygon_centroid"]


def _load(path: str | os.PathLike) -> tuple[Path, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such GeoJSON file")
    try:
        return p, json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{p}: not a JSON/GeoJSON file ({exc})") from exc


def _geometries(doc: Any, p: Path) -> Iterator[dict]:
    if isinstance(doc, list):
        for item in doc:
            yield from _geometries(item, p)
        return
    if not isinstance(doc, dict):
        raise FormatError(f"{p}: expected GeoJSON objects, found {type(doc).__name__}")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        yield from _geometries(doc.get("features", []), p)
    elif kind == "Feature":
        geom = doc.get("geometry")
        if geom is not None:
            yield from _geometries(geom, p)
    elif kind == "GeometryCollection":
        yield from _geometries(doc.get("geometries", []), p)
    elif isinstance(kind, str):
        yield doc
    else:
        raise FormatError(f'{p}: a GeoJSON object has no "type"')


def _ring(coords: Any, p: Path) -> np.ndarray:
    a = np.asarray(coords, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2 or not np.all(np.isfinite(a)):
        raise FormatError(f"{p}: malformed coordinates {str(coords)[:80]}")
    yx = a[:, 1::-1] - 0.5  # (x, y) corner-origin -> (y, x) pixel-index
    if len(yx) > 1 and np.array_equal(yx[0], yx[-1]):
        yx = yx[:-1]  # GeoJSON rings repeat the first vertex at the end
    return yx


def _polygons(doc: Any, p: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    points: list[np.ndarray] = []
    polys: list[np.ndarray] = []
    for g in _geometries(doc, p):
        kind, coords = g.get("type"), g.get("coordinates")
        try:
            if kind == "Point":
                points.append(_ring([coords], p)[0])
            elif kind == "MultiPoint":
                points.extend(_ring(coords, p))
            elif kind == "Polygon":
                if coords:
                    polys.append(_ring(coords[0], p))
            elif kind == "MultiPolygon":
                polys.extend(_ring(poly[0], p) for poly in coords if poly)
        except (TypeError, IndexError, ValueError) as exc:
            raise FormatError(f"{p}: malformed {kind} geometry ({exc})") from exc
    return points, polys


def polygon_centroid(poly: np.ndarray) -> np.ndarray:
    """Area centroid (y, x) of a simple polygon; the vertex mean when its area is zero.

    Parameters
    ----------
    poly : ndarray, shape (M, 2)
        (y, x) vertices, not closed (first vertex not repeated).
    """
    y, x = poly[:, 0], poly[:, 1]
    y1, x1 = np.roll(y, -1), np.roll(x, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2.0
    if abs(area) < 1e-12:
        return poly.mean(axis=0)
    cy = ((y + y1) * cross).sum() / (6.0 * area)
    cx = ((x + x1) * cross).sum() / (6.0 * area)
    return np.array([cy, cx])


def read_geojson_points(path: str | os.PathLike) -> np.ndarray:
    """Nucleus centres from a QuPath GeoJSON file.

    Point geometries give their coordinates; polygons give their area centroid.

    Returns
    -------
    ndarray, shape (N, 2), float64
        (y, x) in pixel-index coordinates (see the module docstring), points first, then
        polygon centroids, each in file order.

    Raises
    ------
    FormatError
        If the file is not GeoJSON or holds no point or polygon geometry.
    """
    p, doc = _load(path)
    points, polys = _polygons(doc, p)
    pts = points + [polygon_centroid(q) for q in polys]
    if not pts:
        raise FormatError(f"{p}: no Point, MultiPoint or Polygon geometries found")
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def read_geojson_polygons(path: str | os.PathLike) -> list[np.ndarray]:
    """Polygon outlines (exterior rings) from a QuPath GeoJSON file.

    Returns
    -------
    list of ndarray, each shape (M, 2), float64
        (y, x) vertices in pixel-index coordinates, in file order.

    Raises
    ------
    FormatError
        If the file is not GeoJSON or holds no polygons.
    """
    p, doc = _load(path)
    _, polys = _polygons(doc, p)
    if not polys:
        raise FormatError(f"{p}: no Polygon or MultiPolygon geometries found")
    return polys


def polygons_to_labels(polys: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons into instance labels 1..N (in order).

    A pixel belongs to a polygon when its centre lies inside (``skimage.draw.polygon``);
    where polygons overlap, the earlier one keeps the pixel.

    Parameters
    ----------
    polys : sequence of ndarray, each (M, 2)
        (y, x) vertices in pixel-index coordinates.
    shape : (int, int)

    Returns
    -------
    ndarray, shape `shape`, int32
    """
    from skimage.draw import polygon

    out = np.zeros(shape, dtype=np.int32)
    for i, q in enumerate(polys, start=1):
        q = np.asarray(q, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] != 2:
            raise InputError(f"polygon {i - 1}: expected (M, 2) vertices, got {q.shape}")
        rr, cc = polygon(q[:, 0], q[:, 1], shape=shape)
        free = out[rr, cc] == 0
        out[rr[free], cc[free]] = i
    return out
