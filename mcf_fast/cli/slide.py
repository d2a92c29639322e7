"""``mcf slide``: detect and segment the nuclei of a whole slide on dask."""

from __future__ import annotations

from pathlib import Path

import click

from mcf_fast.cli.common import gzip_option, quiet_option
from mcf_fast.errors import McfError


def _to_model_scale(reader, model: str):
    """The reader resampled to the pixel size the model records (a warning when unknown)."""
    if model == "blob":
        return reader
    from mcf_fast.io.slides import ScaledReader

    if Path(model).suffix.lower() == ".json":
        from mcf_fast.io.templates import TemplateSet

        model_mpp = TemplateSet.load(model).meta.get("mpp")
    else:
        from mcf_fast.framework.model import bundle_mpp

        model_mpp = bundle_mpp(model)
    if model_mpp is None or reader.mpp is None:
        which = "the model records no mpp" if model_mpp is None else "the slide has no mpp"
        click.echo(
            f"warning: the scale is unknown ({which}; --mpp gives the slide's): the model "
            "sees the pixels of --level as they are",
            err=True,
        )
        return reader
    scale = reader.mpp / float(model_mpp)
    if abs(scale - 1) <= 0.02:
        return reader
    click.echo(
        f"{reader.name}: level at {reader.mpp:g} um/px, model at {model_mpp:g} um/px: "
        f"resampling by {scale:.3g}; outputs stay in level-0 coordinates",
        err=True,
    )
    return ScaledReader(reader, scale)


@click.command("slide")
@click.argument("slide_path", metavar="SLIDE", type=click.Path(exists=True))
@click.option(
    "--model",
    "model",
    required=True,
    metavar="MODEL_OR_TEMPLATES",
    help="A model bundle from `mcf fit`, a template-set .json (the detector "
    "alone), or `blob` (a classical stand-in to test a setup).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder; re-running into it resumes and skips finished tiles.",
)
@click.option(
    "--tile",
    default=1024,
    show_default=True,
    type=click.IntRange(min=16),
    help="Tile core side in pixels (also the Zarr chunk side).",
)
@click.option(
    "--margin",
    default=None,
    type=click.IntRange(min=0),
    help="Halo in pixels around each tile [default: the model's reach plus the largest nucleus].",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=0),
    help="Worker processes of the local dask cluster [default: one per CPU]; "
    "0 runs in this process without dask.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Use a running dask scheduler (e.g. tcp://host:8786) instead of a local "
    "cluster; the model path must be readable by its workers.",
)
@click.option(
    "--mpp",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Microns per pixel at level 0, overriding the slide's metadata.",
)
@click.option(
    "--level",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Pyramid level to process.",
)
@click.option(
    "--all-tiles", is_flag=True, help="Process every tile, not only those the tissue mask keeps."
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "tiffslide", "openslide"]),
    help="Whole-slide reader.",
)
@click.option(
    "--detector-only",
    is_flag=True,
    help="With a template set as --model: run the filter-bank detector anyway "
    "(see docs/slides.md: its nucleus masks on slides are unreliable).",
)
@click.option(
    "--parquet", is_flag=True, help="Also write nuclei.parquet (the table; needs pyarrow)."
)
@gzip_option("nuclei")
@quiet_option()
def slide(
    slide_path: str,
    model: str,
    out: str,
    tile: int,
    margin: int | None,
    workers: int | None,
    scheduler: str | None,
    mpp: float | None,
    level: int,
    all_tiles: bool,
    backend: str,
    detector_only: bool,
    parquet: bool,
    gzip_geojson: bool,
    quiet: bool,
) -> None:
    """Find and outline the nuclei of a whole SLIDE, tile by tile, on dask.

    Writes to OUT: labels.zarr (instance labels, an OME-Zarr label pyramid),
    nuclei.geojson (QuPath detections with outlines and measurements), nuclei.csv (one row
    per nucleus),
    overlay.png (downsampled), report.json and run.log.  Tiles that cannot be read are
    reported and the command exits with status 1 after finishing the others; run it again
    to retry them.
    """
    from mcf_fast.io.slides import open_slide
    from mcf_fast.slide.predictors import PredictorSpec
    from mcf_fast.slide.run import run_slide

    if model != "blob" and Path(model).suffix.lower() == ".json" and not detector_only:
        raise McfError(
            f"--model {model}: a template set alone does not segment whole slides reliably "
            "(the detector's nucleus masks depend on a per-image normalisation that a slide "
            "cannot share: on a test slide it labelled 5.6% of the tissue where `mcf detect` "
            "labels 22%); fit a model on a few tiles first:\n"
            f"  mcf fit TILES --templates {model} --out model.mcf\n"
            f"  mcf slide {slide_path} --model model.mcf --out {out}\n"
            "or pass --detector-only to run the detector anyway"
        )
    reader = open_slide(slide_path, level=level, mpp=mpp, backend=backend)
    reader = _to_model_scale(reader, model)
    source = model if model == "blob" else str(Path(model).resolve())
    report = run_slide(
        reader,
        PredictorSpec(source),
        out,
        tile=tile,
        margin=margin,
        level=level,
        workers=workers,
        scheduler=scheduler,
        skip_background=not all_tiles,
        progress=not quiet,
        parquet=parquet,
        gzip_geojson=gzip_geojson,
    )
    click.echo(
        f"{report.slide}: {report.n_nuclei} nuclei in {report.n_tissue} tissue tiles of "
        f"{report.n_tiles} ({report.n_processed} run now, {report.n_resumed} resumed); "
        f"{report.megapixels:.1f} Mpx in {report.seconds:.1f} s "
        f"({report.megapixels_per_second:.2f} Mpx/s) -> {out}",
        err=True,
    )
    if report.failed:
        listed = ", ".join(str(f["tile"]) for f in report.failed[:10])
        raise McfError(
            f"{len(report.failed)} tile(s) could not be processed ({listed}"
            f"{'...' if len(report.failed) > 10 else ''}); see {out}/report.json "
            "and run.log; run the command again to retry them"
        )
