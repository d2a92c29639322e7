"""The end of a slide run: the outputs assembled from the tiles' result files.

The GeoJSON, the CSV (and Parquet) and the overlay are concatenated from the result files,
one tile at a time, in tile order, so memory does not grow with the slide; the label store
is finished only when every tile is in.  :class:`SlideReport` is the run's summary
(``report.json``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.io.export import (
    CSV_COLUMNS,
    concat_csv,
    concat_geojson,
    finish_label_store,
    overlay,
    write_parquet,
)
from mcf_fast.io.images import atomic_path
from mcf_fast.io.slides import SlideReader
from mcf_fast.io.tiling import Tile

__all__ = ["SlideReport", "assemble_outputs"]

#: file names inside the output folder
RUN_FILE, MANIFEST, TILES_DIR = "run.json", "manifest.jsonl", "tiles"
LABELS, GEOJSON, CSV, OVERLAY, REPORT, LOG = (
    "labels.zarr",
    "nuclei.geojson",
    "nuclei.csv",
    "overlay.png",
    "report.json",
    "run.log",
)
PARQUET = "nuclei.parquet"


@dataclass
class SlideReport:
    """The summary of a run (also written to ``report.json``)."""

    slide: str
    shape: tuple[int, int]
    level: int
    mpp: float | None
    tile: int
    margin: int
    n_tiles: int
    n_tissue: int
    n_resumed: int = 0
    n_processed: int = 0
    n_nuclei: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    export_seconds: float = 0.0
    megapixels: float = 0.0
    workers: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["complete"] = self.complete
        d["megapixels_per_second"] = round(self.megapixels_per_second, 4)
        return d


def assemble_outputs(
    reader: SlideReader,
    report: SlideReport,
    done: dict[int, dict[str, Any]],
    by_index: dict[int, Tile],
    out_dir: Path,
    tiles_dir: Path,
    *,
    overlay_side: int,
    exports: dict[str, bool],
    run_seconds: float,
    t_start: float,
) -> None:
    """Write the labels, GeoJSON, CSV (Parquet), overlay and ``report.json`` of a run.

    `done` maps tile index to its manifest record; `report` is completed in place.
    """
    ok = [i for i in sorted(done)]
    if report.complete:
        finish_label_store(out_dir / LABELS, mpp=reader.mpp, downsample=reader.downsample)
        labels_path = out_dir / LABELS
    else:
        labels_path = out_dir / (LABELS + ".partial")

    def fragments(name: str):
        for i in ok:
            with np.load(tiles_dir / done[i]["file"]) as z:
                yield z[name].tobytes().decode()

    t_export = time.perf_counter()
    geojson_path = out_dir / (GEOJSON + ".gz" if exports.get("gzip_geojson") else GEOJSON)
    concat_geojson(geojson_path, fragments("geojson"))
    report.n_nuclei = concat_csv(out_dir / CSV, fragments("csv"))
    if exports.get("parquet"):

        def tables():
            for i in ok:
                with np.load(tiles_dir / done[i]["file"]) as z:
                    yield i, {c: z[c] for c in CSV_COLUMNS if c != "tile"}

        write_parquet(out_dir / PARQUET, tables())
    thumb, step = reader.thumbnail(overlay_side)
    canvas = np.zeros(thumb.shape[:2], np.int64)
    s = int(step)
    for i in ok:
        y0, x0, _, _ = by_index[i].core
        with np.load(tiles_dir / done[i]["file"]) as z:
            sub = z["overlay"]
        ty, tx = -(-y0 // s), -(-x0 // s)
        canvas[ty : ty + sub.shape[0], tx : tx + sub.shape[1]] = sub
    overlay(thumb, canvas, path=out_dir / OVERLAY)
    report.seconds = round(run_seconds, 3)
    report.export_seconds = round(time.perf_counter() - t_export, 3)
    report.outputs = {
        "labels": str(labels_path),
        "geojson": str(geojson_path),
        "csv": str(out_dir / CSV),
        **({"parquet": str(out_dir / PARQUET)} if exports.get("parquet") else {}),
        "overlay": str(out_dir / OVERLAY),
        "report": str(out_dir / REPORT),
        "log": str(out_dir / LOG),
    }
    with atomic_path(out_dir / REPORT) as tmp:
        tmp.write_text(
            json.dumps(
                {**report.to_dict(), "total_seconds": round(time.perf_counter() - t_start, 3)},
                indent=1,
            ),
            encoding="utf-8",
        )
