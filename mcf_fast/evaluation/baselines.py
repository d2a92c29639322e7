"""A classical, training-free baseline: seeded watershed on the hematoxylin channel.

The bar a few-shot method has to clear: colour deconvolution (Ruifrok & Johnston, through
:func:`skimage.color.rgb2hed`) isolates the hematoxylin stain that colours nuclei; a smoothed,
contrast-stretched hematoxylin map thresholded at Otsu's level plus an offset gives the nuclei
mask; small specks are dropped and small holes filled; peaks of the mask's distance transform
seed a watershed that splits touching nuclei.  Its five parameters
(:class:`WatershedParams`) are tuned by :func:`tune_watershed` on images with instance masks
(the train split only) with a deterministic coordinate search over a small grid.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from mcf_fast.errors import ConfigError, InputError
from mcf_fast.io.images import as_rgb_uint8
from mcf_fast.ops.tissue import hematoxylin_od

__all__ = [
    "WatershedParams",
    "DEFAULT_GRID",
    "hematoxylin",
    "nuclei_foreground",
    "watershed_nuclei",
    "tune_watershed",
    "TuningResult",
    "watershed_params_from_templates",
]


@dataclass(frozen=True)
class WatershedParams:
    """Parameters of :func:`watershed_nuclei`.

    Attributes
    ----------
    sigma : float
        Gaussian smoothing of the hematoxylin map, in pixels (0: none).
    threshold_offset : float
        Added to Otsu's threshold of the [0, 1]-stretched hematoxylin map (negative: a
        more generous mask).
    min_size : int
        Connected components and final nuclei smaller than this (pixels) are removed;
        holes smaller than this are filled.
    min_distance : int
        Smallest distance (pixels) between two watershed seeds.
    seed_smoothing : float
        Gaussian smoothing of the distance transform before its peaks are taken (0: none);
        merges the several peaks of an elongated nucleus.
    """

    sigma: float = 1.0
    threshold_offset: float = 0.0
    min_size: int = 30
    min_distance: int = 6
    seed_smoothing: float = 1.0

    def __post_init__(self) -> None:
        c = "WatershedParams"
        if not (isinstance(self.sigma, (int, float)) and self.sigma >= 0):
            raise ConfigError(f"{c}.sigma = {self.sigma!r}: expected a number >= 0")
        if not (
            isinstance(self.threshold_offset, (int, float)) and -1.0 < self.threshold_offset < 1.0
        ):
            raise ConfigError(
                f"{c}.threshold_offset = {self.threshold_offset!r}: expected a number in (-1, 1)"
            )
        for name in ("min_size", "min_distance"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"{c}.{name} = {v!r}: expected a positive integer")
        if not (isinstance(self.seed_smoothing, (int, float)) and self.seed_smoothing >= 0):
            raise ConfigError(
                f"{c}.seed_smoothing = {self.seed_smoothing!r}: expected a number >= 0"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the parameters."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WatershedParams:
        """Parameters from :meth:`to_dict` output; unknown keys are a :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"WatershedParams: unknown field(s) {unknown}")
        return cls(**data)


#: the search space of :func:`tune_watershed` (each list holds the default value)
DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "sigma": (0.0, 1.0, 2.0),
    "threshold_offset": (-0.15, -0.1, -0.05, 0.0, 0.05, 0.1),
    "min_size": (10, 30, 60),
    "min_distance": (3, 4, 6, 8, 10),
    "seed_smoothing": (0.0, 1.0, 2.0, 3.0),
}


def hematoxylin(image: np.ndarray, *, sigma: float = 0.0) -> np.ndarray:
    """The hematoxylin concentration of an RGB H&E image, stretched to [0, 1].

    Parameters
    ----------
    image : ndarray, shape (H, W, 3)
        Any image :func:`~mcf_fast.io.images.as_rgb_uint8` accepts.
    sigma : float
        Gaussian smoothing in pixels applied after deconvolution (0: none).

    Returns
    -------
    ndarray, shape (H, W), float32
        The hematoxylin channel of :func:`skimage.color.rgb2hed`, smoothed, then mapped
        linearly so that its 0.5th and 99.5th percentiles become 0 and 1 (clipped).
    """
    rgb = as_rgb_uint8(image, name="image")
    h = hematoxylin_od(rgb)
    if sigma > 0:
        h = ndi.gaussian_filter(h, sigma)
    lo, hi = np.percentile(h, [0.5, 99.5])
    if hi <= lo:
        return np.zeros(h.shape, np.float32)
    return np.clip((h - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def nuclei_foreground(
    h: np.ndarray, *, threshold_offset: float = 0.0, min_size: int = 30
) -> np.ndarray:
    """Binary nuclei mask of a [0, 1] hematoxylin map.

    Parameters
    ----------
    h : ndarray, shape (H, W), float
        Output of :func:`hematoxylin`.
    threshold_offset : float
        Added to Otsu's threshold.
    min_size : int
        Smaller components are removed and smaller holes filled.

    Returns
    -------
    ndarray, shape (H, W), bool
    """
    from skimage.filters import threshold_otsu

    if float(h.max()) <= float(h.min()):
        return np.zeros(h.shape, bool)
    fg = h > threshold_otsu(h) + threshold_offset
    fg = _remove_small(fg, min_size)
    return ~_remove_small(~fg, min_size)  # fill holes smaller than min_size


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 4-connected components of `mask` with fewer than `min_size` pixels."""
    if min_size <= 1 or not mask.any():
        return mask
    comp, _ = ndi.label(mask)
    sizes = np.bincount(comp.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[comp]


def _split(
    fg: np.ndarray, *, min_distance: int, seed_smoothing: float, min_size: int
) -> np.ndarray:
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = ndi.distance_transform_edt(fg)
    if seed_smoothing > 0:
        dist = ndi.gaussian_filter(dist, seed_smoothing)
    components, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # a component without a peak (flat or tiny) still gets one seed at its deepest point
    seeded = np.unique(components[markers > 0])
    missing = np.setdiff1d(np.arange(1, components.max() + 1), seeded)
    if missing.size:
        where = ndi.maximum_position(dist, components, missing)
        idx = np.asarray(where, dtype=np.intp).reshape(-1, 2)
        markers[idx[:, 0], idx[:, 1]] = np.arange(len(peaks) + 1, len(peaks) + 1 + len(idx))
    labels = watershed(-dist, markers, mask=fg)
    return _drop_small(labels, min_size)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove instances smaller than `min_size` and renumber 1..N in raster order."""
    if labels.max() == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    # renumber by first appearance in raster order (deterministic, dense)
    flat = labels.ravel()
    _, first = np.unique(flat, return_index=True)
    order = np.unique(flat)
    lut = np.zeros(sizes.size, np.int32)
    kept = [v for _, v in sorted(zip(first, order, strict=True)) if keep[v]]
    lut[np.asarray(kept, dtype=np.intp)] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return lut[labels]


def watershed_nuclei(
    image: np.ndarray,
    *,
    params: WatershedParams | None = None,
) -> np.ndarray:
    """Instance labels of the nuclei of an H&E image by seeded watershed; no training.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3)
        RGB image (any input :func:`~mcf_fast.io.images.as_rgb_uint8` accepts).
    params : WatershedParams, optional
        Defaults to ``WatershedParams()``; use :func:`tune_watershed` to fit them.

    Returns
    -------
    ndarray, shape (H, W), int32
        0 for background, 1..N one id per nucleus (numbered in raster order).

    Raises
    ------
    InputError
        For an image of the wrong shape or dtype.

    Examples
    --------
    >>> labels = watershed_nuclei(image, params=WatershedParams(min_distance=5))  # doctest: +SKIP
    """
    p = params or WatershedParams()
    h = hematoxylin(image, sigma=p.sigma)
    fg = nuclei_foreground(h, threshold_offset=p.threshold_offset, min_size=p.min_size)
    return _split(
        fg, min_distance=p.min_distance, seed_smoothing=p.seed_smoothing, min_size=p.min_size
    )


@dataclass
class TuningResult:
    """What :func:`tune_watershed` found.

    Attributes
    ----------
    params : WatershedParams
        The best parameters.
    score : float
        Their objective on the tuning images.
    history : list of (dict, float)
        Every evaluated parameter set and its objective, in evaluation order.
    """

    params: WatershedParams
    score: float
    history: list[tuple[dict[str, Any], float]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "params": self.params.to_dict(),
            "score": self.score,
            "history": [{"params": p, "score": s} for p, s in self.history],
        }


Objective = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float]


def default_objective(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Mean of Dice, AJI and F1@12 aggregated over the images (mcf_fast.metrics)."""
    from mcf_fast.metrics import score_arrays

    res = score_arrays(
        (str(i), p, t, None) for i, (p, t) in enumerate(zip(preds, truths, strict=True))
    )
    agg = res["aggregate"]
    return float(np.mean([agg["Dice"], agg["AJI"], agg["F1@12"]]))


def tune_watershed(
    images: Iterable[np.ndarray],
    masks: Iterable[np.ndarray],
    *,
    grid: dict[str, Sequence[Any]] | None = None,
    start: WatershedParams | None = None,
    objective: Objective | None = None,
    passes: int = 2,
    crop: int | None = 512,
    progress: bool = False,
) -> TuningResult:
    """Tune :class:`WatershedParams` on images with instance masks (train split only).

    A deterministic coordinate search: starting from `start`, each parameter in turn is set
    to every value of its grid while the others are held, and the best is kept (ties go to
    the earlier value); `passes` rounds over all parameters, stopping early when a round
    changes nothing.  Maps that depend only on some parameters (the hematoxylin map, the
    foreground mask) are cached.

    Parameters
    ----------
    images, masks : iterables of ndarray, shapes (H, W, 3) and (H, W)
        Tuning images and their instance labels, paired in order.
    grid : dict, optional
        Candidate values per parameter name; defaults to :data:`DEFAULT_GRID`.  A
        parameter left out keeps its `start` value.
    start : WatershedParams, optional
        Where the search starts (defaults to ``WatershedParams()``).
    objective : callable, optional
        ``objective(predictions, masks) -> float``, larger is better; defaults to the mean
        of Dice, AJI and F1@12 (:func:`default_objective`).
    passes : int
        Rounds of the coordinate search.
    crop : int or None
        Tune on the central ``crop x crop`` window of each image (faster; None: whole
        images).
    progress : bool
        Show a tqdm bar (stderr).

    Returns
    -------
    TuningResult

    Raises
    ------
    InputError
        If no images are given, or an image and its mask differ in size.
    ConfigError
        For an unknown parameter name or an empty candidate list in `grid`.
    """
    from tqdm.auto import tqdm

    grid = dict(DEFAULT_GRID if grid is None else grid)
    names = [f.name for f in dataclasses.fields(WatershedParams)]
    for k, values in grid.items():
        if k not in names:
            raise ConfigError(f"tune_watershed: unknown parameter {k!r} in grid")
        if len(values) == 0:
            raise ConfigError(f"tune_watershed: empty candidate list for {k!r}")
    objective = objective or default_objective
    imgs, gts = [], []
    for i, (img, gt) in enumerate(itertools.zip_longest(images, masks)):
        if img is None or gt is None:
            raise InputError("tune_watershed: images and masks differ in number")
        img = as_rgb_uint8(img, name=f"images[{i}]")
        gt = np.asarray(gt)
        if gt.shape != img.shape[:2]:
            raise InputError(
                f"tune_watershed: image {i} is {img.shape[:2]} but its mask is {gt.shape}"
            )
        if crop is not None:
            y0 = max(0, (img.shape[0] - crop) // 2)
            x0 = max(0, (img.shape[1] - crop) // 2)
            img = img[y0 : y0 + crop, x0 : x0 + crop]
            gt = gt[y0 : y0 + crop, x0 : x0 + crop]
        imgs.append(img)
        gts.append(gt)
    if not imgs:
        raise InputError("tune_watershed: no images to tune on")

    h_cache: dict[float, list[np.ndarray]] = {}
    fg_cache: dict[tuple[float, float, int], list[np.ndarray]] = {}

    def predict(p: WatershedParams) -> list[np.ndarray]:
        if p.sigma not in h_cache:
            h_cache[p.sigma] = [hematoxylin(im, sigma=p.sigma) for im in imgs]
        key = (p.sigma, p.threshold_offset, p.min_size)
        if key not in fg_cache:
            fg_cache[key] = [
                nuclei_foreground(h, threshold_offset=p.threshold_offset, min_size=p.min_size)
                for h in h_cache[p.sigma]
            ]
        return [
            _split(
                fg,
                min_distance=p.min_distance,
                seed_smoothing=p.seed_smoothing,
                min_size=p.min_size,
            )
            for fg in fg_cache[key]
        ]

    scores: dict[WatershedParams, float] = {}
    history: list[tuple[dict[str, Any], float]] = []

    def evaluate(p: WatershedParams) -> float:
        if p not in scores:
            scores[p] = float(objective(predict(p), gts))
            history.append((p.to_dict(), scores[p]))
            bar.update(1)
        return scores[p]

    best = start or WatershedParams()
    total = 1 + passes * sum(len(v) for v in grid.values())
    with tqdm(total=total, desc="tune watershed", disable=not progress, leave=False) as bar:
        best_score = evaluate(best)
        for _ in range(passes):
            changed = False
            for name in names:
                if name not in grid:
                    continue
                for value in grid[name]:
                    cand = dataclasses.replace(best, **{name: value})
                    s = evaluate(cand)
                    if s > best_score:
                        best, best_score, changed = cand, s, True
                # free the caches the held parameters can no longer reach
                if name == "sigma":
                    for k in [k for k in h_cache if k != best.sigma]:
                        del h_cache[k]
                if name in ("sigma", "threshold_offset", "min_size"):
                    for k in [
                        k
                        for k in fg_cache
                        if k != (best.sigma, best.threshold_offset, best.min_size)
                    ]:
                        del fg_cache[k]
            if not changed:
                break
        bar.total = bar.n
        bar.refresh()
    return TuningResult(params=best, score=best_score, history=history)


def watershed_params_from_templates(templates) -> WatershedParams:
    """Watershed parameters set from a template set alone (no masks, no tuning).

    What a user gets from the same clicks without any learning: the nucleus size comes
    from the templates (a template's side is about twice its nucleus's diameter, see
    :func:`mcf_fast.detection.selection.select_templates`), the threshold stays Otsu's.

    - ``min_size``: a quarter of the area of the smallest template nucleus (at least 10);
    - ``min_distance``: 0.4 of the median nucleus diameter (at least 3);
    - ``seed_smoothing``: a tenth of the median diameter;
    - ``sigma`` 1 and ``threshold_offset`` 0, the defaults.

    Parameters
    ----------
    templates : TemplateSet or sequence of Template

    Returns
    -------
    WatershedParams

    Examples
    --------
    >>> from types import SimpleNamespace as T
    >>> watershed_params_from_templates([T(size=32), T(size=40)]).min_distance
    7
    """
    sizes = np.array([float(t.size) for t in templates], dtype=np.float64)
    if sizes.size == 0:
        raise ConfigError("watershed_params_from_templates: the template set is empty")
    d_min, d_med = sizes.min() / 2.0, float(np.median(sizes)) / 2.0
    return WatershedParams(
        sigma=1.0,
        threshold_offset=0.0,
        min_size=max(10, int(round(math.pi * (d_min / 2.0) ** 2 / 4.0))),
        min_distance=max(3, int(round(0.4 * d_med))),
        seed_smoothing=round(d_med / 10.0, 2),
    )
