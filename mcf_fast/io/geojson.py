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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import FormatError, InputError

__all__ = [
    "REGION_MODES",
    "GeoObject",
    "read_geojson_objects",
    "read_geojson_points",
    "read_geojson_polygons",
    "polygons_to_labels",
    "polygon_centroid",
    "template_points",
]

#: what :func:`template_points` does with polygons larger than a nucleus
REGION_MODES = ("error", "skip", "centroid")
UNCLASSIFIED = "unclassified"


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


@dataclass(frozen=True)
class GeoObject:
    """One geometry of a QuPath export with what QuPath says about it.

    Attributes
    ----------
    index : int
        Position of its feature in the file (0-based).
    object_type : str
        ``properties.objectType`` ("annotation", "detection", "cell", ...; "" if absent).
    classification : str or None
        ``properties.classification.name`` (None when unclassified).
    kind : str
        "point" or "polygon".
    yx : ndarray, shape (M, 2)
        Points (one row per point of a MultiPoint) or the exterior ring, pixel-index (y, x).
    """

    index: int
    object_type: str
    classification: str | None
    kind: str
    yx: np.ndarray

    @property
    def label(self) -> str:
        return self.classification if self.classification is not None else UNCLASSIFIED


def _class_name(props: dict) -> str | None:
    c = props.get("classification")
    if isinstance(c, dict):
        c = c.get("name")
    if isinstance(c, list):  # a derived class, e.g. ["Tumor", "Positive"]
        c = ": ".join(str(v) for v in c)
    return str(c) if c not in (None, "") else None


def _features(doc: Any, p: Path) -> Iterator[tuple[dict, dict]]:
    """(geometry, properties) of every feature or bare geometry, in file order."""
    if isinstance(doc, list):
        for item in doc:
            yield from _features(item, p)
        return
    if not isinstance(doc, dict):
        raise FormatError(f"{p}: expected GeoJSON objects, found {type(doc).__name__}")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        yield from _features(doc.get("features", []), p)
    elif kind == "Feature":
        props = doc.get("properties") or {}
        geom = doc.get("geometry")
        # a QuPath cell: its nucleus is the nucleus geometry, not the cell outline
        nucleus = props.get("nucleusGeometry") if isinstance(props, dict) else None
        if isinstance(nucleus, dict) and nucleus.get("type"):
            geom = nucleus
        if geom is not None:
            yield geom, props if isinstance(props, dict) else {}
    elif isinstance(kind, str):
        yield doc, {}
    else:
        raise FormatError(f'{p}: a GeoJSON object has no "type"')


def read_geojson_objects(path: str | os.PathLike) -> list[GeoObject]:
    """Every point and polygon of a QuPath GeoJSON export, with its object type and class.

    A ``cell`` object stands for its ``nucleusGeometry`` when it has one.

    Returns
    -------
    list of GeoObject
        In file order; a MultiPolygon gives one object per polygon.

    Raises
    ------
    FormatError
        If the file is not GeoJSON or a geometry is malformed.
    """
    p, doc = _load(path)
    out: list[GeoObject] = []
    for i, (geom, props) in enumerate(_features(doc, p)):
        otype = str(props.get("objectType") or props.get("object_type") or "")
        cls = _class_name(props)
        for g in _geometries(geom, p):
            points, polys = _polygons(g, p)
            if points:
                out.append(GeoObject(i, otype, cls, "point", np.asarray(points).reshape(-1, 2)))
            out.extend(GeoObject(i, otype, cls, "polygon", q) for q in polys)
    return out


def _polygon_area(poly: np.ndarray) -> float:
    y, x = poly[:, 0], poly[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2.0


def _class_list(objs: Sequence[GeoObject]) -> str:
    counts: dict[str, int] = {}
    for o in objs:
        counts[o.label] = counts.get(o.label, 0) + (len(o.yx) if o.kind == "point" else 1)
    return ", ".join(f"{k!r} ({v})" for k, v in sorted(counts.items()))


def template_points(
    path: str | os.PathLike,
    *,
    class_name: str | None = None,
    max_area: float | None = None,
    regions: str = "error",
) -> np.ndarray:
    """Nucleus centres for templates from a QuPath export, checked for what does not belong.

    Points become templates, and so do polygons no larger than a nucleus (their area
    centroid).  A polygon larger than ``max_area`` is a *region* (tissue, tumour, stroma
    annotations), not a nucleus: an error by default.

    Parameters
    ----------
    path : path-like
        A QuPath GeoJSON export.
    class_name : str, optional
        Keep only objects of this QuPath classification (case-sensitive, as QuPath; the
        name ``unclassified`` selects objects without one).  Without it, objects of more
        than one class (unclassified counting as one) are an error listing the classes.
    max_area : float, optional
        Largest nucleus polygon, in square pixels (``mcf templates from-points`` uses the
        template's area, ``size ** 2``); None accepts every polygon.
    regions : {"error", "skip", "centroid"}
        What to do with larger polygons: refuse, leave out, or use their centroid.

    Returns
    -------
    ndarray, shape (N, 2), float64
        (y, x) pixel-index coordinates, in file order.

    Raises
    ------
    FormatError
        If the file is not GeoJSON, holds no usable object, mixes classes without
        ``class_name`` or holds a region with ``regions="error"``.
    InputError
        If ``regions`` is unknown or no object has class ``class_name``.
    """
    if regions not in REGION_MODES:
        raise InputError(f"regions: expected one of {', '.join(REGION_MODES)}, got {regions!r}")
    p = Path(path)
    objs = read_geojson_objects(p)
    if not objs:
        raise FormatError(f"{p}: no Point, MultiPoint or Polygon geometries found")
    if class_name is not None:
        kept = [o for o in objs if o.label == class_name]
        if not kept:
            raise InputError(
                f"{p}: no object has the class {class_name!r}; classes found: {_class_list(objs)}"
            )
        objs = kept

    def is_region(o: GeoObject) -> bool:
        return o.kind == "polygon" and max_area is not None and _polygon_area(o.yx) > max_area

    if regions == "skip":
        objs = [o for o in objs if not is_region(o)]
        if not objs:
            raise FormatError(f"{p}: every polygon is larger than a nucleus; no points left")
    if class_name is None and len({o.label for o in objs}) > 1:
        raise FormatError(
            f"{p}: objects of several classes: {_class_list(objs)}; choose the nuclei "
            "with --class NAME (class_name=)"
        )
    if regions == "error":
        big = [o for o in objs if is_region(o)]
        if big:
            o = big[0]
            raise FormatError(
                f"{p}: feature {o.index} ({o.object_type or 'object'} {o.label!r}, a polygon "
                f"of {_polygon_area(o.yx):.0f} px^2) is larger than a nucleus (at most "
                f"{max_area:.0f} px^2, the template's area); it looks like a region: remove "
                f"it, or pass --regions skip to leave such polygons out or --regions "
                f"centroid to use their centroids ({len(big)} such polygon(s))"
            )
    pts: list[np.ndarray] = []
    for o in objs:
        pts.extend(o.yx if o.kind == "point" else [polygon_centroid(o.yx)])
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


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
