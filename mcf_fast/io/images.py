"""Reading and writing plain images, with the conversions documented in one place.

Every image that enters mcf_fast goes through :func:`as_rgb_uint8`:

- grayscale (H, W) or (H, W, 1): repeated into three channels;
- RGBA: the alpha channel is dropped (pixels are not composited);
- uint16: scaled by 255/65535; other integer types must lie in 0..255;
- float: must lie in [0, 1] and is scaled by 255;
- NaN or infinite values are an error.

Files: palette, CMYK, YCbCr and 1-bit images are converted to RGB or gray with Pillow's
conversions (TIFF: the colour map is applied, CMYK converted as Pillow does, min-is-white
inverted); colour spaces that cannot be converted are an error naming the file.  Only the
first image of a multi-page file is read.  Images above :func:`max_pixels` pixels are
refused before decoding.

Writers go through :func:`atomic_path`: the file appears under its final name only once it
is complete, so an interrupted run never leaves a partial output file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mcf_fast.errors import ConfigError, FormatError, InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "check_pixels",
    "max_pixels",
    "read_image",
    "read_labels",
    "as_rgb_uint8",
    "atomic_path",
    "write_image",
    "write_labels",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp")


#: default largest image, in pixels, that :func:`read_image` decodes (see :func:`max_pixels`)
MAX_IMAGE_PIXELS = 100_000_000
#: environment variable that overrides :data:`MAX_IMAGE_PIXELS` (0 or "none": no limit)
MAX_PIXELS_ENV = "MCF_MAX_IMAGE_PIXELS"

# Pillow modes that convert losslessly enough to RGB or to gray before reading
_PIL_TO_RGB = {"P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"}
_PIL_TO_GRAY = {"1", "LA", "La"}
_PIL_LOCK = threading.Lock()


def max_pixels() -> int | None:
    """The largest image (height x width, in pixels) that readers decode; None: no limit.

    :data:`MAX_IMAGE_PIXELS` unless the environment variable ``MCF_MAX_IMAGE_PIXELS``
    says otherwise (a positive integer, or ``0`` / ``none`` for no limit).  Larger images
    are refused before any pixel is decoded, so a small compressed file that declares a
    huge image cannot exhaust memory; whole slides go through ``mcf slide``, which reads
    them region by region.

    Raises
    ------
    ConfigError
        If the environment variable is not a number.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    if raw.lower() == "none":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{MAX_PIXELS_ENV}={raw!r}: expected a number of pixels, or 0 / none for no limit"
        ) from None
    return value if value > 0 else None


def check_pixels(name: str, height: int, width: int, limit: int | None = None) -> None:
    """Refuse an image of ``height x width`` pixels above the limit (:func:`max_pixels`).

    Raises
    ------
    InputError
        Naming `name`, its size and the limit.
    """
    limit = max_pixels() if limit is None else limit
    if limit is not None and int(height) * int(width) > limit:
        raise InputError(
            f"{name}: {width} x {height} pixels is above the limit of {limit} pixels "
            f"(set {MAX_PIXELS_ENV} to raise it, or run whole slides with `mcf slide`)"
        )


def _load_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise FormatError(f"{path}: a TIFF file without images")
        page = tif.pages.first
        check_pixels(str(path), page.imagelength, page.imagewidth)
        photometric = int(page.photometric)
        P = tifffile.PHOTOMETRIC
        if photometric == P.YCBCR and int(page.compression) != tifffile.COMPRESSION.JPEG:
            raise FormatError(f"{path}: YCbCr TIFF without JPEG compression; save it as RGB")
        if photometric not in (P.MINISBLACK, P.MINISWHITE, P.RGB, P.PALETTE, P.SEPARATED, P.YCBCR):
            raise FormatError(
                f"{path}: TIFF colour space {P(photometric).name} is not read; "
                "save the image as RGB or grayscale"
            )
        a = np.asarray(page.asarray())
        if photometric == P.PALETTE:
            cmap = np.asarray(page.colormap)
            if cmap.ndim != 2 or cmap.shape[0] != 3 or not np.issubdtype(a.dtype, np.integer):
                raise FormatError(f"{path}: palette TIFF without a usable colour map")
            if a.size and int(a.max()) >= cmap.shape[1]:
                raise FormatError(f"{path}: palette index beyond the colour map")
            rgb = cmap.T[a]
            return rgb.astype(np.uint16) if cmap.max(initial=0) > 255 else rgb.astype(np.uint8)
        if photometric == P.SEPARATED:
            if a.ndim != 3 or a.shape[2] < 4 or a.dtype != np.uint8:
                raise FormatError(f"{path}: only 8-bit CMYK TIFFs are read; save it as RGB")
            cmyk = a[:, :, :4].astype(np.int16)
            return np.clip(255 - (cmyk[:, :, :3] + cmyk[:, :, 3:4]), 0, 255).astype(np.uint8)
        if photometric == P.MINISWHITE and np.issubdtype(a.dtype, np.integer):
            return np.iinfo(a.dtype).max - a
        if photometric in (P.MINISBLACK, P.MINISWHITE) and a.ndim == 3 and a.shape[2] == 2:
            return a[:, :, 0]  # gray and alpha
        return a


def _load_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with _PIL_LOCK:  # Pillow's own bomb check is replaced by check_pixels (any limit)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        check_pixels(str(path), im.height, im.width)
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(im, dtype=np.uint16)
        if mode in ("I", "F"):
            return np.asarray(im)
        if mode in _PIL_TO_RGB:
            return np.asarray(im.convert("RGB"))
        if mode in _PIL_TO_GRAY:
            return np.asarray(im.convert("L"))
        if mode not in ("L", "RGB", "RGBA"):
            raise FormatError(f"{path}: image mode {mode!r} is not read; save it as RGB")
        return np.asarray(im)


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _load_tiff(path)
        return _load_pil(path)
    except InputError:
        raise
    except Exception as exc:  # PIL / tifffile raise many types for unreadable files
        raise FormatError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def as_rgb_uint8(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Convert an array to a C-contiguous (H, W, 3) uint8 RGB image.

    Parameters
    ----------
    image : ndarray, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        Integer or float pixels; see the module docstring for the conversions.
    name : str
        How to name the array in error messages (a file name, an argument name).

    Returns
    -------
    ndarray, shape (H, W, 3), uint8

    Raises
    ------
    InputError
        For a wrong shape, NaN or infinite values, or values out of the dtype's range.

    Examples
    --------
    >>> as_rgb_uint8(np.zeros((4, 5))).shape
    (4, 5, 3)
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(
            f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {a.shape}"
        )
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"{name}: empty image of shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        return np.ascontiguousarray(a.astype(np.uint8) * 255)
    if a.dtype == np.uint16:
        return np.ascontiguousarray(
            np.round(a.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        )
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise InputError(
                f"{name}: {a.dtype} values in [{lo}, {hi}]; expected 0..255 "
                "(or pass uint8 / uint16 / float in [0, 1])"
            )
        return np.ascontiguousarray(a.astype(np.uint8))
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise InputError(f"{name}: contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"{name}: float values in [{lo:g}, {hi:g}]; expected floats in [0, 1]")
        return np.ascontiguousarray(np.round(a * 255.0).astype(np.uint8))
    raise InputError(f"{name}: unsupported dtype {a.dtype}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (see :func:`as_rgb_uint8`)."""
    p = Path(path)
    return as_rgb_uint8(_load_array(p), name=str(p))


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label image (instance ids or a binary mask) as a 2-D integer array.

    Raises
    ------
    FormatError
        If the file is not an image or holds more than one channel of distinct values.
    """
    p = Path(path)
    a = _load_array(p)
    if a.ndim == 3:
        if a.shape[2] in (3, 4) and np.all(a[:, :, :3] == a[:, :, :1]):
            a = a[:, :, 0]
        elif a.shape[2] == 1:
            a = a[:, :, 0]
        else:
            raise FormatError(f"{p}: a label image must have one channel, got shape {a.shape}")
    if a.ndim != 2:
        raise FormatError(f"{p}: a label image must be 2-D, got shape {a.shape}")
    if a.dtype == np.bool_:
        return a.astype(np.int32)
    if not np.issubdtype(a.dtype, np.integer):
        raise FormatError(f"{p}: labels must be integers, got {a.dtype}")
    if a.size and a.min() < 0:
        raise FormatError(f"{p}: negative labels")
    return a.astype(np.int32, copy=False)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds.

    The temporary file keeps `path`'s suffix so writers that infer the format from the
    name work.  On error the temporary file is removed and `path` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=f".part{final.suffix}", dir=final.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give outputs the usual umask mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8/uint16 image (PNG, TIFF or JPEG by suffix) atomically."""
    final = Path(path)
    a = np.asarray(array)
    with atomic_path(final) as tmp:
        if final.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, a, compression="zlib")
        else:
            from PIL import Image

            if a.dtype not in (np.uint8, np.uint16):
                raise InputError(f"{final}: can only write uint8 or uint16, got {a.dtype}")
            Image.fromarray(a).save(tmp, format=_pil_format(final))
    return final


def write_labels(stem: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an instance-label map as ``<stem>.png`` (uint16), or ``<stem>.tif`` (uint32)
    when an id exceeds 65535; atomically.

    Returns
    -------
    Path
        The file written.
    """
    labels = np.asarray(labels)
    base = Path(stem)
    if labels.max(initial=0) <= np.iinfo(np.uint16).max:
        return write_image(base.with_name(base.name + ".png"), labels.astype(np.uint16))
    return write_image(base.with_name(base.name + ".tif"), labels.astype(np.uint32))


def _pil_format(path: Path) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}.get(
        path.suffix.lower(), "PNG"
    )
