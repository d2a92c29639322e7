"""Tissue and white space: whether an image, and which of its pixels, hold stained tissue.

Blank tiles give no nuclei: the detector normalises its fused response to [0, 1] over the
image, so on an image without tissue (glass, white or black padding, one flat colour) it would
stretch noise and border effects into "nuclei"; a network never shown such images may call all
of it nucleus.  An image is blank when, after a 5 x 5 mean (which removes sensor and JPEG
noise), no channel varies by :data:`BLANK_RANGE` grey levels or more; the detector and the
model then return no nuclei for it without running.

White space (glass, lumen, fat) inside a tissue image is the pixels of low total optical
density (:func:`white_space`); the pseudo labels and their quality report use it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLANK_RANGE",
    "WHITE_OD",
    "hematoxylin_od",
    "is_blank",
    "optical_density_sum",
    "white_space",
]

#: smallest spread (max - min, grey levels 0..255, after a 5 x 5 mean) of an image with tissue
BLANK_RANGE = 16


def is_blank(rgb: np.ndarray, *, min_range: float = BLANK_RANGE) -> bool:
    """Whether an image is (nearly) one flat colour, so it holds no tissue and no nuclei.

    Parameters
    ----------
    rgb : ndarray, shape (H, W, 3), uint8
    min_range : float
        Smallest spread, in grey levels, of any channel after a 5 x 5 mean for the image to
        count as holding something.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_blank(np.full((32, 32, 3), 255, np.uint8))
    True
    >>> img = np.full((32, 32, 3), 230, np.uint8); img[10:16, 10:16] = (90, 40, 140)
    >>> is_blank(img)
    False
    """
    from scipy import ndimage as ndi

    a = np.asarray(rgb)
    if a.size == 0:
        return True
    lo, hi = int(a.min()), int(a.max())
    if hi - lo < min_range:  # cheap exit: even the raw pixels are flat
        return True
    size = (5, 5, 1) if a.ndim == 3 else (5, 5)
    smooth = ndi.uniform_filter(a.astype(np.float32), size=size, mode="nearest")
    axes = (0, 1)
    spread = smooth.max(axis=axes) - smooth.min(axis=axes)
    return bool(np.max(spread) < min_range)


#: total optical density (sum over R, G, B of ``-log((I + 1) / 256)``) below which a pixel
#: is white space: glass, lumen, fat (about RGB (208, 208, 208) for a grey pixel)
WHITE_OD = 0.3


def optical_density_sum(image: np.ndarray) -> np.ndarray:
    """Total optical density ``sum_c -log((I_c + 1) / 256)`` of an RGB uint8 image, (H, W)."""
    img = np.asarray(image)
    return -np.log((img.astype(np.float32) + 1.0) / 256.0).sum(axis=-1)


def white_space(image: np.ndarray, *, od: float = WHITE_OD) -> np.ndarray:
    """Pixels without stained tissue (total optical density below ``od``), (H, W) bool.

    Examples
    --------
    >>> img = np.zeros((1, 2, 3), np.uint8); img[0, 0] = 240; img[0, 1] = (200, 80, 160)
    >>> white_space(img).tolist()
    [[True, False]]
    """
    return optical_density_sum(image) < od


def hematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """The hematoxylin channel of the colour deconvolution (:func:`skimage.color.rgb2hed`).

    Parameters
    ----------
    rgb : ndarray, shape (H, W, 3), uint8

    Returns
    -------
    ndarray, shape (H, W), float64
        Hematoxylin optical density (Ruifrok and Johnston's stain vectors), unscaled.
    """
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[:, :, 0]
