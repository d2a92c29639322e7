"""Compile every numba kernel once, so that the first real run does not pay for it.

The kernels are compiled with ``cache=True`` (:mod:`mcf_fast._numba`): once compiled, a
new process loads them from numba's cache (``__pycache__`` beside the package, or numba's
user-wide cache when that is read-only; ``NUMBA_CACHE_DIR`` moves it) in a fraction of a
second.  A fresh install has an empty cache, so its first ``mcf detect`` or ``mcf
predict`` compiles them all (about a minute of CPU time).  :func:`warm_up` does that
ahead, on a small synthetic image that goes through the same code paths (same array
types, hence the same compiled signatures) as a real tile: run it once after installing
(``mcf warmup``).  FFTW plans depend on the block shape, which depends on the templates
and the tile size: they are planned on first use and kept as wisdom
(``~/.cache/mcf_fast/fftw-wisdom.bin``); given a template set and a tile size, the warm-up
plans them too.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["synthetic_tile", "warm_up"]


def synthetic_tile(h: int = 96, w: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A pink tile with dark purple discs, and the disc centres (y, x)."""
    rng = np.random.default_rng(seed)
    centres = np.array([(y, x) for y in range(16, h - 8, 26) for x in range(16, w - 8, 26)])
    img = np.empty((h, w, 3), np.float64)
    img[:] = (236, 190, 214)
    yy, xx = np.mgrid[:h, :w]
    for y, x in centres:
        img[(yy - y) ** 2 + (xx - x) ** 2 <= 30] = (92, 60, 140)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), centres


def warm_up(templates=None, *, tile: int = 1000, config=None) -> dict[str, float]:
    """Compile (or load from the cache) the kernels of detection, instance labelling and
    the nucleus measurements.

    Parameters
    ----------
    templates : TemplateSet, optional
        Also build this template set's detector and run it once on a synthetic
        ``tile`` x ``tile`` image, which plans (and saves as wisdom) its FFTs.
    tile : int
        Side of that image (the size of the tiles to be processed).
    config : DetectionConfig, optional
        The detection settings of that run (default ``DetectionConfig()``).

    Returns
    -------
    dict
        Wall seconds per stage: ``"detector"`` (features, correlation, fusion, GDBP,
        centres, pseudo mask), ``"instances"`` (the h-maxima split), ``"measurements"``
        (outlines and the nucleus table) and, with ``templates``, ``"plans"``.

    Raises
    ------
    InputError
        For a tile side below 16.

    Examples
    --------
    >>> from mcf_fast.detection.warmup import warm_up   # doctest: +SKIP
    >>> warm_up()                                      # doctest: +SKIP
    {'detector': 61.2, 'instances': 3.1, 'measurements': 3.4}
    """
    from mcf_fast.config import DetectionConfig
    from mcf_fast.detection.detector import Detector
    from mcf_fast.errors import InputError
    from mcf_fast.io.templates import TemplateSet
    from mcf_fast.ops.instances import instance_labels
    from mcf_fast.ops.measure import measure_nuclei

    if tile < 16:
        raise InputError(f"tile = {tile}: expected at least 16 pixels")
    image, centres = synthetic_tile()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    tset = TemplateSet.from_points(image, centres[:2], size=21, image_name="warmup")
    det = Detector(tset, DetectionConfig(n_scales=3, scale_range=(0.9, 1.1)))
    result = det.detect(image)
    seconds["detector"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probability = (result.pseudo_mask == 1).astype(np.float32)
    labels = instance_labels(probability, seeds="hmaxima", min_area=5)
    seconds["instances"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = int(labels.max())
    cen = np.zeros((n, 2))
    measure_nuclei(labels, image, ids=np.arange(1, n + 1), centres=cen, origin=(0, 0))
    measure_nuclei(
        labels, image, ids=np.arange(1, n + 1), centres=cen, origin=(0, 0), probability=probability
    )
    seconds["measurements"] = time.perf_counter() - t0
    if templates is not None:
        t0 = time.perf_counter()
        big, _ = synthetic_tile(tile, tile)
        Detector(templates, config).detect(big)
        seconds["plans"] = time.perf_counter() - t0
    return seconds
