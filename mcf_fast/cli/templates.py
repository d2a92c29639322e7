"""``mcf templates``: build, select and show template sets (see docs/formats.md)."""

from __future__ import annotations

from pathlib import Path

import click

from mcf_fast.cli.common import quiet_option


@click.group("templates")
def templates() -> None:
    """Build, select and show template sets (the few example nuclei)."""


@templates.command("select")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Dataset folder with images/ and masks/ (e.g. the MoNuSeg train split).",
)
@click.option(
    "--n",
    "n",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of templates.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="k-means seed.")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Template-set file to write (.json).",
)
@click.option(
    "--mpp",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Microns per pixel of the images, recorded in the set (models fitted on it "
    "resample slides and images to this scale).",
)
@quiet_option()
def select(data: str, n: int, seed: int, out: str, mpp: float | None, quiet: bool) -> None:
    """Choose N template nuclei from a dataset with masks, deterministically.

    k-means over per-nucleus colour (Lab of the mean RGB) and log area; the nucleus nearest
    each cluster centre, cropped square at twice its equivalent diameter (at least 16 px).
    The same data, N and SEED always give a byte-identical file.
    """
    from mcf_fast.detection.selection import select_templates

    ts = select_templates(data, n=n, seed=seed, progress=not quiet)
    _record_mpp(ts, mpp)
    ts.save(out)
    click.echo(
        f"{out}: {len(ts)} templates from {ts.meta['n_candidates']} candidate nuclei "
        f"in {ts.meta['n_images']} images (sizes {sorted(t.size for t in ts)})"
    )


@templates.command("from-points")
@click.option(
    "--image",
    "image",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The image the points lie in.",
)
@click.option(
    "--points",
    "points",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Nucleus centres: a CSV with a y,x header, or a QuPath GeoJSON export "
    "(points, or polygons whose centroids are used).",
)
@click.option(
    "--size",
    "size",
    required=True,
    type=click.IntRange(min=1),
    help="Side of each square crop in pixels.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Template-set file to write (.json).",
)
@click.option(
    "--name",
    "name",
    default=None,
    help="Image name recorded in the set [default: the image's file stem].",
)
@click.option(
    "--class",
    "class_name",
    default=None,
    metavar="NAME",
    help="GeoJSON: use only the objects of this QuPath classification "
    "(required when the export mixes classes).",
)
@click.option(
    "--mpp",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Microns per pixel of the images, recorded in the set (models fitted on it "
    "resample slides and images to this scale) [default: from the image's metadata].",
)
@click.option(
    "--regions",
    type=click.Choice(["error", "skip", "centroid"]),
    default="error",
    show_default=True,
    help="GeoJSON polygons larger than the template (tissue regions, not nuclei): "
    "refuse them, leave them out, or use their centroids.",
)
def from_points(
    image: str,
    points: str,
    size: int,
    out: str,
    name: str | None,
    class_name: str | None,
    regions: str,
    mpp: float | None,
) -> None:
    """Make a template set from points marked on one image.

    A QuPath GeoJSON export gives its points, and the centroids of polygons no larger than
    the template (nucleus outlines); objects of several classes need --class, and larger
    polygons (regions) are refused unless --regions says otherwise.  Near the image border
    the crops are completed by mirror reflection.
    """
    from mcf_fast.errors import InputError
    from mcf_fast.io.geojson import template_points
    from mcf_fast.io.images import read_image
    from mcf_fast.io.templates import TemplateSet, read_points

    img = read_image(image)
    if Path(points).suffix.lower() in (".geojson", ".json"):
        pts = template_points(points, class_name=class_name, max_area=size * size, regions=regions)
    elif class_name is not None:
        raise InputError(f"--class: {points} is a CSV; classes are read from QuPath GeoJSON")
    else:
        pts = read_points(points)
    ts = TemplateSet.from_points(img, pts, size=size, image_name=name or Path(image).stem)
    ts.meta["points"] = Path(points).name
    if class_name is not None:
        ts.meta["class"] = class_name
    if mpp is None:
        mpp = image_mpp(image)
    _record_mpp(ts, mpp)
    ts.save(out)
    click.echo(f"{out}: {len(ts)} templates of {size} px from {Path(points).name}")


def image_mpp(path: str | Path) -> float | None:
    """Microns per pixel from an image's metadata (TIFF resolution, slide properties)."""
    from mcf_fast.errors import McfError
    from mcf_fast.io.slides import open_slide

    try:
        return open_slide(path).mpp
    except McfError:
        return None


def _record_mpp(ts, mpp: float | None) -> None:
    if mpp is None:
        click.echo(
            "warning: the pixel size is unknown (no --mpp, none in the image); models fitted "
            "on this set cannot bring slides and images to its scale",
            err=True,
        )
    else:
        ts.meta["mpp"] = float(mpp)


@templates.command("show")
@click.argument("path", metavar="TEMPLATES", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Contact sheet to write (.png); without it only the list is printed.",
)
@click.option(
    "--cell",
    default=96,
    show_default=True,
    type=click.IntRange(min=8),
    help="Side in pixels of each crop on the sheet.",
)
@click.option(
    "--columns", default=5, show_default=True, type=click.IntRange(min=1), help="Crops per row."
)
def show(path: str, out: str | None, cell: int, columns: int) -> None:
    """List the templates of a set and optionally draw a contact sheet."""
    from mcf_fast.io.images import write_image
    from mcf_fast.io.templates import TemplateSet, contact_sheet

    ts = TemplateSet.load(path)
    click.echo(f"{path}: {len(ts)} templates")
    for i, t in enumerate(ts):
        click.echo(f"  #{i:<3d} {t.image}  y={t.y} x={t.x} size={t.size}")
    if out:
        write_image(out, contact_sheet(ts, cell=cell, columns=columns))
        click.echo(f"wrote {out}")
