"""``mcf score``: score predictions made by any method against instance masks."""

from __future__ import annotations

import json
import warnings

import click

from mcf_fast.cli.common import quiet_option


def _radii(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        radii = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
    if not radii or any(r <= 0 for r in radii):
        raise click.BadParameter(f"expected positive radii, got {value!r}")
    return radii


@click.command("score")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Dataset folder with images/ and masks/ (the ground truth).",
)
@click.option(
    "--pred",
    "pred",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of predictions: <name>.png or .tif (instance labels or a binary "
    "mask) and optionally <name>.csv (centres, y,x header).",
)
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the results (aggregate and per image) as JSON here.",
)
@click.option(
    "--radii",
    default="6,12",
    show_default=True,
    callback=_radii,
    help="Detection matching radii in pixels, comma-separated.",
)
@click.option("--aggregate-only", is_flag=True, help="Print only the aggregate row.")
@quiet_option()
def score(
    data: str,
    pred: str,
    out: str | None,
    radii: tuple[float, ...],
    aggregate_only: bool,
    quiet: bool,
) -> None:
    """Score the predictions in PRED against the masks of DATA.

    Prints a Markdown table (one row per image, then the aggregate over the dataset:
    summed confusion matrices, matches and AJI intersections/unions).  A missing label
    image is scored as empty for segmentation, with a warning that says where the
    detection's centres come from (<name>.csv, or nowhere); a last line says what was
    scored.  Two label images for one name (<name>.png and <name>.tif) are an error.
    """
    from mcf_fast.io.images import atomic_path
    from mcf_fast.io.outputs import check_output_file
    from mcf_fast.metrics import describe_sources, markdown_table, score_folder

    if out:
        check_output_file(out)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = score_folder(data, pred, radii=radii, progress=not quiet)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    click.echo(markdown_table(result, per_image=not aggregate_only))
    click.echo(describe_sources(result), err=True)
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        click.echo(f"wrote {out}", err=True)
