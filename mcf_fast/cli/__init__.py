"""The ``mcf`` command line.

Each subcommand lives in its own module of this package and is imported only when it runs,
so ``mcf --help`` does not pay for torch or dask.  Exit codes: 0 success, 1 an mcf_fast
error (bad input, bad config, some images of a batch could not be processed) or a file
system error (disk full, read-only, no permission), 2 a usage error, 130 interrupted.
Errors are one line on stderr naming the file, never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import sys

import click

from mcf_fast import __version__
from mcf_fast.errors import McfError

#: command name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "templates": ("mcf_fast.cli.templates", "templates", "Build, select and show template sets."),
    "score": ("mcf_fast.cli.score", "score", "Score predictions against instance masks."),
    "detect": ("mcf_fast.cli.detect", "detect", "Detect nuclei with the filter bank."),
    "demo": ("mcf_fast.cli.demo", "demo", "Run the whole job on a built-in example image."),
    "fit": ("mcf_fast.cli.seg", "fit", "Fit the full framework on images and templates."),
    "predict": ("mcf_fast.cli.seg", "predict", "Segment images with a fitted model."),
    "evaluate": ("mcf_fast.cli.evaluate", "evaluate", "Reproduce the paper's evaluation."),
    "slide": ("mcf_fast.cli.slide", "slide", "Run on a whole slide with dask."),
    "warmup": ("mcf_fast.cli.warmup", "warmup", "Compile the numba kernels once after installing."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name][0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not self._available(cmd_name):
            return None
        module, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcf")
def cli() -> None:
    """mcf: few-shot nuclei detection and segmentation (Mutual-Complementing Framework)."""


def main(argv: list[str] | None = None, *, obj: dict | None = None) -> int:
    """Entry point of the ``mcf`` console script.

    `obj` hands objects to the commands (see :func:`mcf_fast.cli.common.injected`).
    """
    try:
        cli.main(args=argv, prog_name="mcf", standalone_mode=False, obj=obj)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except McfError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except OSError as exc:  # the file system refused a read or a write
        click.echo(f"error: {os_error_message(exc)}", err=True)
        return 1
    return 0


_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission",
    errno.EDQUOT: "the disk quota is exceeded",
}


def os_error_message(exc: OSError) -> str:
    """One line for a file-system error: the file, what failed, and what it means."""
    what = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{what}" + (f" ({hint})" if hint else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
