"""Tile predictors: what a slide run asks of a model, and the adapters that provide it.

:class:`TilePredictor` is the protocol; :class:`DetectorPredictor` adapts a
:class:`~mcf_fast.detection.detector.Detector` (a template set), :class:`ModelPredictor` an
:class:`~mcf_fast.framework.model.MCFModel` (a model bundle), and :class:`BlobPredictor` is
a classical stand-in to try a setup without a model (``mcf slide --model blob``).
:func:`load_predictor` builds one from what the user gave as ``--model``; a
:class:`PredictorSpec` is the small description that travels to dask workers instead.

Normalisation: a predictor whose output depends on a per-image statistic (the detector
normalises its fused response to [0, 1] over the image; stain normalisers estimate stain
vectors per image) would give each tile its own scale, and nuclei near a threshold would
come and go from tile to tile.  Predictors that can, expose ``calibration(samples)`` and
``calibrated(state)``: the run computes one slide-level state from a few tissue tiles spread
over the slide, stores it in ``run.json`` (so a resumed run uses the same one) and every
tile is predicted with it.  See docs/slides.md.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mcf_fast.errors import ConfigError, InputError
from mcf_fast.io.tiling import associate
from mcf_fast.ops.fusion import normalise_response
from mcf_fast.ops.tissue import hematoxylin_od

__all__ = [
    "TilePredictor",
    "BlobPredictor",
    "DetectorPredictor",
    "ModelPredictor",
    "PredictorSpec",
    "load_predictor",
    "nearest_centre_labels",
]

log = logging.getLogger("mcf_fast.slide")


@runtime_checkable
class TilePredictor(Protocol):
    """What a slide run needs from a model.

    ``predict_tile(rgb)`` takes (h, w, 3) uint8 and returns ``(labels, centres)``: an
    (h, w) int32 instance map and the (N, 2) float (y, x) centres, where label ``k`` is the
    nucleus of ``centres[k - 1]`` (:func:`mcf_fast.io.tiling.associate` makes any pair so).
    ``halo`` is how many pixels of context each side the prediction needs so that the
    labels of every nucleus whose centre lies in the middle do not change: the reach of its
    filters plus the largest nucleus.  Optionally ``calibration(samples) -> dict`` and
    ``calibrated(state) -> TilePredictor`` fix a per-image normalisation at slide level, and
    ``align`` (an int) asks that read regions start on multiples of it from the slide's
    origin (a U-Net's pooling grid): runs round the margin up to a multiple of it.
    """

    halo: int

    def predict_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def nearest_centre_labels(
    foreground: np.ndarray, markers: np.ndarray, *, radius: float
) -> np.ndarray:
    """Give each foreground pixel to the nearest marker within `radius` (a masked Voronoi).

    Unlike a watershed, whose flooding can carry a label along long paths, this rule is
    local: a pixel's label depends only on the markers within `radius`, so a tile with a
    halo of twice the radius labels its core exactly as the whole image does.

    Parameters
    ----------
    foreground : ndarray, shape (H, W), bool
    markers : ndarray, shape (H, W), int
        One pixel per marker, holding its label; 0 elsewhere.
    radius : float

    Returns
    -------
    ndarray, shape (H, W), int32
        Marker pixels always keep their own label.
    """
    from scipy import ndimage as ndi

    m = np.asarray(markers)
    if not m.any():
        return np.zeros(m.shape, np.int32)
    dist, (iy, ix) = ndi.distance_transform_edt(m == 0, return_indices=True)
    labels = np.where(np.asarray(foreground, bool) & (dist <= radius), m[iy, ix], 0)
    labels = np.where(m > 0, m, labels)
    return labels.astype(np.int32)


@dataclass(frozen=True)
class BlobPredictor:
    """A small classical predictor: hematoxylin blobs split by a seeded watershed.

    Not the paper's method: a deterministic stand-in to test and time the slide machinery
    without a fitted model (``mcf slide --model blob``).  The hematoxylin channel (colour
    deconvolution) is smoothed by a Gaussian of `sigma`, divided by a normalisation
    constant (its 99th percentile over the image, or the slide-level `norm` once
    calibrated), and local maxima above `threshold` at least `min_distance` apart become
    centres; nucleus pixels (above `threshold`, within `radius` of a centre) go to the
    nearest centre (:func:`nearest_centre_labels`).

    Parameters
    ----------
    sigma, threshold, min_distance, radius : see above
    norm : float, optional
        Slide-level normalisation constant; None normalises each image by itself.
    """

    sigma: float = 2.5
    threshold: float = 0.45
    min_distance: int = 7
    radius: int = 14
    norm: float | None = None

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ConfigError(f"BlobPredictor.sigma = {self.sigma!r}: expected > 0")
        if not 0 < self.threshold < 10:
            raise ConfigError(f"BlobPredictor.threshold = {self.threshold!r}: expected (0, 10)")
        if self.min_distance < 1 or self.radius < 1:
            raise ConfigError("BlobPredictor.min_distance and radius must be >= 1")
        if self.norm is not None and not self.norm > 0:
            raise ConfigError(f"BlobPredictor.norm = {self.norm!r}: expected > 0")

    @property
    def halo(self) -> int:
        # smoothing reach + maximum window + a nucleus reaching out of the core (radius) whose
        # pixels are decided by centres up to another radius away
        return 2 * self.radius + self.min_distance + math.ceil(4 * self.sigma) + 2

    def _smooth(self, rgb: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi

        return ndi.gaussian_filter(hematoxylin_od(rgb), self.sigma, mode="reflect", truncate=4.0)

    def calibration(self, samples: Sequence[np.ndarray]) -> dict[str, float]:
        """The slide-level normalisation: the 99th percentile over all sample pixels."""
        vals = np.concatenate([self._smooth(s).ravel() for s in samples])
        return {"norm": float(max(np.percentile(vals, 99.0), 1e-6))}

    def calibrated(self, state: dict[str, float]) -> BlobPredictor:
        return replace(self, norm=float(state["norm"]))

    def predict_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy import ndimage as ndi

        hs = self._smooth(rgb)
        norm = self.norm if self.norm is not None else max(np.percentile(hs, 99.0), 1e-6)
        s = hs / norm
        size = 2 * self.min_distance + 1
        peaks = (s == ndi.maximum_filter(s, size=size, mode="nearest")) & (s > self.threshold)
        ys, xs = np.nonzero(peaks)
        centres = np.stack([ys, xs], axis=1).astype(np.float64)
        markers = np.zeros(s.shape, np.int32)
        markers[ys, xs] = np.arange(1, len(ys) + 1, dtype=np.int32)
        if len(ys) == 0:
            return markers, centres.reshape(0, 2)
        labels = nearest_centre_labels(s > self.threshold, markers, radius=self.radius)
        return labels, centres


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _align(predictor: Any) -> int:
    """The grid read regions should start on (``predictor.align``, 1 if it has none)."""
    return max(1, int(getattr(predictor, "align", 1)))


def _detector_reach(det: Any) -> tuple[int, int]:
    """(halo, nucleus diameter) of a Detector: how far its result at a pixel looks."""
    cfg = det.config
    window = int(det.window)
    reach = (
        det.max_filter_size // 2  # correlation with the largest (G-folded) filter
        + 2 * cfg.hog_cell
        + 4  # dense HOG cells and their block normalisation
        + cfg.gdbp_q  # GDBP looks Q steps out
        + getattr(cfg, "peak_distance", 5)
    )  # local maxima and their suppression
    reach += math.ceil(4 * getattr(cfg, "pseudo_smooth", 0))  # smoothing of the posterior
    # a nucleus owned by the core reaches `window // 2` out, and its pixels are decided by
    # centres up to another `window // 2` away
    return reach + 2 * (window // 2) + 2, window


class DetectorPredictor:
    """Adapt a :class:`~mcf_fast.detection.detector.Detector` to :class:`TilePredictor`.

    Centres are the detector's; instances are its nucleus pseudo-mask pixels
    (``pseudo_mask == 1``), each given to the nearest centre within half the pseudo-mask
    window (:func:`nearest_centre_labels`; a centre outside the mask keeps a one-pixel
    shape).

    Slide-level calibration.  :meth:`Detector.detect` normalises the fused response S to
    [0, 1] by the image's own minimum and maximum, and learns its nucleus colour posterior
    (for the centre gate and the gated pseudo mask) from the image's own detections.  On a
    tile both would be the tile's, so a nucleus near a threshold could be found in one tile
    and missed by its neighbour.  :meth:`calibration` therefore fixes them for the slide:
    the (min, max) of S over a few sample tiles, their hematoxylin scale
    (:func:`~mcf_fast.ops.pseudo.hematoxylin_levels`), and a subsample of the pixels the colour
    model learns from (seeds at the stronger centres, background far from every centre, as
    :func:`~mcf_fast.ops.pseudo.colour_posterior` picks them); once :meth:`calibrated`,
    every tile is normalised by the same range and its posterior comes from the same colour
    model, handed to :func:`~mcf_fast.detection.detector.postprocess`.  Without a
    calibration the adapter is exactly ``Detector.detect``.

    Parameters
    ----------
    detector : Detector
    state : dict, optional
        A calibration from :meth:`calibration`.
    """

    #: pixels of each class kept for the slide-level colour model
    colour_pixels = 4000

    def __init__(self, detector: Any, *, state: dict[str, Any] | None = None) -> None:
        self.detector = detector
        self.halo, self.window = _detector_reach(detector)
        self.state = dict(state or {})

    def __repr__(self) -> str:
        return f"DetectorPredictor(halo={self.halo}, window={self.window})"

    # the Detector holds FFT plans that do not pickle: travel as templates + config and
    # rebuild the filter bank on arrival (once per worker)
    def __getstate__(self) -> dict[str, Any]:
        det = self.detector
        return {
            "templates": det.templates,
            "config": det.config,
            "device": getattr(det, "device", "cpu"),
            "state": self.state,
        }

    def __setstate__(self, data: dict[str, Any]) -> None:
        from mcf_fast.detection.detector import Detector

        det = Detector(data["templates"], data["config"], device=data["device"])
        self.__init__(det, state=data["state"])

    # -- pieces of Detector.detect ----------------------------------------------------------
    def _raw(self, rgb: np.ndarray) -> np.ndarray:
        det = self.detector
        return np.asarray(det.fused_response(det.features(rgb)), np.float32)

    def _uses_colour(self) -> bool:
        cfg = self.detector.config
        return cfg.centre_gate > 0 or cfg.pseudo_rule == "gated"

    def _radius(self) -> float:
        return max(1.0, self.detector.config.pseudo_radius * self.window)

    # -- calibration ----------------------------------------------------------------------
    def calibration(self, samples: Sequence[np.ndarray]) -> dict[str, Any]:
        """Slide-level response range, hematoxylin scale and colour-model pixels from sample
        tiles."""
        from scipy import ndimage as ndi

        from mcf_fast.ops.gdbp import gdbp
        from mcf_fast.ops.pseudo import find_centres

        cfg = self.detector.config
        raws = [self._raw(s) for s in samples]
        lo = min(float(r.min()) for r in raws)
        hi = max(float(r.max()) for r in raws)
        state: dict[str, Any] = {"response_range": [lo, hi]}
        if cfg.pseudo_rule == "gated" and cfg.pseudo_nucleus == "hematoxylin":
            from mcf_fast.ops.pseudo import hematoxylin_levels

            state["hematoxylin_levels"] = list(hematoxylin_levels(list(samples)))
        if not self._uses_colour() or hi <= lo:
            return state
        nuc, bg = [], []
        for rgb, raw in zip(samples, raws, strict=True):
            sn = normalise_response(raw, value_range=(lo, hi))
            d = gdbp(sn, p=cfg.gdbp_p, q=cfg.gdbp_q)
            c, sc = find_centres(
                sn,
                gdbp=d if cfg.use_gdbp else None,
                min_distance=cfg.peak_distance,
                min_score=cfg.min_score,
            )
            if len(c) == 0:
                continue
            strong = c[sc >= np.median(sc)]
            seeds = np.zeros(sn.shape, bool)
            seeds[strong[:, 0], strong[:, 1]] = True
            seeds = ndi.binary_dilation(seeds, structure=np.ones((3, 3), bool))
            marks = np.ones(sn.shape, bool)
            marks[c[:, 0], c[:, 1]] = False
            far = ndi.distance_transform_edt(marks) > 2.0 * self._radius()
            nuc.append(rgb[seeds])
            bg.append(rgb[far])
        rng = np.random.default_rng(0)
        for name, parts in (("nucleus", nuc), ("background", bg)):
            px = np.concatenate(parts) if parts else np.zeros((0, 3), np.uint8)
            if len(px) > self.colour_pixels:
                px = px[np.sort(rng.choice(len(px), self.colour_pixels, replace=False))]
            state[f"{name}_pixels"] = px.astype(int).tolist()
        return state

    def calibrated(self, state: dict[str, Any]) -> DetectorPredictor:
        return DetectorPredictor(self.detector, state=state)

    # -- prediction -----------------------------------------------------------------------
    def _posterior(self, rgb: np.ndarray) -> np.ndarray | None:
        """Nucleus posterior of the slide-level colour model (fitted on the state's pixels),
        smoothed as the detector smooths its own."""
        from scipy import ndimage as ndi

        from mcf_fast.ops.pseudo import nucleus_posterior

        nuc = np.asarray(self.state.get("nucleus_pixels", []), np.uint8).reshape(-1, 3)
        bg = np.asarray(self.state.get("background_pixels", []), np.uint8).reshape(-1, 3)
        if len(nuc) == 0 or len(bg) == 0:
            return None
        flat = rgb.reshape(-1, 3)
        # fit on the sample pixels only, evaluate on this tile's: one long 1-pixel-wide image
        pixels = np.concatenate([flat, nuc, bg])[:, None, :]
        n0, n1 = len(flat), len(flat) + len(nuc)
        is_nuc = np.zeros((len(pixels), 1), bool)
        is_bg = np.zeros((len(pixels), 1), bool)
        is_nuc[n0:n1] = True
        is_bg[n1:] = True
        post = nucleus_posterior(pixels, is_nuc, is_bg)
        if post is None:
            return None
        post = post[:n0, 0].reshape(rgb.shape[:2])
        sigma = self.detector.config.pseudo_smooth
        return ndi.gaussian_filter(post, sigma) if sigma > 0 else post

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The detector's centres and nucleus pseudo mask, with the calibration if any.

        Parameters
        ----------
        rgb : ndarray, shape (H, W, 3), uint8

        Returns
        -------
        centres : ndarray, shape (N, 2), int64
            (y, x) of each detection.
        nucleus : ndarray, shape (H, W), bool
            The nucleus part of the pseudo mask (``pseudo_mask == 1``).
        """
        from mcf_fast.detection.detector import postprocess
        from mcf_fast.ops.gdbp import gdbp

        det = self.detector
        cfg = det.config
        rr = self.state.get("response_range")
        if rr is None or rr[1] <= rr[0]:
            res = det.detect(rgb)
            centres, fg = np.asarray(res.centres, np.int64), np.asarray(res.pseudo_mask) == 1
        else:
            raw = self._raw(rgb)
            sn = normalise_response(raw, value_range=(rr[0], rr[1]))
            d = gdbp(sn, p=cfg.gdbp_p, q=cfg.gdbp_q)
            post = self._posterior(rgb) if self._uses_colour() else None
            lv = self.state.get("hematoxylin_levels")
            opts = {"posterior": post, "h_levels": None if lv is None else tuple(lv)}
            centres, _, mask = postprocess(rgb, sn, d, cfg, window=det.window, **opts)
            fg = mask == 1
        return np.asarray(centres, np.int64).reshape(-1, 2), fg

    def predict_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centres, fg = self.detect(rgb)
        markers = np.zeros(fg.shape, np.int32)
        if len(centres):
            markers[centres[:, 0], centres[:, 1]] = np.arange(1, len(centres) + 1)
        labels = nearest_centre_labels(fg, markers, radius=self.window / 2)
        return associate(labels, centres.astype(np.float64))


class ModelPredictor:
    """Adapt an :class:`~mcf_fast.framework.model.MCFModel` (a fitted bundle) to
    :class:`TilePredictor`: its instance labels and their centres.

    Without a calibration :meth:`predict_tile` is exactly ``MCFModel.predict``, whose stain
    normaliser re-estimates the source stains on every image and whose detector normalises
    its response per image: on a slide, per tile.  :meth:`calibration` fixes both for the
    slide, from a few sample tiles:

    - ``"stain_source"``: when the model has a stain normaliser, the source stain matrix and
      maximum concentrations of the pooled sample pixels
      (:meth:`~mcf_fast.ops.stain.StainNormalizer.source_state`); every tile is then
      normalised with that one source;
    - ``"detector"``: only when the labels depend on the detector (``instance_seeds ==
      "centres"``, or a model without a network), :class:`DetectorPredictor`'s calibration
      on the stain-normalised samples;
    - ``"instance_seeds"``: the model's seed mode, recorded so a state is never empty.

    Once :meth:`calibrated`, a model with a network and h-maxima or distance seeds does not
    run the detector at all: its labels come from the U-Net probability alone
    (:func:`~mcf_fast.segmentation.train.predict_proba` then
    :func:`~mcf_fast.ops.instances.instance_labels`), which is also much cheaper.

    Tiles agree with the whole image only if the U-Net sees the same pixels on the same
    pooling grid: the halo covers the network's :attr:`~mcf_fast.segmentation.unet.UNet.reach`
    and is a multiple of ``2 ** depth`` (``align``), so that with a tile side that is also
    one, every read region starts on the whole image's grid; ``predict_proba``'s own blocks
    inside a tile get a halo of the reach too.  Off the grid (a halo of 134 px for a depth-2
    net) 386 of 933 nuclei of a 1024 x 1024 image changed (IoU down to 0.92) and 5 lost
    their partner; on it, none (``test_bundle_slide_run_equals_the_whole_image``).

    Parameters
    ----------
    model : MCFModel
    source : path-like, optional
        The bundle it was loaded from; then it travels to dask workers as this path (each
        worker loads it once), with its calibration.  Without it the predictor can only run
        in this process (``workers=0``): pass the bundle path to :func:`run_slide` instead.
    halo : int, optional
        Context in pixels, rounded up to a multiple of ``align``; default: the U-Net's reach
        (``net.reach``; 64 for a network without one) plus, when the labels use the detector,
        the detector's reach, else the largest template side.
    state : dict, optional
        A calibration from :meth:`calibration`.
    detector_cls : class, optional
        The detector class the bundle is loaded with where the predictor travels
        (:func:`~mcf_fast.framework.model.detector_class`); the package's by default.

    Raises
    ------
    InputError
        For a `state` that is not a calibration of this model.
    """

    def __init__(
        self,
        model: Any,
        *,
        source: str | os.PathLike | None = None,
        halo: int | None = None,
        state: dict[str, Any] | None = None,
        detector_cls: type | None = None,
    ) -> None:
        self.model = model
        self.source = None if source is None else str(source)
        self.detector_cls = detector_cls
        net = getattr(model, "net", None)
        #: read regions start on multiples of this: the U-Net's pooling grid
        self.align = max(1, int(getattr(net, "multiple", 1))) if net is not None else 1
        net_reach = int(getattr(net, "reach", 64))
        #: the halo of predict_proba's own blocks when a tile is larger than seg.tile
        self._proba_halo = _round_up(net_reach, self.align)
        if halo is None:
            if self._uses_detector():
                det = getattr(model, "detector", None)
                reach = _detector_reach(det)[0] if det is not None else 128
            else:
                # labels from the U-Net alone: a nucleus owned by the core reaches at most
                # about one template side into the halo, and its pixels need the net's reach
                sides = [int(t.size) for t in getattr(model, "templates", None) or []]
                reach = max(sides, default=64)
            halo = reach + net_reach
        self.halo = _round_up(int(halo), self.align)
        self.state = None if state is None else self._check_state(state)
        self._detector: DetectorPredictor | None = None
        if self.state is not None and self._uses_detector():
            self._detector = DetectorPredictor(model.detector, state=self.state.get("detector"))

    def __repr__(self) -> str:
        cal = ", calibrated" if self.state is not None else ""
        return f"ModelPredictor({self.source!r}, halo={self.halo}{cal})"

    def __getstate__(self) -> dict[str, Any]:
        if self.source is None:
            raise InputError(
                "ModelPredictor: a model without its bundle path cannot be sent "
                "to dask workers; pass the bundle path to run_slide"
            )
        return {
            "source": self.source,
            "halo": self.halo,
            "state": self.state,
            "detector_cls": self.detector_cls,
        }

    def __setstate__(self, data: dict[str, Any]) -> None:
        from mcf_fast.framework.model import MCFModel

        detector_cls = data.get("detector_cls")
        self.__init__(
            MCFModel.load(data["source"], detector_cls=detector_cls),
            source=data["source"],
            halo=data["halo"],
            state=data.get("state"),
            detector_cls=detector_cls,
        )

    # -- what the model's labels depend on ---------------------------------------------------
    def _seeds(self) -> str:
        return str(self.model.config.segmentation.instance_seeds)

    def _uses_detector(self) -> bool:
        """True when the labels need the detector: centre seeds, or no network."""
        return getattr(self.model, "net", None) is None or self._seeds() == "centres"

    def _check_state(self, state: Any) -> dict[str, Any]:
        if not isinstance(state, dict):
            raise InputError(
                "state: expected a dict from ModelPredictor.calibration(), got "
                f"{type(state).__name__}"
            )
        seeds = state.get("instance_seeds")
        if seeds != self._seeds():
            raise InputError(
                f"state: a calibration for instance_seeds {seeds!r}, but this model uses "
                f"{self._seeds()!r}; calibrate again with this model (another --out)"
            )
        for key in ("stain_source", "detector"):
            if key in state and not isinstance(state[key], dict):
                raise InputError(
                    f"state[{key!r}]: expected a dict, got {type(state[key]).__name__}"
                )
        if "stain_source" in state and getattr(self.model, "stain", None) is None:
            raise InputError("state: holds a stain source, but this model has no stain normaliser")
        return dict(state)

    def _normalise(self, rgb: np.ndarray, source: dict[str, Any] | None) -> np.ndarray:
        from mcf_fast.io.images import as_rgb_uint8

        img = as_rgb_uint8(rgb, name="rgb")
        stain = getattr(self.model, "stain", None)
        if stain is None:
            return img
        out = stain.transform(img) if source is None else stain.transform(img, source=source)
        return as_rgb_uint8(out)

    # -- calibration ---------------------------------------------------------------------------
    def calibration(self, samples: Sequence[np.ndarray]) -> dict[str, Any]:
        """The slide-level stain source and, when the labels use it, detector calibration.

        Parameters
        ----------
        samples : sequence of ndarray, shape (H, W, 3)
            A few tissue tiles of the slide.

        Returns
        -------
        dict
            JSON-ready: ``instance_seeds``, and ``stain_source`` and ``detector`` where they
            apply (see the class docstring).  A stain normaliser without
            ``source_state`` (or samples with too little tissue to estimate one) leaves
            ``stain_source`` out: tiles are then stain-normalised one by one, as
            ``MCFModel.predict`` does.

        Raises
        ------
        InputError
            If `samples` is empty.
        """
        if len(samples) == 0:
            raise InputError("samples: expected at least one sample tile, got none")
        state: dict[str, Any] = {"instance_seeds": self._seeds()}
        stain = getattr(self.model, "stain", None)
        source = None
        if stain is not None and hasattr(stain, "source_state"):
            try:
                source = stain.source_state(list(samples))
            except InputError as exc:
                log.warning("calibration: no slide-level stain source (%s); per tile", exc)
        if source is not None:
            state["stain_source"] = source
        if self._uses_detector():
            normalised = [self._normalise(s, source) for s in samples]
            state["detector"] = DetectorPredictor(self.model.detector).calibration(normalised)
        return state

    def calibrated(self, state: dict[str, Any]) -> ModelPredictor:
        """This predictor with a slide-level calibration from :meth:`calibration`."""
        return ModelPredictor(
            self.model,
            source=self.source,
            halo=self.halo,
            state=state,
            detector_cls=self.detector_cls,
        )

    # -- prediction ----------------------------------------------------------------------------
    def predict_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Instance labels and centres of one tile (see :class:`TilePredictor`).

        Uncalibrated: ``MCFModel.predict``.  Calibrated: stain-normalised with the slide's
        source, then the U-Net probability (or, without a network, the calibrated
        detector's pseudo mask) split into instances by the model's seeds, using the
        calibrated detector's centres only for ``instance_seeds == "centres"``.
        """
        labels, centres, _ = self.predict_tile_full(rgb)
        return labels, centres

    def predict_tile_full(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        """:meth:`predict_tile` and the U-Net's nucleus probability (None without a network).

        The slide run measures each nucleus' mean probability from it.
        """
        if self.state is None:
            pred = self.model.predict(rgb)
            labels, centres = associate(
                np.asarray(pred.labels), np.asarray(pred.centres, np.float64), ordered=True
            )
            has_net = getattr(self.model, "net", None) is not None
            return labels, centres, (getattr(pred, "probability", None) if has_net else None)
        from mcf_fast.ops.instances import instance_labels, label_options, nucleus_table

        seg = self.model.config.segmentation
        img = self._normalise(rgb, self.state.get("stain_source"))
        centres = None
        nucleus = None
        energy = None
        if self._detector is not None:
            centres, nucleus = self._detector.detect(img)
        if self.model.net is not None:
            from mcf_fast.segmentation.train import predict_maps

            fg, energy = predict_maps(  # one block: the tile's halo covers the net's reach
                self.model.net,
                img,
                device=seg.device,
                tile=max(seg.tile, *img.shape[:2]),
                flips=seg.tta_flips,
                halo=self._proba_halo,
                precision=seg.precision,
            )
        else:
            fg = np.asarray(nucleus, np.float32)
        labels = instance_labels(
            fg, centres=centres, energy=energy, **label_options(seg, energy=energy is not None)
        )
        table = nucleus_table(labels)
        cents = np.stack([table["y"], table["x"]], axis=1) if len(table) else np.zeros((0, 2))
        labels, cents = associate(labels, cents, ordered=True)
        return labels, cents, (fg if self.model.net is not None else None)


@dataclass(frozen=True)
class PredictorSpec:
    """A predictor described by a path (or ``"blob"``), built where it is needed.

    Workers build it once from this small description instead of receiving the model's
    arrays; on a remote cluster the path must be readable by the workers.
    """

    source: str
    calibration: dict[str, Any] = field(default_factory=dict)
    #: the detector class a bundle is loaded with (:func:`load_predictor`); None: the package's
    detector_cls: type | None = None

    def build(self) -> TilePredictor:
        pred = load_predictor(self.source, detector_cls=self.detector_cls)
        if self.calibration and hasattr(pred, "calibrated"):
            pred = pred.calibrated(self.calibration)
        return pred


def load_predictor(source: str | os.PathLike, *, detector_cls: type | None = None) -> TilePredictor:
    """Build a predictor from what the user gave as ``--model``.

    ``"blob"`` is :class:`BlobPredictor`; a ``.json`` file is a template set (a
    :class:`~mcf_fast.detection.detector.Detector` built from it); anything else is a model
    bundle written by ``mcf fit``, loaded with `detector_cls` (see
    :meth:`~mcf_fast.framework.model.MCFModel.load`).

    Raises
    ------
    InputError
        If the path does not exist.
    FormatError
        If the file is neither a template set nor a model bundle.
    """
    if str(source) == "blob":
        return BlobPredictor()
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such model or template set")
    if path.suffix.lower() == ".json":
        from mcf_fast.detection.detector import Detector
        from mcf_fast.io.templates import TemplateSet

        return DetectorPredictor(Detector(TemplateSet.load(path)))
    from mcf_fast.framework.model import MCFModel

    model = MCFModel.load(path, detector_cls=detector_cls)
    return ModelPredictor(model, source=path, detector_cls=detector_cls)
