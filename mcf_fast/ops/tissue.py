"""Tissue and white space: which pixels of an H&E image hold stained tissue at all."""

from __future__ import annotations

import numpy as np

__all__ = ["WHITE_OD", "optical_density_sum", "white_space"]

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
