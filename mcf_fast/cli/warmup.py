"""``mcf warmup``: compile the numba kernels once after installing."""

from __future__ import annotations

import click


@click.command("warmup")
def warmup() -> None:
    """Compile the numba kernels ahead of the first run (they are cached on disk).

    A fresh install compiles every kernel on its first detection or prediction; this runs
    them once on a small synthetic tile so that later runs load them from numba's cache.
    """
    from mcf_fast.pipeline.warmup import warm_up

    seconds = warm_up()
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    click.echo(f"kernels ready ({parts})")
