"""Dense per-pixel features of the detection branch: colour names (CN) and HOG.

Every pixel gets a feature vector (stride 1), so response maps and GDBP radii are in
pixels.  Images go through :func:`mcf_fast.io.images.as_rgb_uint8` first: grayscale is
repeated into three channels (its colour names are those of the grey RGB pixel, and its
HOG that of the single channel), RGBA loses alpha, 16-bit and float images are scaled to
uint8, NaN or infinite values raise :class:`~mcf_fast.errors.InputError`.

Colour names
    ``cn[i, j, :] = table[R//8 + 32*(G//8) + 1024*(B//8)]``, 11 channels
    (:mod:`mcf_fast.ops.colornames`).

HOG (dense, fHOG-like)
    1. Gradient: central differences ``I[i, j+1] - I[i, j-1]`` and ``I[i+1, j] - I[i-1, j]``
       of each RGB channel, with neighbours clamped to the image (one-sided at the border);
       the channel with the largest magnitude wins.  Magnitude ``sqrt(gx^2 + gy^2) / 255``.
    2. Orientation ``atan2(gy, gx)`` folded into [0, pi) (unsigned), voted into the two
       nearest of ``bins`` bins centred at ``(k + 1/2) pi / bins``, linearly (circularly).
    3. Cell histogram ``h(i, j)``: the votes summed over the ``cell x cell`` window of rows
       and columns ``i - cell//2 .. i - cell//2 + cell - 1`` (centred; for even ``cell`` the
       extra pixel lies above / left), pixels outside the image contributing nothing.
    4. Normalisation over 2x2-cell blocks, as in Felzenszwalb et al.'s fHOG: the cell at
       ``(i, j)`` lies in four blocks, whose top-left cells are ``(i + a, j + b)``,
       ``a, b in {-cell, 0}``; block energy ``B`` = the sum of ``||h||^2`` over its four
       cells (0 outside the image).  Channel ``k`` is
       ``0.5 * sum_blocks min(h_k / sqrt(B + eps), 0.2)`` with ``eps =`` :data:`HOG_EPS`;
       each channel lies in [0, 0.4].  A flat image has zero HOG.
"""

from __future__ import annotations

import numpy as np

from mcf_fast.config import DetectionConfig
from mcf_fast.errors import InputError
from mcf_fast.io.images import as_rgb_uint8
from mcf_fast.kernels.features import (
    cn_kernel,
    hog_cells_kernel,
    hog_normalise_kernel,
)
from mcf_fast.ops.colornames import N_BINS, _validate, resolve_color_names

__all__ = [
    "HOG_EPS",
    "HOG_CLIP",
    "N_COLOR_NAMES",
    "color_name_features",
    "hog_features",
    "extract_features",
    "feature_channels",
    "feature_halo",
]

#: regulariser of the block norm, in (gradient magnitude x pixels)^2 units
HOG_EPS = 1e-4
#: truncation of each normalised value (fHOG's 0.2)
HOG_CLIP = 0.2
#: channels of the colour-name features
N_COLOR_NAMES = 11


def _readonly(a: np.ndarray) -> np.ndarray:
    # numba compiles separate code for read-only and writable arrays; tables are always
    # passed read-only so each kernel compiles once
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


def _table(table: np.ndarray | None) -> np.ndarray:
    if table is None:
        return resolve_color_names(None)
    a = np.asarray(table)
    if a.dtype == np.float32 and a.flags.c_contiguous and a.shape == (N_BINS, N_COLOR_NAMES):
        return _readonly(a)
    return _readonly(_validate(a, "table"))


def _check_hog_args(bins: int, cell: int) -> None:
    for name, v, low in (("bins", bins, 1), ("cell", cell, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise InputError(f"hog_features: {name} = {v!r}; expected an integer >= {low}")


_NO_TABLE = np.zeros((0, 0), np.float32)
_NO_TABLE.flags.writeable = False


def _hog_into(
    rgb: np.ndarray,
    bins: int,
    cell: int,
    out: np.ndarray,
    offset: int,
    table: np.ndarray | None = None,
) -> None:
    """Write HOG channels ``offset..`` of `out` (and colour names ``0..10`` with `table`)."""
    h, w = rgb.shape[:2]
    hist = np.empty((bins, h, w), np.float32)
    energy = np.empty((h, w), np.float32)
    hog_cells_kernel(rgb, bins, cell, hist, energy)
    tab = _NO_TABLE if table is None else table
    hog_normalise_kernel(hist, energy, cell, HOG_EPS, HOG_CLIP, out, offset, rgb, tab, 0)


def color_name_features(image: np.ndarray, *, table: np.ndarray | None = None) -> np.ndarray:
    """Colour-name probabilities of every pixel.

    Parameters
    ----------
    image : ndarray, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        Anything :func:`~mcf_fast.io.images.as_rgb_uint8` accepts.
    table : ndarray, shape (32768, 11), optional
        A colour-name table; default :func:`~mcf_fast.ops.colornames.builtin_color_names`.

    Returns
    -------
    ndarray, shape (H, W, 11), float32

    Raises
    ------
    InputError
        For an image :func:`~mcf_fast.io.images.as_rgb_uint8` rejects (e.g. NaN values).
    FormatError
        If `table` does not have shape (32768, 11).

    Examples
    --------
    >>> color_name_features(np.full((2, 3, 3), 255, np.uint8)).shape
    (2, 3, 11)
    """
    rgb = as_rgb_uint8(image, name="image")
    tab = _table(table)
    out = np.empty(rgb.shape[:2] + (N_COLOR_NAMES,), np.float32)
    cn_kernel(rgb, tab, out, 0)
    return out


def hog_features(image: np.ndarray, *, bins: int = 9, cell: int = 4) -> np.ndarray:
    """Dense fHOG-like histograms of oriented gradients (module docstring).

    Parameters
    ----------
    image : ndarray, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        Anything :func:`~mcf_fast.io.images.as_rgb_uint8` accepts.
    bins : int
        Unsigned orientation bins over [0, pi) (``DetectionConfig.hog_bins``), >= 1.
    cell : int
        Cell size in pixels (``DetectionConfig.hog_cell``), >= 1.

    Returns
    -------
    ndarray, shape (H, W, bins), float32
        Values in [0, 0.4].

    Raises
    ------
    InputError
        For a rejected image or invalid `bins` / `cell`.

    Examples
    --------
    >>> hog_features(np.zeros((5, 7, 3), np.uint8)).max()
    np.float32(0.0)
    """
    _check_hog_args(bins, cell)
    rgb = as_rgb_uint8(image, name="image")
    out = np.empty(rgb.shape[:2] + (int(bins),), np.float32)
    _hog_into(rgb, int(bins), int(cell), out, 0)
    return out


def feature_channels(config: DetectionConfig | None = None) -> int:
    """Number of channels :func:`extract_features` returns for `config`.

    Examples
    --------
    >>> feature_channels(DetectionConfig())
    20
    """
    cfg = DetectionConfig() if config is None else config
    return N_COLOR_NAMES * bool(cfg.use_cn) + int(cfg.hog_bins) * bool(cfg.use_hog)


def feature_halo(config: DetectionConfig | None = None) -> int:
    """Pixels of context a feature vector depends on, in every direction.

    A tile read with this halo around its write region gives, inside the write region,
    exactly the features of the whole image: colour names are per pixel; HOG reaches one
    pixel for the gradient, ``max(cell//2, cell - 1 - cell//2)`` for the cell and
    ``cell`` more for the block normalisation.

    Examples
    --------
    >>> feature_halo(DetectionConfig(hog_cell=4))
    7
    """
    cfg = DetectionConfig() if config is None else config
    if not cfg.use_hog:
        return 0
    c = int(cfg.hog_cell)
    return 1 + max(c // 2, c - 1 - c // 2) + c


def extract_features(
    image: np.ndarray,
    config: DetectionConfig | None = None,
    *,
    table: np.ndarray | None = None,
) -> np.ndarray:
    """The detection features of an image: CN channels, then HOG channels.

    Parameters
    ----------
    image : ndarray, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        Anything :func:`~mcf_fast.io.images.as_rgb_uint8` accepts.
    config : DetectionConfig, optional
        ``use_cn``, ``use_hog``, ``hog_bins``, ``hog_cell`` and ``color_names`` are used;
        default ``DetectionConfig()``.
    table : ndarray, shape (32768, 11), optional
        A colour-name table that overrides ``config.color_names`` (saves reloading it).

    Returns
    -------
    ndarray, shape (H, W, C), float32, C-contiguous
        ``C =`` :func:`feature_channels`: 11 colour names if ``use_cn``, then ``hog_bins``
        HOG channels if ``use_hog``.

    Raises
    ------
    InputError
        For a rejected image, or a missing colour-name file.
    FormatError
        For a colour-name table of the wrong shape.

    Examples
    --------
    >>> extract_features(np.zeros((8, 8, 3), np.uint8)).shape
    (8, 8, 20)
    """
    cfg = DetectionConfig() if config is None else config
    if not isinstance(cfg, DetectionConfig):
        raise InputError(f"config: expected a DetectionConfig, got {type(cfg).__name__}")
    rgb = as_rgb_uint8(image, name="image")
    out = np.empty(rgb.shape[:2] + (feature_channels(cfg),), np.float32)
    tab = None
    if cfg.use_cn:
        tab = _table(table) if table is not None else resolve_color_names(cfg.color_names)
    if cfg.use_hog:
        # one pass writes each output pixel in full: colour names, then HOG
        offset = N_COLOR_NAMES if cfg.use_cn else 0
        _hog_into(rgb, int(cfg.hog_bins), int(cfg.hog_cell), out, offset, tab)
    else:
        cn_kernel(rgb, tab, out, 0)
    return out
