"""Slide outputs: QuPath GeoJSON, centroid CSV, Zarr instance labels, overlay PNG.

Every file is written atomically (:func:`mcf_fast.io.images.atomic_path`): it appears under
its final name only when complete.  The GeoJSON and CSV writers take iterables and stream,
so a slide with millions of nuclei never needs them all in memory.  The Zarr label store is
filled in place under a temporary name and renamed when the run is complete
(:func:`open_label_store`, :func:`finish_label_store`).

Coordinates in the GeoJSON and the CSV are level-0 pixels, x to the right and y down,
pixel corners on integers (the convention QuPath uses), whatever pyramid level was
processed; the Zarr labels (an OME-Zarr label pyramid) keep the processed level's grid.
"""

from __future__ import annotations

import gzip
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
    "iter_features",
    "write_geojson",
    "CSV_COLUMNS",
    "write_csv",
    "write_parquet",
    "parquet_available",
    "csv_fragment",
    "geojson_fragment",
    "concat_csv",
    "concat_geojson",
    "open_label_store",
    "finish_label_store",
    "label_array_path",
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
    "perimeter_px",
    "perimeter_um",
    "major_axis_px",
    "minor_axis_px",
    "major_axis_um",
    "minor_axis_um",
    "eccentricity",
    "solidity",
    "mean_r",
    "mean_g",
    "mean_b",
    "mean_od_h",
    "mean_od_e",
    "mean_probability",
    "clipped",
)

NucleusTable = dict[str, np.ndarray]

#: GeoJSON ``measurements`` names (as QuPath shows them) and the table columns they hold
MEASUREMENTS = (
    ("Centre x", "x"),
    ("Centre y", "y"),
    ("Centroid x", "centroid_x"),
    ("Centroid y", "centroid_y"),
    ("Area px", "area_px"),
    ("Area um^2", "area_um2"),
    ("Perimeter px", "perimeter_px"),
    ("Perimeter um", "perimeter_um"),
    ("Major axis px", "major_axis_px"),
    ("Minor axis px", "minor_axis_px"),
    ("Major axis um", "major_axis_um"),
    ("Minor axis um", "minor_axis_um"),
    ("Eccentricity", "eccentricity"),
    ("Solidity", "solidity"),
    ("Mean R", "mean_r"),
    ("Mean G", "mean_g"),
    ("Mean B", "mean_b"),
    ("Hematoxylin OD mean", "mean_od_h"),
    ("Eosin OD mean", "mean_od_e"),
    ("Probability mean", "mean_probability"),
)


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
        meas = {name: _finite(table[col][j]) for name, col in MEASUREMENTS}
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


def _open_text(path: Path, final: Path):
    """A text file for writing; gzip-compressed when ``final`` ends in ``.gz``."""
    if final.suffix.lower() == ".gz":
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=6)
    return open(path, "w", encoding="utf-8")


def write_geojson(path: str | os.PathLike, features: Iterable[dict[str, Any]]) -> int:
    """Stream features into a GeoJSON FeatureCollection, atomically.

    A ``path`` ending in ``.gz`` (``nuclei.geojson.gz``) is written gzip-compressed (QuPath
    does not open those directly: decompress first).

    Returns
    -------
    int
        Number of features written.
    """
    n = 0
    with atomic_path(path) as tmp, _open_text(tmp, Path(path)) as f:
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


def parquet_available() -> bool:
    """True when pyarrow (the ``[parquet]`` extra) is importable."""
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def write_parquet(path: str | os.PathLike, tables: Iterable[tuple[int, NucleusTable]]) -> int:
    """Stream nucleus tables into a Parquet file (one row group per tile), atomically.

    Columns are :data:`CSV_COLUMNS` (float64 measurements, NaN where the CSV is empty;
    int64 ``id`` and ``tile``; bool ``clipped``).  Needs pyarrow (``pip install
    'mcf-fast[parquet]'``).

    Returns
    -------
    int
        Number of rows written.

    Raises
    ------
    InputError
        If pyarrow is not installed.
    """
    if not parquet_available():
        raise InputError("Parquet output needs pyarrow: pip install 'mcf-fast[parquet]'")
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [pa.field("id", pa.int64()), pa.field("tile", pa.int64())]
    fields += [pa.field(c, pa.float64()) for c in CSV_COLUMNS[2:-1]]
    fields.append(pa.field("clipped", pa.bool_()))
    schema = pa.schema(fields)
    n = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        for tile, t in tables:
            rows = len(t["id"])
            if rows == 0:
                continue
            cols = [np.asarray(t["id"], np.int64), np.full(rows, int(tile), np.int64)]
            cols += [np.asarray(t[c], np.float64) for c in CSV_COLUMNS[2:-1]]
            cols.append(np.asarray(t["clipped"], bool))
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
            n += rows
    return n


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
    concatenation.  A ``path`` ending in ``.gz`` is written gzip-compressed.
    """
    with atomic_path(path) as tmp, _open_text(tmp, Path(path)) as f:
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


#: the array of the full-resolution labels inside the label store (OME-Zarr level 0)
LABEL_ARRAY = "0"
#: OME-NGFF version of the label store's metadata (Zarr v3)
NGFF_VERSION = "0.5"


def open_label_store(
    path: str | os.PathLike, *, shape: tuple[int, int], chunk: int, attrs: dict[str, Any]
):
    """Create, or reopen to resume, the instance-label store of a run; return its level 0.

    The store is an OME-Zarr group (Zarr v3) whose array ``0`` holds the labels at the
    processed level: int64 (slide-wide ids), 0 = background, chunks of ``chunk`` pixels
    aligned with the tile cores.  It is written under ``<path>.partial`` and becomes
    ``path`` in :func:`finish_label_store`, which adds the downsampled levels and the
    NGFF metadata; a finished store found at ``path`` is moved back so that a re-run can
    update it.

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
        z = zarr.open_array(str(partial / LABEL_ARRAY), mode="r+")
        if tuple(z.shape) != tuple(shape):
            raise InputError(
                f"{partial}: existing label store has shape {z.shape}, "
                f"expected {shape}; use another --out folder"
            )
        return z
    tmp = final.with_name(final.name + ".creating")
    if tmp.exists():
        shutil.rmtree(tmp)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    z = group.create_array(
        LABEL_ARRAY, shape=tuple(shape), chunks=(chunk, chunk), dtype="int64", fill_value=0
    )
    z.attrs.update(attrs)
    os.replace(tmp, partial)
    return zarr.open_array(str(partial / LABEL_ARRAY), mode="r+")


def label_array_path(path: str | os.PathLike) -> Path:
    """Where the level-0 array of a label store (final or ``.partial``) lives."""
    return Path(path) / LABEL_ARRAY


def _ngff_metadata(n_levels: int, *, mpp: float | None, downsample: float) -> dict[str, Any]:
    """OME-NGFF 0.5 ``multiscales`` and ``image-label`` metadata of the label pyramid.

    Scales are in micrometres when the pixel size is known, else in level-0 pixels.
    """
    unit = mpp is not None
    base = float(mpp) if unit else float(downsample)
    axes = [{"name": a, "type": "space", **({"unit": "micrometer"} if unit else {})} for a in "yx"]
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [{"type": "scale", "scale": [base * 2**k] * 2}],
        }
        for k in range(n_levels)
    ]
    return {
        "version": NGFF_VERSION,
        "multiscales": [{"name": "nuclei", "axes": axes, "datasets": datasets}],
        "image-label": {"version": NGFF_VERSION, "colors": []},
    }


def _downsample_level(src, dst, block: int) -> None:
    """dst = src[::2, ::2] (nearest: labels stay labels), block by block."""
    h, w = dst.shape
    for y in range(0, h, block):
        for x in range(0, w, block):
            y1, x1 = min(h, y + block), min(w, x + block)
            dst[y:y1, x:x1] = src[2 * y : 2 * y1 : 2, 2 * x : 2 * x1 : 2]


def finish_label_store(
    path: str | os.PathLike,
    *,
    mpp: float | None = None,
    downsample: float = 1.0,
    min_side: int = 256,
) -> Path:
    """Complete the label store and give it its final name (see :func:`open_label_store`).

    Adds levels ``1, 2, ...`` (each half the previous, nearest-neighbour, until the longer
    side is at most ``min_side``) and the OME-NGFF 0.5 metadata (multiscales with the pixel
    size, ``image-label``), so that OME-Zarr readers (ome-zarr-py, napari, QuPath) open it
    as a label image with its scale.

    Parameters
    ----------
    path : path-like
    mpp : float, optional
        Microns per pixel of level 0 of the store (the processed slide level).
    downsample : float
        Slide level-0 pixels per store pixel (the scale when ``mpp`` is unknown).
    min_side : int
    """
    import zarr

    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        group = zarr.open_group(str(partial), mode="r+")
        level = group[LABEL_ARRAY]
        n = 1
        while max(level.shape) > min_side:
            shape = (-(-level.shape[0] // 2), -(-level.shape[1] // 2))
            chunk = level.chunks
            nxt = group.create_array(
                str(n), shape=shape, chunks=chunk, dtype="int64", fill_value=0, overwrite=True
            )
            _downsample_level(level, nxt, max(chunk))
            level, n = nxt, n + 1
        for stale in [k for k in group.array_keys() if k.isdigit() and int(k) >= n]:
            del group[stale]
        group.attrs["ome"] = _ngff_metadata(n, mpp=mpp, downsample=downsample)
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
