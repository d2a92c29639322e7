"""``mcf fit`` and ``mcf predict``: fit the full framework, segment images with a model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import numpy as np

from mcf_fast.cli.common import (
    check_device,
    check_images,
    collect_images,
    device_option,
    gzip_option,
    injected,
    precision_option,
    quiet_option,
    raise_failures,
    run_batch,
    threads_option,
)
from mcf_fast.errors import InputError
from mcf_fast.io.images import read_image, write_image, write_labels
from mcf_fast.presets import PRESETS

__all__ = [
    "fit",
    "predict",
    "predict_rescaled",
    "prediction_table",
    "write_prediction",
]


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        if threads < 1:
            raise InputError(f"--threads: expected a positive number, got {threads}")
        torch.set_num_threads(threads)


@click.command("fit", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--templates",
    "-t",
    "templates_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Template-set JSON file (see `mcf templates`).",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model bundle to write (conventionally MODEL.mcf).",
)
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="quick",
    show_default=True,
    help="quick: minutes on a CPU; paper: the paper's settings (GPU advised).",
)
@device_option()
@click.option("--seed", type=int, default=None, help="Seed (default: the preset's, 0).")
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted fit from its checkpoint folder."
)
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where a checkpoint is written after each round [default: OUT.ckpt].",
)
@click.option("--max-rounds", type=int, default=None, help="Override the preset's rounds.")
@click.option(
    "--target",
    type=click.Choice(["binary", "distance"]),
    default=None,
    help="What the U-Net learns: the mask alone, or also each nucleus' distance map, whose "
    "peaks then seed the instances [default: the preset's].",
)
@click.option(
    "--stain-reference",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Normalise every image's stains to this reference image.",
)
@click.option(
    "--stain-method",
    type=click.Choice(["auto", "vahadane", "macenko"]),
    default="auto",
    show_default=True,
    help="Stain normalisation method.",
)
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Microns per pixel of IMAGES, recorded in the bundle [default: the template "
    "set's, else the first image's metadata].",
)
@threads_option()
@quiet_option(bars=True, short=True)
def fit(
    images,
    templates_path,
    out,
    preset,
    device,
    seed,
    resume,
    checkpoint_dir,
    max_rounds,
    target,
    stain_reference,
    stain_method,
    mpp,
    threads,
    quiet,
) -> None:
    """Fit the framework on IMAGES (files or folders) from a few template nuclei.

    Runs rounds of detection, U-Net training on the pseudo masks, self-finetuning and
    mask-residual templates, writing a checkpoint after each round, then saves the model
    bundle to OUT.  Masks next to the images are never read.
    """
    from mcf_fast.io.outputs import check_output_dir, check_output_file, lock_folder

    check_device(device)
    _set_threads(threads)
    paths = collect_images(images)
    check_output_file(out)
    check_images(paths)  # every bad file named at once, before anything is written
    ckpt = checkpoint_dir if checkpoint_dir is not None else out.with_name(out.name + ".ckpt")
    check_output_dir(ckpt, option="--checkpoint-dir")
    # held until the command ends: a second fit into the same checkpoint is refused
    click.get_current_context().with_resource(lock_folder(ckpt, option="--checkpoint-dir"))
    from mcf_fast.framework.fit import MCF
    from mcf_fast.io.templates import TemplateSet

    templates = TemplateSet.load(templates_path)
    if mpp is None:
        from mcf_fast.cli.templates import image_mpp

        mpp = templates.meta.get("mpp") or image_mpp(paths[0])
    if mpp is None:
        click.echo(
            "warning: the pixel size is unknown (give --mpp): slides and images will be "
            "processed at whatever scale they come in",
            err=True,
        )
    else:
        templates.meta["mpp"] = float(mpp)  # the bundle records it (templates.json, model.json)
    config = PRESETS[preset]
    changes = {"device": device}
    if seed is not None:
        changes["seed"] = seed
    if max_rounds is not None:
        changes["max_rounds"] = max_rounds
    if target == "distance":
        changes.update(target="distance", instance_seeds="shape")
    elif target == "binary" and config.segmentation.target != "binary":
        changes.update(target="binary", instance_seeds="hmaxima")
    config = dataclasses.replace(
        config, segmentation=dataclasses.replace(config.segmentation, **changes)
    )
    stain = None
    if stain_reference is not None:
        from mcf_fast.ops.stain import StainNormalizer

        stain = StainNormalizer(stain_method).fit(read_image(stain_reference))
    if resume and not (ckpt / "state.json").is_file():
        click.echo(f"no checkpoint in {ckpt}; starting from the beginning", err=True)
    click.echo(
        f"fitting on {len(paths)} image(s) with {len(templates)} templates "
        f"(preset {preset}, {device})",
        err=True,
    )
    model = MCF(config, detector_cls=injected("detector_cls")).fit(
        paths, templates, stain=stain, checkpoint_dir=ckpt, resume=resume, progress=not quiet
    )
    model.save(out)
    added = sum(len(h.get("added", [])) for h in model.history)
    click.echo(
        f"wrote {out}: {len(model.history)} round(s), {len(model.templates)} templates "
        f"({added} added by the mask residual)",
        err=True,
    )


def prediction_table(image: np.ndarray, pred, *, mpp: float | None = None) -> dict:
    """The nucleus table of a prediction, in the slide's schema (``nuclei.csv``).

    ``id`` is the nucleus' value in the label image; ``y, x`` are its centre (the centroid
    of its pixels), ``tile`` is 0.  Coordinates in pixel corners (see docs/formats.md).

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
        The image the prediction was made on.
    pred : Prediction
        From :meth:`~mcf_fast.framework.model.MCFModel.predict`.
    mpp : float, optional
        Microns per pixel of the image, for the µm columns (empty without it).

    Returns
    -------
    dict of ndarray
        As :func:`~mcf_fast.ops.measure.measure_nuclei`.
    """
    from mcf_fast.ops.measure import measure_nuclei

    labels = np.asarray(pred.labels)
    ids = np.unique(labels)
    ids = ids[ids > 0].astype(np.int64)
    compact = np.searchsorted(ids, labels) + 1
    compact[labels <= 0] = 0
    centres = np.asarray(pred.centres, np.float64).reshape(-1, 2)
    if len(centres) != len(ids):  # centres follow the table; recompute when they do not
        from mcf_fast.ops.instances import nucleus_table

        t = nucleus_table(labels)
        centres = np.stack([t["y"], t["x"]], axis=1) if len(t) else np.zeros((0, 2))
    prob = getattr(pred, "probability", None)
    if prob is not None and np.shape(prob) != labels.shape:
        prob = None
    return measure_nuclei(
        compact.astype(np.int32),
        np.asarray(image)[:, :, :3],
        ids=ids,
        centres=centres,
        origin=(0, 0),
        mpp=mpp,
        probability=prob,
    )


def write_prediction(
    out_dir: Path,
    name: str,
    image: np.ndarray,
    pred,
    *,
    mpp: float | None = None,
    gzip_geojson: bool = False,
) -> list[Path]:
    """Write the label image, ``<name>.csv``, ``<name>.geojson`` and ``<name>_overlay.png``.

    Labels go to a 16-bit ``<name>.png``; beyond 65535 nuclei to ``<name>.tif`` (32-bit)
    instead.  The CSV has the columns of a slide's ``nuclei.csv``
    (:data:`~mcf_fast.io.export.CSV_COLUMNS`) and the GeoJSON holds QuPath detections in
    the slide's schema (``<name>.geojson.gz`` with ``gzip_geojson``).
    """
    from skimage.segmentation import find_boundaries

    from mcf_fast.io.export import concat_csv, csv_fragment, iter_features, write_geojson

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = pred.labels
    table = prediction_table(image, pred, mpp=mpp)
    lpath = write_labels(out_dir / name, labels)
    cpath = out_dir / f"{name}.csv"
    concat_csv(cpath, [csv_fragment(0, table)])
    gpath = out_dir / (f"{name}.geojson.gz" if gzip_geojson else f"{name}.geojson")
    write_geojson(gpath, iter_features(table))
    overlay = np.array(image, copy=True)
    edge = find_boundaries(labels, mode="inner")
    overlay[edge] = (0, 255, 0)
    opath = write_image(out_dir / f"{name}_overlay.png", overlay)
    return [lpath, cpath, gpath, opath]


def _scale_to_model(model, mpp: float | None) -> float | None:
    """The resampling factor to the model's pixel size (None: none), with a message."""
    model_mpp = model.templates.meta.get("mpp")
    if model_mpp is None or mpp is None:
        which = "the model records no mpp" if model_mpp is None else "no --mpp"
        click.echo(
            f"warning: the scale is unknown ({which}): images are segmented at the scale "
            "they come in",
            err=True,
        )
        return None
    if abs(mpp / model_mpp - 1) <= 0.02:
        return None
    scale = mpp / model_mpp
    click.echo(
        f"images at {mpp:g} um/px, model at {model_mpp:g} um/px: resampling by {scale:.3g}",
        err=True,
    )
    return scale


def predict_rescaled(model, image: np.ndarray, scale: float):
    """``model.predict`` on the image resampled by ``scale``, results mapped back.

    Labels return to the image's grid by nearest neighbour, the probability bilinearly;
    centres are the centroids of the mapped labels.
    """
    from types import SimpleNamespace

    from skimage.transform import resize

    from mcf_fast.ops.instances import nucleus_table

    h, w = image.shape[:2]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = resize(image, size, order=1, preserve_range=True, anti_aliasing=scale < 1)
    pred = model.predict(np.clip(np.round(small), 0, 255).astype(np.uint8))
    labels = resize(
        np.asarray(pred.labels), (h, w), order=0, preserve_range=True, anti_aliasing=False
    ).astype(np.asarray(pred.labels).dtype)
    prob = resize(np.asarray(pred.probability, np.float32), (h, w), order=1, preserve_range=True)
    table = nucleus_table(labels, image)
    centres = np.stack([table["y"], table["x"]], axis=1) if len(table) else np.zeros((0, 2))
    return SimpleNamespace(
        labels=labels, probability=prob.astype(np.float32), centres=centres, table=table
    )


@click.command("predict", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--model",
    "-m",
    "model_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Model bundle written by `mcf fit`.",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder.",
)
@device_option()
@click.option(
    "--flips/--no-flips",
    default=None,
    help="Test-time flips (default: as the model was configured).",
)
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Microns per pixel of the images (the µm measurements; with a model that records "
    "its mpp, images are resampled to the model's scale and results mapped back).",
)
@precision_option()
@gzip_option("<name>")
@threads_option()
@click.option(
    "--resume",
    is_flag=True,
    help="Skip images whose outputs in --out are complete, from the same input and model.",
)
@quiet_option(short=True)
def predict(
    images, model_path, out, device, flips, mpp, precision, gzip_geojson, threads, resume, quiet
) -> None:
    """Segment IMAGES (files or folders) with a fitted model.

    For each image writes OUT/<name>.png (16-bit instance labels, 0 = background),
    OUT/<name>.csv (one row per nucleus: centre, area, perimeter, shape, colour, stain
    optical densities, mean probability; the columns of a slide's nuclei.csv),
    OUT/<name>.geojson (QuPath detections with outlines and the same measurements) and
    OUT/<name>_overlay.png (nucleus outlines on the image).  Coordinates in the CSV and
    GeoJSON have pixel corners on integers (QuPath's convention).  Each image's files
    appear together once all are written.  An image that cannot be read is reported and
    the others are processed; the command then exits with status 1, naming every bad file.
    """
    from mcf_fast.framework.model import MCFModel
    from mcf_fast.io.outputs import OutputFolder, file_digest

    check_device(device)
    _set_threads(threads)
    paths = collect_images(images)
    settings = {
        "command": "predict",
        "model": file_digest(model_path),
        "flips": flips,
        "mpp": mpp,
        "precision": precision,
        "gzip": gzip_geojson,
    }
    with OutputFolder(out, settings=settings) as folder:
        model = MCFModel.load(model_path, device=device, detector_cls=injected("detector_cls"))
        changes = {"tta_flips": flips, "precision": precision}
        changes = {k: v for k, v in changes.items() if v is not None}
        if changes:
            seg = dataclasses.replace(model.config.segmentation, **changes)
            model.config = dataclasses.replace(model.config, segmentation=seg)
        scale = _scale_to_model(model, mpp)
        total, skipped = 0, 0

        def one(p: Path) -> None:
            nonlocal total, skipped
            if resume and folder.is_done(p.stem, p):
                skipped += 1
                return
            image = read_image(p)
            pred = model.predict(image) if scale is None else predict_rescaled(model, image, scale)
            folder.write_set(
                p.stem,
                p,
                lambda d: write_prediction(
                    d, p.stem, image, pred, mpp=mpp, gzip_geojson=gzip_geojson
                ),
            )
            total += len(pred.table)

        failed = run_batch(paths, one, desc="predict", quiet=quiet)
    resumed = f", {skipped} already done" if skipped else ""
    click.echo(
        f"wrote {len(paths) - len(failed) - skipped} prediction(s) to {out} "
        f"({total} nuclei{resumed})",
        err=True,
    )
    raise_failures(failed, len(paths))
