"""What the per-image commands share: listing inputs, checking them, running a batch.

A batch (``mcf detect``, ``mcf predict``) processes every image it can: an image that
cannot be read or processed (an :class:`~mcf_fast.errors.McfError`) is reported by name and
the batch goes on; at the end the command exits with status 1, listing every bad file.
Other errors (a full disk, a bug) stop the batch at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from mcf_fast._validate import cuda_missing, is_device
from mcf_fast.config import PRECISIONS
from mcf_fast.errors import InputError, McfError
from mcf_fast.io.images import IMAGE_SUFFIXES

__all__ = [
    "BatchError",
    "check_device",
    "check_images",
    "collect_images",
    "device_option",
    "gzip_option",
    "injected",
    "quiet_option",
    "raise_failures",
    "run_batch",
    "threads_option",
]


class BatchError(McfError):
    """Some images of a batch could not be processed; the others were."""


# ---------------------------------------------------------------------- shared options
def device_option(help: str = "cpu, cuda or cuda:N."):
    """``--device`` (default cpu)."""
    return click.option("--device", default="cpu", show_default=True, help=help)


def precision_option():
    """``--precision``: the arithmetic of the U-Net (default: as the model was configured)."""
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default=None,
        help="Arithmetic of the U-Net: float32, bfloat16, or auto (bfloat16 where the CPU "
        "or GPU computes it natively) [default: as the model was configured].",
    )


def quiet_option(*, bars: bool = False, short: bool = False):
    """``--quiet`` (``-q`` too with `short`): no progress bar (`bars`: bars)."""
    names = ("--quiet", "-q") if short else ("--quiet",)
    return click.option(*names, is_flag=True, help=f"No progress bar{'s' if bars else ''}.")


def threads_option():
    """``--threads``: CPU threads for torch."""
    return click.option("--threads", type=int, default=None, help="CPU threads for torch.")


def gzip_option(name: str):
    """``--gzip``: write ``<name>.geojson.gz``."""
    return click.option(
        "--gzip", "gzip_geojson", is_flag=True, help=f"Write {name}.geojson.gz (gzip)."
    )


def check_device(device: str) -> None:
    """Refuse a ``--device`` that is not cpu / cuda[:N], or a CUDA device this machine lacks.

    Raises
    ------
    InputError
    """
    if not is_device(device):
        raise InputError(f"--device {device}: expected cpu, cuda or cuda:N")
    if cuda_missing(device):
        raise InputError(f"--device {device}: no CUDA device is available here")


def injected(name: str) -> Any:
    """An object handed to the commands by the caller of :func:`mcf_fast.cli.main`.

    ``main(argv, obj={"detector_cls": cls})`` makes ``mcf fit`` and ``mcf predict`` build
    their detector from ``cls`` (an embedding program's detector, or a test's stand-in);
    None when nothing was given.
    """
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj.get(name) if isinstance(obj, dict) else None


def _is_image(f: Path) -> bool:
    # hidden files include the ``._name`` resource forks macOS leaves on shared drives
    return f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files from files and folders (a folder with ``images/`` uses that subfolder).

    Hidden files (names starting with ``.``, such as macOS's ``._*``) in folders are
    skipped.  Two inputs with the same stem would write the same output files, so they
    are refused.

    Raises
    ------
    InputError
        If a folder holds no images, a path does not exist, two images share a stem, or
        nothing is found at all.
    """
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            folder = p / "images" if (p / "images").is_dir() else p
            found = sorted(f for f in folder.iterdir() if _is_image(f))
            if not found:
                raise InputError(f"{folder}: no images (suffixes {', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not out:
        raise InputError("no input images")
    by_stem: dict[str, list[Path]] = {}
    for f in out:
        by_stem.setdefault(f.stem, []).append(f)
    dup = {s: fs for s, fs in by_stem.items() if len(fs) > 1}
    if dup:
        stem, files = sorted(dup.items())[0]
        raise InputError(
            f"{len(dup)} name(s) used by more than one input image, e.g. {stem!r}: "
            f"{', '.join(map(str, files))}; their outputs would overwrite each other "
            "(rename or move one)"
        )
    return out


def check_images(files: list[Path]) -> None:
    """Read every image once and refuse the list if any is bad, naming all bad files.

    Raises
    ------
    InputError
        One line per unreadable image.
    """
    from mcf_fast.io.images import read_image

    bad = []
    for f in files:
        try:
            read_image(f)
        except McfError as exc:
            bad.append(str(exc))
    if bad:
        raise InputError(
            f"{len(bad)} of {len(files)} input image(s) cannot be used:\n  " + "\n  ".join(bad)
        )


def run_batch(
    files: list[Path],
    process: Callable[[Path], None],
    *,
    desc: str,
    quiet: bool,
) -> list[str]:
    """Call ``process(file)`` on each file; an McfError is reported and the rest go on.

    Returns
    -------
    list of str
        The messages of the files that failed (each names its file).
    """
    import sys

    from tqdm.auto import tqdm

    failed: list[str] = []
    for f in tqdm(files, desc=desc, unit="image", disable=quiet, file=sys.stderr):
        try:
            process(f)
        except McfError as exc:
            msg = str(exc) if str(f) in str(exc) else f"{f}: {exc}"
            failed.append(msg)
            tqdm.write(f"error: {msg}", file=sys.stderr)
    return failed


def raise_failures(failed: list[str], n: int) -> None:
    """Exit with an error listing every failed file, if any failed."""
    if failed:
        others = " (the others were)" if len(failed) < n else ""
        raise BatchError(
            f"{len(failed)} of {n} image(s) could not be processed{others}:\n  "
            + "\n  ".join(failed)
        )
