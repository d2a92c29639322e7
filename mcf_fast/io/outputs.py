"""Output folders: checked before any work, held by one run at a time, filled set by set.

A command that writes per-image outputs (``mcf detect``, ``mcf predict``) opens its
``--out`` folder as an :class:`OutputFolder`:

- the folder is checked before anything is computed: a path below a regular file, a folder
  that cannot be written (permissions, a read-only file system) is an
  :class:`~mcf_fast.errors.InputError` naming the path;
- it is locked (``.mcf/lock``, an advisory ``flock``), so a second run into the same
  folder is refused while the first one runs, instead of mixing both runs' files;
- each image's files are written into a staging folder inside it (``.mcf/staging/``) and
  renamed to their final names only when all of them are complete
  (:meth:`OutputFolder.write_set`); then a small record ``.mcf/<name>.json`` notes
  which files the set holds, for which input file (size and modification time) and which
  run settings.  :meth:`OutputFolder.is_done` reads it back, so a rerun with
  ``--resume`` skips the images whose set is finished.

Staging folders left by an interrupted run are removed when the folder is next opened
(under the lock, so no run is writing them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcf_fast.errors import InputError
from mcf_fast.io.images import atomic_path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: folders are not locked
    fcntl = None

__all__ = [
    "LOCK_NAME",
    "STATE_DIR",
    "OutputFolder",
    "check_output_dir",
    "check_output_file",
    "file_digest",
    "lock_folder",
]

#: the hidden folder that holds a run's lock and its records of finished sets
STATE_DIR = ".mcf"
LOCK_NAME = f"{STATE_DIR}/lock"
_STAGING = f"{STATE_DIR}/staging"


def _first_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """Make sure `path` is (or can become) a folder this process can write, and create it.

    Raises
    ------
    InputError
        If a part of `path` is a regular file, or the folder cannot be created or written
        (no permission, read-only file system); the message names `option` and the path.
    """
    p = Path(path)
    base = _first_existing(p)
    if not base.is_dir():
        raise InputError(f"{option} {p}: {base} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mcf-write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{option} {p}: cannot write there ({exc.strerror or exc})") from exc
    return p


def check_output_file(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """Make sure a file can be written at `path` (its folder exists or can be made).

    Raises
    ------
    InputError
        If `path` is a folder, or its folder cannot be created or written.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} {p}: is a folder; expected a file name")
    check_output_dir(p.parent if str(p.parent) else Path("."), option=option)
    return p


@contextlib.contextmanager
def lock_folder(path: str | os.PathLike, *, option: str = "--out"):
    """Hold an exclusive lock on the folder `path` for the duration of the block.

    The lock is an advisory ``flock`` on ``path/.mcf/lock``; the operating system releases
    it when the process ends, however it ends, so a crashed run never leaves a stale lock.

    Raises
    ------
    InputError
        If another process holds the lock.
    """
    p = Path(path)
    if fcntl is None:  # pragma: no cover
        yield p
        return
    (p / STATE_DIR).mkdir(parents=True, exist_ok=True)
    fh = open(p / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise InputError(
                f"{option} {p}: in use by another mcf run (process {holder}); wait for it "
                "to finish or choose another folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield p
    finally:
        fh.close()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_id(source: Path) -> dict[str, Any]:
    st = source.stat()
    return {"path": str(source.absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class OutputFolder:
    """A per-image output folder held by one run (see the module docstring).

    Parameters
    ----------
    path : path-like
        The folder (created if needed).
    settings : dict
        What makes two runs' outputs the same (the model's digest, options); stored with
        each finished set and compared by :meth:`is_done`.
    option : str
        How to name the folder in error messages.

    Examples
    --------
    >>> with OutputFolder(tmp, settings={"model": "abc"}) as out:  # doctest: +SKIP
    ...     out.write_set("a", source, lambda d: [write_image(d / "a.png", img)])
    """

    def __init__(
        self, path: str | os.PathLike, *, settings: dict[str, Any], option: str = "--out"
    ) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))
        self.option = option
        self._lock: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> OutputFolder:
        check_output_dir(self.path, option=self.option)
        self._lock = lock_folder(self.path, option=self.option)
        self._lock.__enter__()
        # sets an interrupted run left half-written; no other run can be writing them now
        shutil.rmtree(self.path / _STAGING, ignore_errors=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.__exit__(*exc)
            self._lock = None

    def _record(self, name: str) -> Path:
        return self.path / STATE_DIR / f"{name}.json"

    def is_done(self, name: str, source: str | os.PathLike) -> bool:
        """Whether `name`'s set is complete, from `source` as it is now, with these settings."""
        try:
            rec = json.loads(self._record(name).read_text(encoding="utf-8"))
            return (
                rec["source"] == _source_id(Path(source))
                and rec["settings"] == self.settings
                and all((self.path / f).is_file() for f in rec["files"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def write_set(
        self, name: str, source: str | os.PathLike, write: Callable[[Path], list[Path]]
    ) -> list[Path]:
        """Write one image's files so that they appear together, complete.

        Parameters
        ----------
        name : str
            The image's name (the stem of its files).
        source : path-like
            The input file the set was computed from.
        write : callable
            ``write(folder) -> paths``: writes the set's files into `folder` (a staging
            folder) under their final names and returns their paths.

        Returns
        -------
        list of Path
            The final paths, in the output folder.
        """
        try:
            before = json.loads(self._record(name).read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            before = []
        self._record(name).unlink(missing_ok=True)
        (self.path / _STAGING).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=self.path / _STAGING))
        try:
            written = write(staging)
            final = []
            for f in written:
                target = self.path / Path(f).name
                os.replace(f, target)
                final.append(target)
            for old in set(before) - {f.name for f in final}:  # e.g. .tif labels now .png
                if isinstance(old, str) and Path(old).name == old:
                    (self.path / old).unlink(missing_ok=True)
            with atomic_path(self._record(name)) as tmp:
                doc = {
                    "source": _source_id(Path(source)),
                    "settings": self.settings,
                    "files": [f.name for f in final],
                }
                tmp.write_text(json.dumps(doc), encoding="utf-8")
            return final
        finally:
            shutil.rmtree(staging, ignore_errors=True)
