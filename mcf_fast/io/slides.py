"""Whole-slide and in-memory image readers behind one interface.

Every reader is a :class:`SlideReader`: it has a ``shape`` (rows, columns at the level it
reads), the microns per pixel ``mpp`` at that level when known, and ``read_region(y, x, h, w)``
that returns (h, w, 3) uint8 RGB clipped to the image (asking for pixels outside it is an
error: tiling clips its read regions, so the pixels a tile sees near the slide border are the
pixels the whole image has there).

Backends, chosen by :func:`open_slide`:

- :class:`TiffSlideReader`: SVS and generic pyramidal TIFF through ``tiffslide`` (the default
  for ``.svs``, ``.tif``, ``.tiff``, ``.ndpi``, ``.scn``, ``.bif``);
- :class:`OpenSlideReader`: any format OpenSlide reads (``backend="openslide"``; the optional
  ``[openslide]`` extra);
- :class:`ArrayReader`: a numpy array, a zarr array or anything with ``shape`` and 2-D slicing;
  plain PNG/JPEG/TIFF tiles are read whole into one.

Coordinates are always (y, x) in pixels of the chosen pyramid level; ``downsample`` converts
them to level-0 pixels (what QuPath and the slide's other tools use).

Readers pickle as their description (path, level, mpp), not as open file handles, so dask
workers reopen the file themselves.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import FormatError, InputError
from mcf_fast.io.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS_ENV,
    as_rgb_uint8,
    max_pixels,
    read_image,
)

__all__ = [
    "SLIDE_SUFFIXES",
    "SlideReader",
    "ArrayReader",
    "TiffSlideReader",
    "OpenSlideReader",
    "TissueMask",
    "open_slide",
    "tissue_mask",
]

#: suffixes read through tiffslide (or OpenSlide when asked)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".vms", ".vmu", ".mrxs")


class SlideReader:
    """The interface every reader implements (see the module docstring).

    Attributes
    ----------
    shape : tuple of int
        (rows, columns) at the level this reader reads.
    mpp : float or None
        Microns per pixel at that level, or None when unknown.
    downsample : float
        Level-0 pixels per pixel of this level (1.0 for level 0 and for arrays).
    name : str
        A name for messages and outputs (the file name, or ``"array"``).
    """

    shape: tuple[int, int]
    mpp: float | None
    downsample: float = 1.0
    name: str = "slide"

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Read the pixels ``[y:y+h, x:x+w]`` as C-contiguous (h, w, 3) uint8 RGB.

        Raises
        ------
        InputError
            If the region is empty or reaches outside the image.
        """
        self._check_region(y, x, h, w)
        return self._read(int(y), int(x), int(h), int(w))

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """A small RGB picture of the whole image and its scale.

        Returns
        -------
        image : ndarray, shape (h, w, 3), uint8
            With ``max(h, w) <= max_side``.
        scale : float
            Pixels of this reader's level per thumbnail pixel (>= 1).
        """
        if max_side < 1:
            raise InputError(f"thumbnail: max_side must be positive, got {max_side}")
        step = max(1, math.ceil(max(self.shape) / max_side))
        return self._thumbnail(step), float(step)

    def close(self) -> None:
        """Release open files (a later read reopens them)."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- to implement ---------------------------------------------------------------------
    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _thumbnail(self, step: int) -> np.ndarray:
        """Subsample by ``step`` (readers with pyramids override this with a cheaper path)."""
        rows = []
        band = max(step, (2048 // step) * step)
        for y0 in range(0, self.shape[0], band):
            h = min(band, self.shape[0] - y0)
            rows.append(
                _read_robust(self._read, y0, 0, h, self.shape[1], name=self.name)[::step, ::step]
            )
        return np.ascontiguousarray(np.concatenate(rows, axis=0))

    # -- helpers --------------------------------------------------------------------------
    def _check_region(self, y: int, x: int, h: int, w: int) -> None:
        H, W = self.shape
        if h < 1 or w < 1 or y < 0 or x < 0 or y + h > H or x + w > W:
            raise InputError(
                f"{self.name}: region y={y}, x={x}, h={h}, w={w} is empty or outside the "
                f"image of shape {H}x{W}"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, shape={self.shape}, mpp={self.mpp}, "
            f"downsample={self.downsample})"
        )


class ArrayReader(SlideReader):
    """A reader over an in-memory or chunked array (numpy, zarr, dask, memmap).

    Parameters
    ----------
    array : array-like, shape (H, W), (H, W, 3) or (H, W, 4)
        Anything with ``shape``, ``ndim`` and 2-D slicing; each region is converted with
        :func:`~mcf_fast.io.images.as_rgb_uint8`.
    mpp : float, optional
        Microns per pixel, if known.
    name : str
        Name used in messages.

    Raises
    ------
    InputError
        If the array is not 2-D or 3-D with 1, 3 or 4 channels, or `mpp` is not positive.
    """

    def __init__(self, array: Any, *, mpp: float | None = None, name: str = "array") -> None:
        shape = tuple(int(s) for s in getattr(array, "shape", ()))
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
            raise InputError(f"{name}: expected an (H, W[, 3|4]) array, got shape {shape}")
        if shape[0] < 1 or shape[1] < 1:
            raise InputError(f"{name}: empty array of shape {shape}")
        self.array = array
        self.shape = (shape[0], shape[1])
        self.mpp = _check_mpp(mpp, name)
        self.name = name

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return as_rgb_uint8(np.asarray(self.array[y : y + h, x : x + w]), name=self.name)


class TiffSlideReader(SlideReader):
    """A pyramidal TIFF / SVS slide read through ``tiffslide``.

    Parameters
    ----------
    path : path-like
        The slide file.
    level : int
        Pyramid level to read (0 = full resolution).
    mpp : float, optional
        Microns per pixel at level 0, overriding the file's metadata.

    Raises
    ------
    InputError
        If the file does not exist or the level is out of range.
    FormatError
        If tiffslide cannot open the file.
    """

    _backend = "tiffslide"

    def __init__(
        self, path: str | os.PathLike, *, level: int = 0, mpp: float | None = None
    ) -> None:
        self.path = Path(path).absolute()
        self.level = level
        self._mpp_override = _check_mpp(mpp, str(self.path))
        self.name = self.path.name
        self._slide = None
        slide = self._open()
        n = slide.level_count
        if not isinstance(level, int) or not 0 <= level < n:
            raise InputError(
                f"{self.path}: level {level!r} does not exist (the slide has "
                f"{n} level(s), 0..{n - 1})"
            )
        w, h = slide.level_dimensions[level]
        self.shape = (int(h), int(w))
        self.downsample = float(slide.level_downsamples[level])
        base = self._mpp_override if self._mpp_override is not None else self._file_mpp(slide)
        self.mpp = None if base is None else base * self.downsample

    # -- file handling ----------------------------------------------------------------------
    def _open(self):
        if self._slide is None:
            if not self.path.is_file():
                raise InputError(f"{self.path}: no such file")
            try:
                self._slide = self._open_backend()
            except InputError:
                raise
            except Exception as exc:  # backends raise many types for unreadable files
                raise FormatError(
                    f"{self.path}: not a slide {self._backend} can open "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        return self._slide

    def _open_backend(self):
        import tiffslide

        return tiffslide.TiffSlide(self.path)

    @staticmethod
    def _file_mpp(slide) -> float | None:
        props = slide.properties
        for key in ("tiffslide.mpp-x", "openslide.mpp-x", "aperio.MPP"):
            value = props.get(key)
            if value not in (None, ""):
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    continue
                if v > 0 and math.isfinite(v):
                    return v
        return None

    def close(self) -> None:
        slide, self._slide = self._slide, None
        if slide is not None:
            slide.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: S110 - interpreter shutdown; nothing left to release
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_slide"] = None
        return state

    # -- reading ----------------------------------------------------------------------------
    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        slide = self._open()
        ds = self.downsample
        loc = (int(round(x * ds)), int(round(y * ds)))
        region = slide.read_region(loc, self.level, (w, h), as_array=True)
        return as_rgb_uint8(np.asarray(region), name=self.name)

    def _thumbnail(self, step: int) -> np.ndarray:
        slide = self._open()
        # the coarsest level that is still at least as fine as the thumbnail
        want = self.downsample * step
        best = self.level
        for lvl, d in enumerate(slide.level_downsamples):
            if lvl >= self.level and d <= want * 1.0001:
                best = lvl
        if best == self.level:
            return super()._thumbnail(step)
        w, h = (int(v) for v in slide.level_dimensions[best])
        f = slide.level_downsamples[best] / self.downsample
        out_h = math.ceil(self.shape[0] / step)
        out_w = math.ceil(self.shape[1] / step)
        rows = np.minimum((np.arange(out_h) * step / f).astype(np.int64), h - 1)
        cols = np.minimum((np.arange(out_w) * step / f).astype(np.int64), w - 1)
        out = np.empty((out_h, out_w, 3), np.uint8)
        band = 2048  # rows of level `best` read at a time, so memory stays bounded
        scale0 = slide.level_downsamples[best]
        for b0 in range(0, h, band):
            sel = np.nonzero((rows >= b0) & (rows < b0 + band))[0]
            if sel.size == 0:
                continue
            bh = min(band, h - b0)

            def read_best(y: int, x: int, hh: int, ww: int) -> np.ndarray:
                loc = (int(round(x * scale0)), int(round(y * scale0)))
                region = slide.read_region(loc, best, (ww, hh), as_array=True)  # noqa: B023
                return as_rgb_uint8(np.asarray(region), name=self.name)

            region = _read_robust(read_best, b0, 0, bh, w, name=self.name)
            out[sel] = region[rows[sel] - b0][:, cols]
        return out


class OpenSlideReader(TiffSlideReader):
    """Like :class:`TiffSlideReader`, through OpenSlide (the optional ``[openslide]`` extra).

    Raises
    ------
    InputError
        If openslide-python is not installed.
    """

    _backend = "openslide"

    def _open_backend(self):
        try:
            import openslide
        except ImportError as exc:
            raise InputError(
                f"{self.path}: backend 'openslide' needs openslide-python "
                "(pip install 'mcf-fast[openslide]'); or use backend='tiffslide'"
            ) from exc
        return openslide.OpenSlide(str(self.path))

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        slide = self._open()
        ds = self.downsample
        loc = (int(round(x * ds)), int(round(y * ds)))
        region = np.asarray(slide.read_region(loc, self.level, (w, h)))  # RGBA PIL image
        return as_rgb_uint8(region, name=self.name)

    def _thumbnail(self, step: int) -> np.ndarray:
        return SlideReader._thumbnail(self, step)


#: grey that marks unreadable parts of a thumbnail: counted as tissue (so the tiles there are
#: attempted and reported) and visible in overlays
UNREADABLE_GREY = 128


class ScaledReader(SlideReader):
    """A reader that resamples another one by a constant factor (bilinear).

    Used to bring a slide to the pixel size a model was fitted at: every coordinate the run
    writes is mapped back to level 0 through :attr:`downsample`.  Pixel ``(i, j)`` of this
    reader is the base image interpolated at ``((i + 0.5) / scale - 0.5, (j + 0.5) / scale
    - 0.5)``, a function of the pixel alone, so overlapping tiles read identical values.

    Parameters
    ----------
    base : SlideReader
    scale : float
        Pixels of this reader per base pixel (0.5 halves the resolution).

    Raises
    ------
    InputError
        If ``scale`` is not positive.
    """

    def __init__(self, base: SlideReader, scale: float) -> None:
        if not (scale > 0 and math.isfinite(scale)):
            raise InputError(f"scale: expected a positive number, got {scale!r}")
        self.base = base
        self.scale = float(scale)
        H, W = base.shape
        self.shape = (max(1, round(H * self.scale)), max(1, round(W * self.scale)))
        self.mpp = None if base.mpp is None else base.mpp / self.scale
        self.downsample = base.downsample / self.scale
        self.name = base.name
        self.path = getattr(base, "path", None)  # a resumed run checks the file's identity

    def _coords(self, start: int, n: int, limit: int) -> np.ndarray:
        c = (np.arange(start, start + n, dtype=np.float64) + 0.5) / self.scale - 0.5
        return np.clip(c, 0.0, limit - 1.0)

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        from scipy import ndimage as ndi

        H, W = self.base.shape
        cy, cx = self._coords(y, h, H), self._coords(x, w, W)
        y0, x0 = int(math.floor(cy[0])), int(math.floor(cx[0]))
        y1, x1 = min(H, int(math.floor(cy[-1])) + 2), min(W, int(math.floor(cx[-1])) + 2)
        src = self.base.read_region(y0, x0, y1 - y0, x1 - x0).astype(np.float32)
        gy, gx = np.meshgrid(cy - y0, cx - x0, indexing="ij")
        out = np.empty((h, w, 3), np.float32)
        for ch in range(3):
            out[:, :, ch] = ndi.map_coordinates(src[:, :, ch], [gy, gx], order=1, mode="nearest")
        return np.ascontiguousarray(np.clip(np.round(out), 0, 255).astype(np.uint8))

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """The base reader's thumbnail, resized to this reader's integer step."""
        from skimage.transform import resize

        if max_side < 1:
            raise InputError(f"thumbnail: max_side must be positive, got {max_side}")
        step = max(1, math.ceil(max(self.shape) / max_side))
        size = (-(-self.shape[0] // step), -(-self.shape[1] // step))
        img, _ = self.base.thumbnail(max_side)
        small = resize(img, size, order=1, preserve_range=True, anti_aliasing=False)
        return np.clip(np.round(small), 0, 255).astype(np.uint8), float(step)

    def close(self) -> None:
        self.base.close()


def _read_robust(
    read, y: int, x: int, h: int, w: int, *, name: str, block: int = 512
) -> np.ndarray:
    """Read a region for a thumbnail; parts that fail to decode become grey blocks."""
    import logging

    try:
        return read(y, x, h, w)
    except Exception:  # a damaged part of the file: retry block by block below
        pass
    out = np.full((h, w, 3), UNREADABLE_GREY, np.uint8)
    bad = 0
    for by in range(0, h, block):
        for bx in range(0, w, block):
            bh, bw = min(block, h - by), min(block, w - bx)
            try:
                out[by : by + bh, bx : bx + bw] = read(y + by, x + bx, bh, bw)
            except Exception:  # this block stays grey
                bad += 1
    logging.getLogger("mcf_fast.slide").warning(
        "%s: %d block(s) of %d px in rows %d..%d could not be read; shown grey in thumbnails",
        name,
        bad,
        block,
        y,
        y + h,
    )
    return out


def _check_mpp(mpp: float | None, name: str) -> float | None:
    if mpp is None:
        return None
    try:
        v = float(mpp)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: mpp must be a positive number, got {mpp!r}") from exc
    if not (v > 0 and math.isfinite(v)):
        raise InputError(f"{name}: mpp must be a positive number, got {mpp!r}")
    return v


def open_slide(
    source: Any, *, level: int = 0, mpp: float | None = None, backend: str = "auto"
) -> SlideReader:
    """Open a slide, an image file, a zarr store or an array as a :class:`SlideReader`.

    Parameters
    ----------
    source : path-like, ndarray, zarr array or SlideReader
        A whole-slide file (``.svs``, pyramidal ``.tif``...), a plain image (``.png``,
        ``.jpg``...), a ``.zarr`` folder holding one (H, W[, C]) array, or an array.
    level : int
        Pyramid level to read (slides only; arrays and plain images have only level 0).
    mpp : float, optional
        Microns per pixel at level 0; overrides the file's metadata.
    backend : {"auto", "tiffslide", "openslide"}
        Slide backend; ``"auto"`` is tiffslide.

    Returns
    -------
    SlideReader

    Raises
    ------
    InputError
        A missing file, an unknown backend, a level other than 0 for a plain image.
    FormatError
        A file no backend can read.

    Examples
    --------
    >>> r = open_slide(np.zeros((64, 80, 3), np.uint8), mpp=0.5)
    >>> r.shape, r.read_region(0, 0, 2, 3).shape
    ((64, 80), (2, 3, 3))
    """
    if backend not in ("auto", "tiffslide", "openslide"):
        raise InputError(f"backend: expected 'auto', 'tiffslide' or 'openslide', got {backend!r}")
    if isinstance(source, SlideReader):
        return source
    if not isinstance(source, (str, os.PathLike)):
        if level != 0:
            raise InputError(f"level: an array has only level 0, got {level}")
        return ArrayReader(source, mpp=mpp)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_dir():
        if suffix != ".zarr":
            raise InputError(f"{path}: a folder must be a .zarr array store")
        import zarr

        try:
            arr = zarr.open_array(str(path), mode="r")
        except Exception as exc:  # zarr raises several types for a non-array store
            raise FormatError(f"{path}: not a zarr array ({type(exc).__name__}: {exc})") from exc
        if level != 0:
            raise InputError(f"level: {path} has only level 0, got {level}")
        _check_chunks(path, arr)
        reader = ArrayReader(arr, mpp=mpp, name=path.name)
        reader.path = path.absolute()
        return reader
    if backend == "openslide":
        return OpenSlideReader(path, level=level, mpp=mpp)
    if suffix in SLIDE_SUFFIXES:
        return TiffSlideReader(path, level=level, mpp=mpp)
    if suffix in IMAGE_SUFFIXES:
        if level != 0:
            raise InputError(f"level: {path} is a plain image with only level 0, got {level}")
        reader = ArrayReader(read_image(path), mpp=mpp, name=path.name)
        reader.path = path.absolute()  # the file a resumed run checks it still reads
        return reader
    raise FormatError(
        f"{path}: unknown image or slide type {suffix!r} (expected one of "
        f"{', '.join(SLIDE_SUFFIXES + IMAGE_SUFFIXES)} or a .zarr folder)"
    )


def _check_chunks(path: Path, arr: Any) -> None:
    """Refuse a zarr store whose chunks are above the pixel limit: a read decodes whole chunks."""
    limit = max_pixels()
    chunks = tuple(getattr(arr, "chunks", ()) or ())
    if limit is not None and len(chunks) >= 2 and int(chunks[0]) * int(chunks[1]) > limit:
        raise InputError(
            f"{path}: zarr chunks of {chunks[1]} x {chunks[0]} pixels are above the limit of "
            f"{limit} pixels (every read decodes whole chunks); rechunk the store, or set "
            f"{MAX_PIXELS_ENV} to raise the limit"
        )


@dataclass(frozen=True)
class TissueMask:
    """A low-resolution tissue mask of a slide.

    Attributes
    ----------
    mask : ndarray, shape (h, w), bool
        True where there is tissue.
    scale : float
        Slide pixels (at the reader's level) per mask pixel.
    """

    mask: np.ndarray
    scale: float

    def any_in(self, y0: int, x0: int, y1: int, x1: int) -> bool:
        """Whether any tissue lies in the slide box ``[y0:y1, x0:x1]`` (level pixels).

        The box is widened to whole mask pixels, so a box touching tissue counts.
        """
        s = self.scale
        r0, c0 = max(0, int(y0 // s)), max(0, int(x0 // s))
        r1, c1 = math.ceil(y1 / s), math.ceil(x1 / s)
        return bool(self.mask[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)].any())

    @property
    def fraction(self) -> float:
        """Share of mask pixels that are tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def tissue_mask(
    reader: SlideReader,
    *,
    max_side: int = 1024,
    brightness: float = 0.85,
    saturation: float = 0.07,
    min_area: float = 0.0005,
) -> TissueMask:
    """Find tissue on a low-resolution thumbnail, so background tiles can be skipped.

    A thumbnail pixel is background when it is bright (mean of R, G, B above `brightness`
    of 255) and nearly grey (HSV saturation below `saturation`): glass and white or black
    padding.  Everything else is tissue; the mask is then closed, its holes filled, specks
    smaller than `min_area` of the thumbnail dropped, and dilated by one pixel so tissue
    edges are never lost.  Pure black pixels (padding of some scanners) are background too.

    Parameters
    ----------
    reader : SlideReader
    max_side : int
        Longest side of the thumbnail the mask is computed on.
    brightness, saturation : float
        Thresholds in [0, 1] (see above).
    min_area : float
        Smallest kept tissue component, as a fraction of the thumbnail's pixels.

    Returns
    -------
    TissueMask

    Raises
    ------
    InputError
        If a threshold is outside [0, 1].
    """
    for name, v in (("brightness", brightness), ("saturation", saturation), ("min_area", min_area)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"tissue_mask: {name} must lie in [0, 1], got {v!r}")
    from scipy import ndimage as ndi

    thumb, scale = reader.thumbnail(max_side)
    rgb = thumb.astype(np.float32) / 255.0
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    bright = rgb.mean(axis=2) > brightness
    black = mx < 0.04
    tissue = ~((bright & (sat < saturation)) | black)
    tissue = (
        ndi.binary_closing(tissue, structure=np.ones((3, 3), bool), iterations=2, border_value=0)
        | tissue
    )
    tissue = ndi.binary_fill_holes(tissue)
    labels, n = ndi.label(tissue)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= max(1, min_area * tissue.size)
        keep[0] = False
        tissue = keep[labels]
    tissue = ndi.binary_dilation(tissue, structure=np.ones((3, 3), bool))
    return TissueMask(mask=tissue, scale=scale)
