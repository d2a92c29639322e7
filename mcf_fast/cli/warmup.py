"""``mcf warmup``: compile the numba kernels (and plan the FFTs) once after installing."""

from __future__ import annotations

import click


@click.command("warmup")
@click.option(
    "--templates",
    "templates",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Template-set JSON: also plan the FFTs of its detector (kept as FFTW wisdom).",
)
@click.option(
    "--tile",
    default=1000,
    show_default=True,
    type=click.IntRange(min=16),
    help="Side of the tiles to be processed (with --templates).",
)
def warmup(templates: str | None, tile: int) -> None:
    """Compile the numba kernels ahead of the first run (they are cached on disk).

    A fresh install compiles every kernel on its first detection or prediction; this runs
    them once on a small synthetic tile so that later runs load them from numba's cache.
    With --templates, the detector of that template set also runs once on a synthetic
    tile of --tile pixels, so that its FFT plans are in the wisdom file.
    """
    from mcf_fast.detection.warmup import warm_up

    tset = None
    if templates is not None:
        from mcf_fast.io.templates import TemplateSet

        tset = TemplateSet.load(templates)
    seconds = warm_up(tset, tile=tile)
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    click.echo(f"kernels ready ({parts})")
