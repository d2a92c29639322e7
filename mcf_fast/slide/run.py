"""Whole-slide runs on dask.distributed: tiles in, streamed results out.

A run cuts the slide into tiles (:mod:`mcf_fast.io.tiling`), skips tiles without tissue,
and sends one task per tile to a dask cluster: a :class:`~distributed.LocalCluster` by
default, or any running scheduler.  The predictor travels to the workers once, in a worker
plugin that the scheduler also hands to workers that join (or restart) later; each task
receives only its tile's coordinates.  A task reads its read region, predicts, applies the
ownership rule, writes its core labels into the Zarr store (the core is exactly one chunk,
so workers never share a chunk), measures its nuclei and writes one result file
(``tiles/tile_NNNNNN.npz``, atomically); it returns only a small summary.  As each tile
finishes, the client appends a line to ``manifest.jsonl``, so memory does not grow with
the slide and an interrupted run resumes where it stopped: tiles already in the manifest
(with their result file) are skipped.  At the end the GeoJSON, the CSV and
the overlay are assembled from the result files, one tile at a time, in tile order.

Faults: a tile that cannot be read (or whose prediction raises) is logged, listed in the
report and left out of the manifest, so a re-run retries it; the other tiles finish.  A
worker that dies is replaced by its nanny and its tasks are rescheduled by dask; because the
client records each tile once, by index, and result files are replaced atomically, every
tile appears exactly once in the outputs.

Predictors (:mod:`mcf_fast.slide.predictors`) implement ``TilePredictor``; the worker side
is :mod:`mcf_fast.slide.worker`, the output assembly :mod:`mcf_fast.slide.assemble`.

Normalisation: a predictor whose output depends on a per-image statistic (the detector
normalises its fused response to [0, 1] over the image; stain normalisers estimate stain
vectors per image) would give each tile its own scale, and nuclei near a threshold would
come and go from tile to tile.  Predictors that can, expose ``calibration(samples)`` and
``calibrated(state)``: the run computes one slide-level state from a few tissue tiles spread
over the slide, stores it in ``run.json`` (so a resumed run uses the same one) and every
tile is predicted with it.  See docs/slides.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import ConfigError, InputError
from mcf_fast.io.export import label_array_path, open_label_store, parquet_available
from mcf_fast.io.images import atomic_path
from mcf_fast.io.outputs import check_output_dir, lock_folder
from mcf_fast.io.slides import SlideReader, open_slide, tissue_mask
from mcf_fast.io.tiling import Tile, tile_grid
from mcf_fast.slide.assemble import (
    LABELS,
    LOG,
    MANIFEST,
    RUN_FILE,
    TILES_DIR,
    SlideReport,
    assemble_outputs,
)
from mcf_fast.slide.predictors import (
    PredictorSpec,
    TilePredictor,
    _align,
    _round_up,
)
from mcf_fast.slide.worker import Job, run_dask, run_local

__all__ = ["SlideReport", "run_slide", "slide_identity"]

log = logging.getLogger("mcf_fast.slide")


def _remove_stale_parts(tiles_dir: Path) -> None:
    """Delete temporary result files left by a worker killed while writing one."""
    for p in tiles_dir.glob(".tile_*.part.npz"):
        p.unlink(missing_ok=True)


def _read_manifest(path: Path, tiles_dir: Path) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: that tile is redone
                continue
            if rec.get("status") == "ok" and (tiles_dir / rec["file"]).exists():
                done[int(rec["tile"])] = rec
    return done


def _summary(calibration: dict[str, Any]) -> dict[str, Any]:
    """The calibration for reports: long lists (colour-model pixels) as their length, in
    nested dicts too (a model bundle's calibration nests the detector's)."""
    return {
        k: (
            _summary(v)
            if isinstance(v, dict)
            else f"{len(v)} values"
            if isinstance(v, list) and len(v) > 8
            else v
        )
        for k, v in calibration.items()
    }


def _describe(predictor: Any, built: Any) -> str:
    """How run.json names the model: the file it comes from, else the predictor's repr."""
    if isinstance(predictor, PredictorSpec) and predictor.source != "blob":
        return predictor.source
    return repr(built)


def slide_identity(reader: SlideReader, *, side: int = 128) -> dict[str, Any]:
    """What tells this slide from another of the same name and shape, for resuming a run.

    The file's size and modification time (when the reader has a file) and a SHA-256 of
    the pixels of nine ``side x side`` regions on a 3 x 3 grid over the slide.
    """
    import hashlib

    ident: dict[str, Any] = {}
    path = getattr(reader, "path", None)
    if path is not None and Path(path).is_file():
        st = Path(path).stat()
        ident.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    h = hashlib.sha256()
    height, width = reader.shape
    rh, rw = min(side, height), min(side, width)
    for fy in (0.25, 0.5, 0.75):
        for fx in (0.25, 0.5, 0.75):
            y = min(int(height * fy), height - rh)
            x = min(int(width * fx), width - rw)
            h.update(np.ascontiguousarray(reader.read_region(y, x, rh, rw)).tobytes())
    ident["pixels_sha256"] = h.hexdigest()
    return ident


def _predictor_identity(predictor: Any) -> str | None:
    """SHA-256 of the model file a predictor comes from (None for "blob" or an object)."""
    from mcf_fast.io.outputs import file_digest

    if isinstance(predictor, PredictorSpec) and Path(predictor.source).is_file():
        return file_digest(predictor.source)
    return None


def _calibration_tiles(tiles: list[Tile], n: int) -> list[Tile]:
    if n <= 0 or not tiles:
        return []
    pick = np.unique(np.linspace(0, len(tiles) - 1, min(n, len(tiles))).round().astype(int))
    return [tiles[i] for i in pick]


def run_slide(
    slide: Any,
    predictor: TilePredictor | PredictorSpec | str | os.PathLike,
    out: str | os.PathLike,
    *,
    tile: int = 1024,
    margin: int | None = None,
    level: int = 0,
    mpp: float | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    skip_background: bool = True,
    n_calibration: int = 4,
    overlay_side: int = 2048,
    progress: bool = True,
    on_tile: Callable[[dict[str, Any]], None] | None = None,
    parquet: bool = False,
    gzip_geojson: bool = False,
    detector_cls: type | None = None,
) -> SlideReport:
    """Detect and segment nuclei over a whole slide, on dask, streaming results to `out`.

    Parameters
    ----------
    slide : path-like, ndarray or SlideReader
        See :func:`~mcf_fast.io.slides.open_slide`.
    predictor : TilePredictor, PredictorSpec, path or "blob"
        A path is a template set (``.json``) or a model bundle (:func:`load_predictor`);
        workers load it themselves, once each.
    out : path-like
        Output folder: ``labels.zarr``, ``nuclei.geojson``, ``nuclei.csv``, ``overlay.png``,
        ``report.json``, ``run.log``, and the run's state (``run.json``,
        ``manifest.jsonl``, ``tiles/``) that a re-run resumes from.
    tile : int
        Core side in pixels (also the Zarr chunk side).
    margin : int, optional
        Halo in pixels; at least ``predictor.halo`` (the default), rounded up to a multiple
        of ``predictor.align`` if it has one (a model bundle: ``2 ** depth``; keep `tile`
        a multiple of it too).
    level : int
        Pyramid level to process.
    mpp : float, optional
        Microns per pixel at level 0, overriding the slide's metadata.
    workers : int, optional
        Processes of the LocalCluster (default: one per CPU); ``0`` runs in this process
        without dask (for debugging).
    scheduler : str, optional
        Address of a running dask scheduler to use instead of a LocalCluster.
    client : distributed.Client, optional
        An existing client to use (then `workers` and `scheduler` are ignored).
    skip_background : bool
        Skip tiles with no tissue in the low-resolution tissue mask.
    n_calibration : int
        Tissue tiles read to fix the slide-level normalisation (0: none).
    overlay_side : int
        Longest side of the overlay PNG.
    progress : bool
        Show a progress bar on stderr.
    on_tile : callable, optional
        Called in this process with each tile's summary as it is recorded.
    parquet : bool
        Also write the nucleus table as ``nuclei.parquet`` (needs pyarrow).
    gzip_geojson : bool
        Write ``nuclei.geojson.gz`` (gzip) instead of ``nuclei.geojson``.
    detector_cls : class, optional
        With a bundle path: the detector class it is loaded with (see
        :func:`~mcf_fast.slide.predictors.load_predictor`); the package's by default.

    Returns
    -------
    SlideReport
        ``failed`` lists tiles that could not be read or predicted; a re-run retries them.

    Raises
    ------
    InputError, FormatError
        For an unreadable slide or model.
    ConfigError
        If `out` holds a run made with other parameters.
    """
    t_start = time.perf_counter()
    if parquet and not parquet_available():  # before hours of work, not after
        raise InputError("--parquet needs pyarrow: pip install 'mcf-fast[parquet]'")
    out_dir = check_output_dir(out)  # before any model is loaded or tile read
    reader = open_slide(slide, level=level, mpp=mpp)
    if isinstance(predictor, (str, os.PathLike)):
        predictor = PredictorSpec(str(predictor), detector_cls=detector_cls)
    local_pred = predictor.build() if isinstance(predictor, PredictorSpec) else predictor
    if not isinstance(local_pred, TilePredictor):
        raise InputError(f"predictor: {type(local_pred).__name__} has no predict_tile/halo")
    halo = int(local_pred.halo)
    align = _align(local_pred)
    m = _round_up(max(int(margin) if margin is not None else 0, halo), align)
    if margin is not None and int(margin) < halo:
        log.warning("margin %d is below the predictor's halo %d; using %d", margin, halo, m)
    if tile % align:
        log.warning(
            "tile %d is not a multiple of %d (the model's pooling grid): tiles can differ "
            "from the whole-image result",
            tile,
            align,
        )
    tiles = tile_grid(reader.shape, tile=tile, margin=m)

    with lock_folder(out_dir):  # a second run into the same folder is refused
        return _run_logged(
            reader,
            predictor,
            local_pred,
            tiles,
            out_dir,
            tile=tile,
            margin=m,
            level=level,
            workers=workers,
            scheduler=scheduler,
            client=client,
            skip_background=skip_background,
            n_calibration=n_calibration,
            overlay_side=overlay_side,
            progress=progress,
            on_tile=on_tile,
            t_start=t_start,
            exports={"parquet": parquet, "gzip_geojson": gzip_geojson},
        )


def _run_logged(
    reader: SlideReader,
    predictor: Any,
    local_pred: Any,
    tiles: list[Tile],
    out_dir: Path,
    **kwargs: Any,
) -> SlideReport:
    tiles_dir = out_dir / TILES_DIR
    tiles_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    old_level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        return _run(reader, predictor, local_pred, tiles, out_dir, tiles_dir, **kwargs)
    finally:
        log.setLevel(old_level)
        log.removeHandler(handler)
        handler.close()


def _run(
    reader: SlideReader,
    predictor: Any,
    local_pred: Any,
    tiles: list[Tile],
    out_dir: Path,
    tiles_dir: Path,
    *,
    tile: int,
    margin: int,
    level: int,
    workers: int | None,
    scheduler: str | None,
    client: Any,
    skip_background: bool,
    n_calibration: int,
    overlay_side: int,
    progress: bool,
    on_tile: Callable[[dict[str, Any]], None] | None,
    t_start: float,
    exports: dict[str, bool] | None = None,
) -> SlideReport:
    from tqdm.auto import tqdm

    exports = exports or {}

    tissue = tissue_mask(reader) if skip_background else None
    todo = [t for t in tiles if tissue is None or tissue.any_in(*t.core)]
    params = {
        "slide": reader.name,
        "shape": list(reader.shape),
        "level": level,
        "downsample": reader.downsample,
        "mpp": reader.mpp,
        "tile": tile,
        "margin": margin,
        "predictor": _describe(predictor, local_pred),
        "predictor_sha256": _predictor_identity(predictor),
        "slide_identity": slide_identity(reader),
    }
    run_file = out_dir / RUN_FILE
    calibration: dict[str, Any] = {}
    if run_file.exists():
        try:
            prev = json.loads(run_file.read_text(encoding="utf-8"))
            if not isinstance(prev, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ConfigError(
                f"{run_file}: not a readable run record ({exc}); use another --out"
            ) from exc
        if "slide_identity" not in prev:
            raise ConfigError(
                f"{out_dir}: holds a run made by an earlier mcf_fast, which did not record "
                "the slide's identity, so it cannot be resumed safely; use another --out "
                "or remove the folder"
            )
        diff = {k: (prev.get(k), v) for k, v in params.items() if prev.get(k) != v}
        if "slide_identity" in diff or "predictor_sha256" in diff:
            what = [
                w
                for k, w in (
                    ("slide_identity", "another slide (its file or pixels differ)"),
                    ("predictor_sha256", "another model file"),
                )
                if k in diff
            ]
            raise ConfigError(
                f"{out_dir}: holds a run of {' and of '.join(what)}, not this "
                f"{reader.name}; resuming would mix both runs' nuclei: use another --out "
                "or remove the folder"
            )
        if diff:
            raise ConfigError(
                f"{out_dir}: holds a run with other parameters "
                f"{ {k: v[0] for k, v in diff.items()} } (now "
                f"{ {k: v[1] for k, v in diff.items()} }); use another --out"
            )
        calibration = prev.get("calibration", {})
    elif n_calibration > 0 and hasattr(local_pred, "calibration") and todo:
        samples = []
        for t in _calibration_tiles(todo, n_calibration):
            y0, x0, y1, x1 = t.read
            try:
                samples.append(reader.read_region(y0, x0, y1 - y0, x1 - x0))
            except Exception as exc:  # an unreadable sample is skipped, the run reports it
                log.warning("calibration: tile %d unreadable (%s)", t.index, exc)
        if samples:
            calibration = dict(local_pred.calibration(samples))
    if not run_file.exists():
        with atomic_path(run_file) as tmp:
            tmp.write_text(json.dumps({**params, "calibration": calibration}), encoding="utf-8")
    if calibration:
        log.info("slide-level calibration %s", _summary(calibration))
        if isinstance(predictor, PredictorSpec):
            predictor = replace(predictor, calibration=calibration)
        else:
            predictor = predictor.calibrated(calibration)

    manifest = out_dir / MANIFEST
    _remove_stale_parts(tiles_dir)
    done = _read_manifest(manifest, tiles_dir)
    # created (or reopened to resume) here; the workers write their cores into it
    open_label_store(
        out_dir / LABELS,
        shape=reader.shape,
        chunk=tile,
        attrs={
            **params,
            "calibration": _summary(calibration),
            "ids": "floor(y) * width + floor(x) + 1, (y, x) the centre in pixel corners",
        },
    )
    report = SlideReport(
        slide=reader.name,
        shape=reader.shape,
        level=level,
        mpp=reader.mpp,
        tile=tile,
        margin=margin,
        n_tiles=len(tiles),
        n_tissue=len(todo),
        calibration=_summary(calibration),
    )
    pending = [t for t in todo if t.index not in done]
    report.n_resumed = len(todo) - len(pending)
    log.info(
        "%s: %d tiles, %d with tissue, %d already done, %d to run",
        reader.name,
        len(tiles),
        len(todo),
        report.n_resumed,
        len(pending),
    )
    by_index = {t.index: t for t in tiles}

    bar = tqdm(
        total=len(pending),
        desc=f"mcf slide {reader.name}",
        unit="tile",
        disable=not progress,
        leave=True,
    )
    t_run = time.perf_counter()
    with open(manifest, "a", encoding="utf-8") as mf:

        def record(summary: dict[str, Any]) -> None:
            idx = int(summary["tile"])
            if idx in done:  # a result that arrived twice is recorded once
                return
            if summary.get("status") == "ok":
                mf.write(json.dumps(summary) + "\n")
                mf.flush()
                os.fsync(mf.fileno())
                done[idx] = summary
                report.n_processed += 1
                report.megapixels += summary["pixels"] / 1e6
            else:
                log.warning("tile %d %s: %s", idx, summary.get("status"), summary.get("error"))
                report.failed.append(summary)
            bar.update(1)
            if on_tile is not None:
                on_tile(summary)

        key = uuid.uuid4().hex[:12]
        job = Job(
            key=key,
            reader=reader,
            predictor=predictor,
            tiles_dir=str(tiles_dir),
            labels=str(label_array_path(out_dir / (LABELS + ".partial"))),
            overlay_step=max(1, math.ceil(max(reader.shape) / overlay_side)),
        )
        if workers == 0 and client is None and scheduler is None:
            report.workers = 0
            run_local(job, pending, record)
        elif pending:
            run_dask(
                job,
                pending,
                record,
                workers=workers,
                scheduler=scheduler,
                client=client,
                report=report,
            )
    bar.close()
    run_seconds = time.perf_counter() - t_run
    _remove_stale_parts(tiles_dir)  # no task of this run is running any more

    # -- assemble the vector outputs from the result files, in tile order ------------------
    assemble_outputs(
        reader,
        report,
        done,
        by_index,
        out_dir,
        tiles_dir,
        overlay_side=overlay_side,
        exports=exports,
        run_seconds=run_seconds,
        t_start=t_start,
    )
    if report.failed:
        log.warning("%d tile(s) failed; a re-run retries them", len(report.failed))
    return report
