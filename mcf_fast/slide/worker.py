"""The worker side of a slide run: one tile in, one result file out.

The predictor travels to the workers once, in a worker plugin that the scheduler also hands
to workers that join (or restart) later; each task receives only its tile's coordinates.  A
task reads its read region, predicts, applies the ownership rule, writes its core labels
into the Zarr store (the core is exactly one chunk, so workers never share a chunk),
measures its nuclei and writes one result file (``tiles/tile_NNNNNN.npz``, atomically); it
returns only a small summary.  :func:`predict_tiled` is the same tiling in memory, without
dask or files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import InputError, McfError
from mcf_fast.io.export import csv_fragment, geojson_fragment
from mcf_fast.io.images import atomic_path
from mcf_fast.io.slides import SlideReader, open_slide
from mcf_fast.io.tiling import Tile, tile_grid, tile_labels
from mcf_fast.ops.measure import measure_nuclei
from mcf_fast.slide.predictors import PredictorSpec, TilePredictor, _align, _round_up

__all__ = ["Job", "predict_tiled", "run_dask", "run_local", "start_client", "tile_file"]

log = logging.getLogger("mcf_fast.slide")


@dataclass
class Job:
    key: str
    reader: SlideReader
    predictor: Any  # TilePredictor or PredictorSpec
    tiles_dir: str
    labels: str  # the Zarr label store (chunks aligned with the tile cores)
    overlay_step: int = 1  # slide pixels per overlay pixel


_JOBS: dict[str, Job] = {}
_BUILT: dict[str, tuple[SlideReader, TilePredictor]] = {}
_STORES: dict[str, Any] = {}


def _label_store(key: str):
    if key not in _STORES:
        import zarr

        _STORES[key] = zarr.open_array(_JOBS[key].labels, mode="r+")
    return _STORES[key]


def _materialise(key: str) -> tuple[SlideReader, TilePredictor]:
    if key not in _BUILT:
        job = _JOBS.get(key)
        if job is None:
            raise McfError(f"slide job {key} is not registered on this worker")
        pred = job.predictor.build() if isinstance(job.predictor, PredictorSpec) else job.predictor
        _BUILT[key] = (job.reader, pred)
    return _BUILT[key]


def _plugin_class():
    from distributed.diagnostics.plugin import WorkerPlugin

    class SlideJobPlugin(WorkerPlugin):
        """Carries one run's reader and predictor to every worker, once."""

        def __init__(self, job: Job) -> None:
            self.job = job
            self.name = f"mcf-slide-{job.key}"

        # this class is pickled by value: reach the registries through the real module
        def setup(self, worker=None) -> None:
            from mcf_fast.slide import worker as module

            module._JOBS[self.job.key] = self.job

        def teardown(self, worker=None) -> None:
            from mcf_fast.slide import worker as module

            module._JOBS.pop(self.job.key, None)
            module._BUILT.pop(self.job.key, None)
            module._STORES.pop(self.job.key, None)

    return SlideJobPlugin


def tile_file(index: int) -> str:
    return f"tile_{index:06d}.npz"


def _process_tile(key: str, tile: Tile) -> dict[str, Any]:
    """Run one tile (on a worker): read, predict, own, measure, write its result file."""
    t0 = time.perf_counter()
    job = _JOBS.get(key)
    if job is None:
        raise McfError(f"slide job {key} is not registered on this worker")
    reader, predictor = _materialise(key)
    base = {"tile": tile.index, "core": list(tile.core)}
    y0, x0, y1, x1 = tile.read
    try:
        rgb = reader.read_region(y0, x0, y1 - y0, x1 - x0)
    except Exception as exc:  # any backend error means this tile cannot be read
        return {**base, "status": "unreadable", "error": f"{type(exc).__name__}: {exc}"}
    try:
        full = getattr(predictor, "predict_tile_full", None)
        if full is not None:
            labels, centres, prob = full(rgb)
        else:
            (labels, centres), prob = predictor.predict_tile(rgb), None
        tl = tile_labels(labels, centres, tile, width=reader.shape[1])
        table = measure_nuclei(
            tl.labels,
            rgb,
            ids=tl.ids,
            centres=tl.centres,
            origin=(y0, x0),
            downsample=reader.downsample,
            mpp=reader.mpp,
            slide_shape=reader.shape,
            read_box=tile.read,
            probability=prob,
        )
    except Exception as exc:  # reported per tile so that the other tiles finish
        return {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    # the core is exactly one chunk of the label store: tiles never share a chunk, so
    # workers write their own in parallel (a rerun of the tile rewrites the same chunk)
    cy0, cx0, cy1, cx1 = tile.core
    _label_store(key)[cy0:cy1, cx0:cx1] = tl.core
    # the outputs' share of this tile, made here so that assembling them is a concatenation
    s = job.overlay_step
    fr, fc = (-cy0) % s, (-cx0) % s
    parts = {
        "geojson": np.frombuffer(geojson_fragment(table, tile=tile.index).encode(), np.uint8),
        "csv": np.frombuffer(csv_fragment(tile.index, table).encode(), np.uint8),
        "overlay": np.ascontiguousarray(tl.core[fr::s, fc::s]),
    }
    path = Path(job.tiles_dir) / tile_file(tile.index)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **table, **parts)
    return {
        **base,
        "status": "ok",
        "file": path.name,
        "n": int(len(tl.ids)),
        "seconds": round(time.perf_counter() - t0, 4),
        "pixels": int((tile.core[2] - tile.core[0]) * (tile.core[3] - tile.core[1])),
    }


def predict_tiled(
    image: Any, predictor: TilePredictor, *, tile: int = 1024, margin: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile an image in memory and stitch the result (no dask, no files).

    The same tiling, ownership rule and ids as :func:`run_slide`; with ``tile`` at least
    the image size it is the whole-image prediction.

    Parameters
    ----------
    image : ndarray or SlideReader
    predictor : TilePredictor
    tile, margin : int
        Core side; halo (at least ``predictor.halo``, rounded up to a multiple of
        ``predictor.align`` if it has one).

    Returns
    -------
    labels : ndarray, shape (H, W), int64
        Slide-wide ids (:func:`~mcf_fast.io.tiling.instance_ids`), 0 background.
    ids : ndarray, shape (N,), int64
        The nuclei, sorted by id.
    centres : ndarray, shape (N, 2), float64
    """
    reader = open_slide(image)
    m = _round_up(max(int(margin or 0), int(predictor.halo)), _align(predictor))
    H, W = reader.shape
    out = np.zeros((H, W), np.int64)
    ids, cents = [], []
    for t in tile_grid((H, W), tile=tile, margin=m):
        y0, x0, y1, x1 = t.read
        labels, centres = predictor.predict_tile(reader.read_region(y0, x0, y1 - y0, x1 - x0))
        tl = tile_labels(labels, centres, t, width=W)
        out[t.core[0] : t.core[2], t.core[1] : t.core[3]] = tl.core
        ids.append(tl.ids)
        cents.append(tl.centres)
    all_ids = np.concatenate(ids)
    order = np.argsort(all_ids, kind="stable")
    return out, all_ids[order], np.concatenate(cents)[order]


def run_local(job: Job, pending: list[Tile], record: Callable[[dict[str, Any]], None]) -> None:
    """Run the tiles in this process, one after another (``workers=0``)."""
    _JOBS[job.key] = job
    try:
        for t in pending:
            record(_process_tile(job.key, t))
    finally:
        _JOBS.pop(job.key, None)
        _BUILT.pop(job.key, None)
        _STORES.pop(job.key, None)


def start_client(workers: int | None, scheduler: str | None):
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({exc})") from exc
    n = workers or max(1, os.cpu_count() or 1)
    threads = str(max(1, (os.cpu_count() or 1) // n))
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads},
    )
    return Client(cluster), cluster


def run_dask(
    job: Job,
    pending: list[Tile],
    record: Callable[[dict[str, Any]], None],
    *,
    workers: int | None,
    scheduler: str | None,
    client: Any,
    report: Any,
) -> None:
    from distributed import as_completed

    own_cluster = None
    if client is None:
        client, own_cluster = start_client(workers, scheduler)
        own_client = True
    else:
        own_client = False
    plugin = _plugin_class()(job)
    try:
        client.register_plugin(plugin)
        report.workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        futures = [
            client.submit(
                _process_tile, job.key, t, key=f"mcf-tile-{job.key}-{t.index}", pure=False
            )
            for t in pending
        ]
        by_key = {f.key: t for f, t in zip(futures, pending, strict=True)}
        for fut in as_completed(futures):
            t = by_key[fut.key]
            try:
                summary = fut.result()
            except Exception as exc:  # the task raised or its workers kept dying
                summary = {
                    "tile": t.index,
                    "core": list(t.core),
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            fut.release()
            record(summary)
    finally:
        try:
            client.unregister_worker_plugin(plugin.name)
        except Exception as exc:  # the cluster may already be gone; nothing to undo then
            log.debug("could not unregister %s: %s", plugin.name, exc)
        if own_client:
            client.close()
        if own_cluster is not None:
            own_cluster.close()
