"""Slide outputs: QuPath GeoJSON, centroid CSV, Zarr instance labels, overlay PNG.

Every file is written atomically (:func:`mcf_fast.io.images.atomic_path`): it appears under
its final name only when complete.  The GeoJSON and CSV writers take iterables and stream,
so a slide with millions of nuclei never needs them all in memory.  The Zarr label store is
filled in place under a temporary name and renamed when the run is complete
(:func:`open_label_store`, :func:`finish_label_store`).

Coordinates in the GeoJSON and the CSV are level-0 pixels, x to the right and y down,
pixel corners on integers (the convention QuPath uses), whatever pyramid level was
processed; the Zarr labels keep the processed level's grid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import InputError
from mcf_fast.io.images import atomic_path, write_image

__all__ = [
    "NucleusTable",
    "measure_nuclei",
    "iter_features",
    "write_geojson",
    "CSV_COLUMNS",
    "write_csv",
    "csv_fragment",
    "geojson_fragment",
    "concat_csv",
    "concat_geojson",
    "open_label_store",
    "finish_label_store",
    "overlay",
]

#: columns of the centroid CSV, in order
CSV_COLUMNS = (
    "id",
    "tile",
    "y",
    "x",
    "centroid_y",
    "centroid_x",
    "area_px",
    "area_um2",
    "perimeter_um",
    "mean_r",
    "mean_g",
    "mean_b",
    "clipped",
)

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
) -> NucleusTable:
    """Measurements and outline polygons of the nuclei of one tile.

    Parameters
    ----------
    labels : ndarray, shape (h, w), integer
        Compact labels over the tile's read region: label ``j`` is nucleus ``ids[j - 1]``.
    rgb : ndarray, shape (h, w, 3), uint8
        The pixels the labels were predicted on.
    ids : ndarray, shape (n,), int64
        Slide-wide ids.
    centres : ndarray, shape (n, 2)
        Detected centres (y, x), slide-level coordinates.
    origin : tuple of int
        Slide-level (y, x) of ``labels[0, 0]``.
    downsample : float
        Level-0 pixels per level pixel; outputs are scaled to level 0.
    mpp : float, optional
        Microns per pixel at the processed level (for the µm measurements; NaN without it).
    slide_shape, read_box : optional
        The level's (H, W) and the tile's read box; a nucleus touching a read-box edge that
        is not a slide edge is flagged ``clipped`` (its outline may be cut by the tile).

    Returns
    -------
    dict of ndarray
        ``id, y, x, centroid_y, centroid_x, area_px, area_um2, perimeter_um, mean_r,
        mean_g, mean_b, clipped`` (one entry per nucleus, level-0 coordinates) and the
        outlines as ``poly_xy`` (M, 2) float64 level-0 (x, y) vertices with ``poly_offsets``
        (n + 1,) so that ring ``j`` is ``poly_xy[poly_offsets[j]:poly_offsets[j + 1]]``
        (closed: first vertex repeated at the end).  Outlines are the exact pixel
        boundaries traced at half-pixel resolution, with collinear vertices removed.
    """
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    lab = np.asarray(labels)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    cen = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if cen.shape[0] != n:
        raise InputError(f"centres: expected {n} rows, got {cen.shape[0]}")
    h, w = lab.shape
    oy, ox = origin
    boxes = ndi.find_objects(lab.astype(np.int32, copy=False), max_label=n) if n else []
    idx = np.arange(1, n + 1)
    area = (
        np.bincount(lab.ravel(), minlength=n + 1)[1 : n + 1].astype(np.float64)
        if n
        else np.zeros(0)
    )
    if n:
        com = np.asarray(ndi.center_of_mass(np.ones((h, w)), lab, idx), dtype=np.float64)
        com = com.reshape(n, 2)
        means = [
            np.asarray(ndi.mean(rgb[:, :, ch].astype(np.float64), lab, idx)) for ch in range(3)
        ]
    else:
        com = np.zeros((0, 2))
        means = [np.zeros(0)] * 3
    edges = np.zeros(4, bool)  # top, left, bottom, right read edges inside the slide
    if read_box is not None and slide_shape is not None:
        ry0, rx0, ry1, rx1 = read_box
        edges[:] = (ry0 > 0, rx0 > 0, ry1 < slide_shape[0], rx1 < slide_shape[1])
    clipped = np.zeros(n, bool)
    perim = np.zeros(n)
    rings: list[np.ndarray] = []
    for j in range(n):
        box = boxes[j] if j < len(boxes) else None
        if box is None:  # an id with no pixels: outline the centre pixel
            cy, cx = np.floor(cen[j]) - (oy, ox)
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
        "area_px": area,
        "area_um2": area * m * m,
        "perimeter_um": perim * m,
        "mean_r": means[0],
        "mean_g": means[1],
        "mean_b": means[2],
        "clipped": clipped,
        "poly_xy": np.ascontiguousarray(xy, dtype=np.float64),
        "poly_offsets": offsets,
    }


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


def _finite(v: float) -> float | None:
    return round(float(v), 4) if math.isfinite(float(v)) else None


def iter_features(
    table: NucleusTable,
    *,
    tile: int | None = None,
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (32, 160, 64),
) -> Iterator[dict[str, Any]]:
    """QuPath detection features (GeoJSON dicts) of the nuclei in a table.

    Each feature has a polygon geometry, ``objectType: "detection"``, a classification
    and a ``measurements`` object; its ``id`` is a UUID built from the nucleus id, so
    re-exporting gives the same ids.
    """
    offs = table["poly_offsets"]
    xy = table["poly_xy"]
    for j in range(len(table["id"])):
        ring = xy[offs[j] : offs[j + 1]]
        coords = np.round(ring, 2).tolist()
        if len(coords) < 4:  # degenerate: a tiny square around the centre
            x, y = float(table["x"][j]), float(table["y"][j])
            coords = [
                [x - 0.5, y - 0.5],
                [x + 0.5, y - 0.5],
                [x + 0.5, y + 0.5],
                [x - 0.5, y + 0.5],
                [x - 0.5, y - 0.5],
            ]
        meas = {
            "Area px": _finite(table["area_px"][j]),
            "Area um^2": _finite(table["area_um2"][j]),
            "Perimeter um": _finite(table["perimeter_um"][j]),
            "Centre x": _finite(table["x"][j]),
            "Centre y": _finite(table["y"][j]),
            "Mean R": _finite(table["mean_r"][j]),
            "Mean G": _finite(table["mean_g"][j]),
            "Mean B": _finite(table["mean_b"][j]),
        }
        props: dict[str, Any] = {
            "objectType": "detection",
            "classification": {"name": classification, "color": list(color)},
            "isLocked": False,
            "measurements": {k: v for k, v in meas.items() if v is not None},
            "mcf_id": int(table["id"][j]),
        }
        if tile is not None:
            props["mcf_tile"] = int(tile)
        yield {
            "type": "Feature",
            "id": str(uuid.UUID(int=int(table["id"][j]))),
            "geometry": {"type": "Polygon", "coordinates": [coords]},
            "properties": props,
        }


def write_geojson(path: str | os.PathLike, features: Iterable[dict[str, Any]]) -> int:
    """Stream features into a GeoJSON FeatureCollection, atomically.

    Returns
    -------
    int
        Number of features written.
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for feat in features:
            if n:
                f.write(",\n")
            f.write(json.dumps(feat, separators=(",", ":"), ensure_ascii=False))
            n += 1
        f.write("\n]}\n")
    return n


def csv_fragment(tile: int, table: NucleusTable) -> str:
    """The CSV rows (no header) of one tile's nuclei; see :data:`CSV_COLUMNS`."""
    n = len(table["id"])
    if n == 0:
        return ""
    cols: list[list[str]] = [[str(int(v)) for v in table["id"]], [str(int(tile))] * n]
    for col in CSV_COLUMNS[2:-1]:
        cols.append(
            [
                "" if not math.isfinite(v) else f"{v:.6g}"
                for v in np.asarray(table[col], np.float64).tolist()
            ]
        )
    cols.append(["1" if v else "0" for v in np.asarray(table["clipped"], bool).tolist()])
    return "".join(",".join(row) + "\n" for row in zip(*cols, strict=True))


def geojson_fragment(table: NucleusTable, *, tile: int | None = None) -> str:
    """One tile's features as GeoJSON text, comma-separated (no brackets)."""
    return ",\n".join(
        json.dumps(f, separators=(",", ":"), ensure_ascii=False)
        for f in iter_features(table, tile=tile)
    )


def write_csv(path: str | os.PathLike, tables: Iterable[tuple[int, NucleusTable]]) -> int:
    """Stream nucleus tables (``(tile index, table)`` pairs) into a CSV, atomically.

    Columns are :data:`CSV_COLUMNS`; coordinates in level-0 pixels; NaN measurements (no
    mpp) are written empty.

    Returns
    -------
    int
        Number of rows written.
    """
    return concat_csv(path, (csv_fragment(tile, t) for tile, t in tables))


def concat_csv(path: str | os.PathLike, fragments: Iterable[str]) -> int:
    """Write the header and then CSV fragments (from :func:`csv_fragment`), atomically.

    Returns
    -------
    int
        Number of rows written.
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write(",".join(CSV_COLUMNS) + "\n")
        for frag in fragments:
            f.write(frag)
            n += frag.count("\n")
    return n


def concat_geojson(path: str | os.PathLike, fragments: Iterable[str]) -> None:
    """Write a FeatureCollection from GeoJSON fragments (:func:`geojson_fragment`), atomically.

    Workers serialise their own tiles' features, so assembling a slide's file is a
    concatenation.
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        first = True
        for frag in fragments:
            if not frag:
                continue
            if not first:
                f.write(",\n")
            f.write(frag)
            first = False
        f.write("\n]}\n")


def open_label_store(
    path: str | os.PathLike, *, shape: tuple[int, int], chunk: int, attrs: dict[str, Any]
):
    """Create, or reopen to resume, the Zarr instance-label array of a run.

    The array is written under ``<path>.partial`` and becomes ``path`` in
    :func:`finish_label_store`; a finished store found at ``path`` is moved back so that a
    re-run can update it.  int64 (slide-wide ids), 0 = background, chunks of ``chunk``
    pixels aligned with the tile cores.

    Raises
    ------
    InputError
        If an existing store has another shape.
    """
    import zarr

    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    if final.exists() and not partial.exists():
        os.replace(final, partial)
    if partial.exists():
        z = zarr.open_array(str(partial), mode="r+")
        if tuple(z.shape) != tuple(shape):
            raise InputError(
                f"{partial}: existing label store has shape {z.shape}, "
                f"expected {shape}; use another --out folder"
            )
        return z
    tmp = final.with_name(final.name + ".creating")
    if tmp.exists():
        shutil.rmtree(tmp)
    z = zarr.create_array(
        str(tmp), shape=tuple(shape), chunks=(chunk, chunk), dtype="int64", fill_value=0
    )
    z.attrs.update(attrs)
    os.replace(tmp, partial)
    return zarr.open_array(str(partial), mode="r+")


def finish_label_store(path: str | os.PathLike) -> Path:
    """Give the completed store its final name (see :func:`open_label_store`)."""
    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    return final


def overlay(
    thumbnail: np.ndarray,
    labels: np.ndarray,
    *,
    path: str | os.PathLike | None = None,
    color: tuple[int, int, int] = (0, 255, 0),
    alpha: float = 0.35,
) -> np.ndarray:
    """Draw nuclei on a downsampled picture: tinted insides, outlines in full colour.

    Parameters
    ----------
    thumbnail : ndarray, shape (h, w, 3), uint8
    labels : ndarray, shape (h, w), integer
        Instance labels on the thumbnail's grid.
    path : path-like, optional
        Where to write the PNG (atomically).

    Returns
    -------
    ndarray, shape (h, w, 3), uint8
    """
    img = np.asarray(thumbnail, dtype=np.uint8)
    lab = np.asarray(labels)
    if lab.shape != img.shape[:2]:
        raise InputError(f"overlay: labels {lab.shape} do not match thumbnail {img.shape[:2]}")
    fg = lab > 0
    edge = np.zeros_like(fg)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[1:] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    edge &= fg
    out = img.astype(np.float32)
    col = np.asarray(color, np.float32)
    out[fg] = (1 - alpha) * out[fg] + alpha * col
    out[edge] = col
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if path is not None:
        write_image(path, out)
    return out
