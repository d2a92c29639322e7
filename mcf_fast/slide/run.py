"""Whole-slide runs on dask.distributed: tiles in, streamed results out.

A run cuts the slide into tiles (:mod:`mcf_fast.io.tiling`), skips tiles without tissue,
and sends one task per tile to a dask cluster: a :class:`~distributed.LocalCluster` by
default, or any running scheduler.  The predictor travels to the workers once, in a worker
plugin that the scheduler also hands to workers that join (or restart) later; each task
receives only its tile's coordinates.  A task reads its read region, predicts, applies the
ownership rule, writes its core labels into the Zarr store (the core is exactly one chunk,
so workers never share a chunk), measures its nuclei and writes one result file
(``tiles/tile_NNNNNN.npz``, atomically); it returns only a small summary.  As each tile
finishes, the client appends a line to ``manifest.jsonl``, so memory does not grow with
the slide and an interrupted run resumes where it stopped: tiles already in the manifest
(with their result file) are skipped.  At the end the GeoJSON, the CSV and
the overlay are assembled from the result files, one tile at a time, in tile order.

Faults: a tile that cannot be read (or whose prediction raises) is logged, listed in the
report and left out of the manifest, so a re-run retries it; the other tiles finish.  A
worker that dies is replaced by its nanny and its tasks are rescheduled by dask; because the
client records each tile once, by index, and result files are replaced atomically, every
tile appears exactly once in the outputs.

Predictors implement :class:`TilePredictor`; :func:`load_predictor` adapts a template set
(:class:`~mcf_fast.detection.detector.Detector`) or a model bundle
(:class:`~mcf_fast.framework.model.MCFModel`).

Normalisation: a predictor whose output depends on a per-image statistic (the detector
normalises its fused response to [0, 1] over the image; stain normalisers estimate stain
vectors per image) would give each tile its own scale, and nuclei near a threshold would
come and go from tile to tile.  Predictors that can, expose ``calibration(samples)`` and
``calibrated(state)``: the run computes one slide-level state from a few tissue tiles spread
over the slide, stores it in ``run.json`` (so a resumed run uses the same one) and every
tile is predicted with it.  See docs/slides.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mcf_fast.errors import ConfigError, InputError, McfError
from mcf_fast.io.export import (
    CSV_COLUMNS,
    concat_csv,
    concat_geojson,
    csv_fragment,
    finish_label_store,
    geojson_fragment,
    label_array_path,
    measure_nuclei,
    open_label_store,
    overlay,
    parquet_available,
    write_parquet,
)
from mcf_fast.io.images import atomic_path
from mcf_fast.io.outputs import check_output_dir, lock_folder
from mcf_fast.io.slides import SlideReader, open_slide, tissue_mask
from mcf_fast.io.tiling import Tile, associate, tile_grid, tile_labels

__all__ = [
    "TilePredictor",
    "BlobPredictor",
    "DetectorPredictor",
    "ModelPredictor",
    "PredictorSpec",
    "load_predictor",
    "nearest_centre_labels",
    "predict_tiled",
    "SlideReport",
    "run_slide",
]

log = logging.getLogger("mcf_fast.slide")

#: file names inside the output folder
RUN_FILE, MANIFEST, TILES_DIR = "run.json", "manifest.jsonl", "tiles"
LABELS, GEOJSON, CSV, OVERLAY, REPORT, LOG = (
    "labels.zarr",
    "nuclei.geojson",
    "nuclei.csv",
    "overlay.png",
    "report.json",
    "run.log",
)
PARQUET = "nuclei.parquet"


# ============================================================================ predictors
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


def _hematoxylin(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[:, :, 0]


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

        return ndi.gaussian_filter(_hematoxylin(rgb), self.sigma, mode="reflect", truncate=4.0)

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
    the (min, max) of S over a few sample tiles, and a subsample of the pixels the colour
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
        """Slide-level response range and colour-model pixels from sample tiles."""
        from scipy import ndimage as ndi

        from mcf_fast.ops.gdbp import gdbp
        from mcf_fast.ops.pseudo import find_centres

        cfg = self.detector.config
        raws = [self._raw(s) for s in samples]
        lo = min(float(r.min()) for r in raws)
        hi = max(float(r.max()) for r in raws)
        state: dict[str, Any] = {"response_range": [lo, hi]}
        if not self._uses_colour() or hi <= lo:
            return state
        nuc, bg = [], []
        for rgb, raw in zip(samples, raws, strict=True):
            sn = ((raw - np.float32(lo)) * np.float32(1.0 / (hi - lo))).astype(np.float32)
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
            sn = ((raw - np.float32(rr[0])) * np.float32(1.0 / (rr[1] - rr[0]))).astype(np.float32)
            d = gdbp(sn, p=cfg.gdbp_p, q=cfg.gdbp_q)
            post = self._posterior(rgb) if self._uses_colour() else None
            centres, _, mask = postprocess(rgb, sn, d, cfg, window=det.window, posterior=post)
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
    ) -> None:
        self.model = model
        self.source = None if source is None else str(source)
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
        return {"source": self.source, "halo": self.halo, "state": self.state}

    def __setstate__(self, data: dict[str, Any]) -> None:
        from mcf_fast.framework.model import MCFModel

        self.__init__(
            MCFModel.load(data["source"]),
            source=data["source"],
            halo=data["halo"],
            state=data.get("state"),
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
        return ModelPredictor(self.model, source=self.source, halo=self.halo, state=state)

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
        from mcf_fast.ops.instances import instance_labels, nucleus_table

        seg = self.model.config.segmentation
        img = self._normalise(rgb, self.state.get("stain_source"))
        centres = None
        nucleus = None
        if self._detector is not None:
            centres, nucleus = self._detector.detect(img)
        if self.model.net is not None:
            from mcf_fast.segmentation.train import predict_proba

            fg = predict_proba(
                self.model.net,
                img,
                device=seg.device,
                tile=seg.tile,
                flips=seg.tta_flips,
                halo=self._proba_halo,
            )
        else:
            fg = np.asarray(nucleus, np.float32)
        labels = instance_labels(
            fg,
            centres=centres,
            threshold=seg.threshold,
            min_area=seg.min_nucleus_area,
            seeds=seg.instance_seeds,
            h=seg.instance_h,
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

    def build(self) -> TilePredictor:
        pred = load_predictor(self.source)
        if self.calibration and hasattr(pred, "calibrated"):
            pred = pred.calibrated(self.calibration)
        return pred


def load_predictor(source: str | os.PathLike) -> TilePredictor:
    """Build a predictor from what the user gave as ``--model``.

    ``"blob"`` is :class:`BlobPredictor`; a ``.json`` file is a template set (a
    :class:`~mcf_fast.detection.detector.Detector` built from it); anything else is a model
    bundle written by ``mcf fit``.

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

    return ModelPredictor(MCFModel.load(path), source=path)


# ============================================================================ one tile
@dataclass
class _Job:
    key: str
    reader: SlideReader
    predictor: Any  # TilePredictor or PredictorSpec
    tiles_dir: str
    labels: str  # the Zarr label store (chunks aligned with the tile cores)
    overlay_step: int = 1  # slide pixels per overlay pixel


_JOBS: dict[str, _Job] = {}
_BUILT: dict[str, tuple[SlideReader, TilePredictor]] = {}
_STORES: dict[str, Any] = {}


def _label_store(key: str):
    if key not in _STORES:
        import zarr

        _STORES[key] = zarr.open_array(_JOBS[key].labels, mode="r+")
    return _STORES[key]


def _materialise(key: str) -> tuple[SlideReader, TilePredictor]:
    if key not in _BUILT:
        job = _JOBS.get(key)
        if job is None:
            raise McfError(f"slide job {key} is not registered on this worker")
        pred = job.predictor.build() if isinstance(job.predictor, PredictorSpec) else job.predictor
        _BUILT[key] = (job.reader, pred)
    return _BUILT[key]


def _plugin_class():
    from distributed.diagnostics.plugin import WorkerPlugin

    class SlideJobPlugin(WorkerPlugin):
        """Carries one run's reader and predictor to every worker, once."""

        def __init__(self, job: _Job) -> None:
            self.job = job
            self.name = f"mcf-slide-{job.key}"

        # this class is pickled by value: reach the registries through the real module
        def setup(self, worker=None) -> None:
            from mcf_fast.slide import run as module

            module._JOBS[self.job.key] = self.job

        def teardown(self, worker=None) -> None:
            from mcf_fast.slide import run as module

            module._JOBS.pop(self.job.key, None)
            module._BUILT.pop(self.job.key, None)
            module._STORES.pop(self.job.key, None)

    return SlideJobPlugin


def _tile_file(index: int) -> str:
    return f"tile_{index:06d}.npz"


def _process_tile(key: str, tile: Tile) -> dict[str, Any]:
    """Run one tile (on a worker): read, predict, own, measure, write its result file."""
    t0 = time.perf_counter()
    job = _JOBS.get(key)
    if job is None:
        raise McfError(f"slide job {key} is not registered on this worker")
    reader, predictor = _materialise(key)
    base = {"tile": tile.index, "core": list(tile.core)}
    y0, x0, y1, x1 = tile.read
    try:
        rgb = reader.read_region(y0, x0, y1 - y0, x1 - x0)
    except Exception as exc:  # any backend error means this tile cannot be read
        return {**base, "status": "unreadable", "error": f"{type(exc).__name__}: {exc}"}
    try:
        full = getattr(predictor, "predict_tile_full", None)
        if full is not None:
            labels, centres, prob = full(rgb)
        else:
            (labels, centres), prob = predictor.predict_tile(rgb), None
        tl = tile_labels(labels, centres, tile, width=reader.shape[1])
        table = measure_nuclei(
            tl.labels,
            rgb,
            ids=tl.ids,
            centres=tl.centres,
            origin=(y0, x0),
            downsample=reader.downsample,
            mpp=reader.mpp,
            slide_shape=reader.shape,
            read_box=tile.read,
            probability=prob,
        )
    except Exception as exc:  # reported per tile so that the other tiles finish
        return {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    # the core is exactly one chunk of the label store: tiles never share a chunk, so
    # workers write their own in parallel (a rerun of the tile rewrites the same chunk)
    cy0, cx0, cy1, cx1 = tile.core
    _label_store(key)[cy0:cy1, cx0:cx1] = tl.core
    # the outputs' share of this tile, made here so that assembling them is a concatenation
    s = job.overlay_step
    fr, fc = (-cy0) % s, (-cx0) % s
    parts = {
        "geojson": np.frombuffer(geojson_fragment(table, tile=tile.index).encode(), np.uint8),
        "csv": np.frombuffer(csv_fragment(tile.index, table).encode(), np.uint8),
        "overlay": np.ascontiguousarray(tl.core[fr::s, fc::s]),
    }
    path = Path(job.tiles_dir) / _tile_file(tile.index)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **table, **parts)
    return {
        **base,
        "status": "ok",
        "file": path.name,
        "n": int(len(tl.ids)),
        "seconds": round(time.perf_counter() - t0, 4),
        "pixels": int((tile.core[2] - tile.core[0]) * (tile.core[3] - tile.core[1])),
    }


def predict_tiled(
    image: Any, predictor: TilePredictor, *, tile: int = 1024, margin: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile an image in memory and stitch the result (no dask, no files).

    The same tiling, ownership rule and ids as :func:`run_slide`; with ``tile`` at least
    the image size it is the whole-image prediction.

    Parameters
    ----------
    image : ndarray or SlideReader
    predictor : TilePredictor
    tile, margin : int
        Core side; halo (at least ``predictor.halo``, rounded up to a multiple of
        ``predictor.align`` if it has one).

    Returns
    -------
    labels : ndarray, shape (H, W), int64
        Slide-wide ids (:func:`~mcf_fast.io.tiling.instance_ids`), 0 background.
    ids : ndarray, shape (N,), int64
        The nuclei, sorted by id.
    centres : ndarray, shape (N, 2), float64
    """
    reader = open_slide(image)
    m = _round_up(max(int(margin or 0), int(predictor.halo)), _align(predictor))
    H, W = reader.shape
    out = np.zeros((H, W), np.int64)
    ids, cents = [], []
    for t in tile_grid((H, W), tile=tile, margin=m):
        y0, x0, y1, x1 = t.read
        labels, centres = predictor.predict_tile(reader.read_region(y0, x0, y1 - y0, x1 - x0))
        tl = tile_labels(labels, centres, t, width=W)
        out[t.core[0] : t.core[2], t.core[1] : t.core[3]] = tl.core
        ids.append(tl.ids)
        cents.append(tl.centres)
    all_ids = np.concatenate(ids)
    order = np.argsort(all_ids, kind="stable")
    return out, all_ids[order], np.concatenate(cents)[order]


# ============================================================================ the run
@dataclass
class SlideReport:
    """The summary of a run (also written to ``report.json``)."""

    slide: str
    shape: tuple[int, int]
    level: int
    mpp: float | None
    tile: int
    margin: int
    n_tiles: int
    n_tissue: int
    n_resumed: int = 0
    n_processed: int = 0
    n_nuclei: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    export_seconds: float = 0.0
    megapixels: float = 0.0
    workers: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["complete"] = self.complete
        d["megapixels_per_second"] = round(self.megapixels_per_second, 4)
        return d


def _remove_stale_parts(tiles_dir: Path) -> None:
    """Delete temporary result files left by a worker killed while writing one."""
    for p in tiles_dir.glob(".tile_*.part.npz"):
        p.unlink(missing_ok=True)


def _read_manifest(path: Path, tiles_dir: Path) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: that tile is redone
                continue
            if rec.get("status") == "ok" and (tiles_dir / rec["file"]).exists():
                done[int(rec["tile"])] = rec
    return done


def _summary(calibration: dict[str, Any]) -> dict[str, Any]:
    """The calibration for reports: long lists (colour-model pixels) as their length, in
    nested dicts too (a model bundle's calibration nests the detector's)."""
    return {
        k: (
            _summary(v)
            if isinstance(v, dict)
            else f"{len(v)} values"
            if isinstance(v, list) and len(v) > 8
            else v
        )
        for k, v in calibration.items()
    }


def _describe(predictor: Any, built: Any) -> str:
    """How run.json names the model: the file it comes from, else the predictor's repr."""
    if isinstance(predictor, PredictorSpec) and predictor.source != "blob":
        return predictor.source
    return repr(built)


def slide_identity(reader: SlideReader, *, side: int = 128) -> dict[str, Any]:
    """What tells this slide from another of the same name and shape, for resuming a run.

    The file's size and modification time (when the reader has a file) and a SHA-256 of
    the pixels of nine ``side x side`` regions on a 3 x 3 grid over the slide.
    """
    import hashlib

    ident: dict[str, Any] = {}
    path = getattr(reader, "path", None)
    if path is not None and Path(path).is_file():
        st = Path(path).stat()
        ident.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    h = hashlib.sha256()
    height, width = reader.shape
    rh, rw = min(side, height), min(side, width)
    for fy in (0.25, 0.5, 0.75):
        for fx in (0.25, 0.5, 0.75):
            y = min(int(height * fy), height - rh)
            x = min(int(width * fx), width - rw)
            h.update(np.ascontiguousarray(reader.read_region(y, x, rh, rw)).tobytes())
    ident["pixels_sha256"] = h.hexdigest()
    return ident


def _predictor_identity(predictor: Any) -> str | None:
    """SHA-256 of the model file a predictor comes from (None for "blob" or an object)."""
    from mcf_fast.io.outputs import file_digest

    if isinstance(predictor, PredictorSpec) and Path(predictor.source).is_file():
        return file_digest(predictor.source)
    return None


def _calibration_tiles(tiles: list[Tile], n: int) -> list[Tile]:
    if n <= 0 or not tiles:
        return []
    pick = np.unique(np.linspace(0, len(tiles) - 1, min(n, len(tiles))).round().astype(int))
    return [tiles[i] for i in pick]


def _start_client(workers: int | None, scheduler: str | None):
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({exc})") from exc
    n = workers or max(1, os.cpu_count() or 1)
    threads = str(max(1, (os.cpu_count() or 1) // n))
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads},
    )
    return Client(cluster), cluster


def run_slide(
    slide: Any,
    predictor: TilePredictor | PredictorSpec | str | os.PathLike,
    out: str | os.PathLike,
    *,
    tile: int = 1024,
    margin: int | None = None,
    level: int = 0,
    mpp: float | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    skip_background: bool = True,
    n_calibration: int = 4,
    overlay_side: int = 2048,
    progress: bool = True,
    on_tile: Callable[[dict[str, Any]], None] | None = None,
    parquet: bool = False,
    gzip_geojson: bool = False,
) -> SlideReport:
    """Detect and segment nuclei over a whole slide, on dask, streaming results to `out`.

    Parameters
    ----------
    slide : path-like, ndarray or SlideReader
        See :func:`~mcf_fast.io.slides.open_slide`.
    predictor : TilePredictor, PredictorSpec, path or "blob"
        A path is a template set (``.json``) or a model bundle (:func:`load_predictor`);
        workers load it themselves, once each.
    out : path-like
        Output folder: ``labels.zarr``, ``nuclei.geojson``, ``nuclei.csv``, ``overlay.png``,
        ``report.json``, ``run.log``, and the run's state (``run.json``,
        ``manifest.jsonl``, ``tiles/``) that a re-run resumes from.
    tile : int
        Core side in pixels (also the Zarr chunk side).
    margin : int, optional
        Halo in pixels; at least ``predictor.halo`` (the default), rounded up to a multiple
        of ``predictor.align`` if it has one (a model bundle: ``2 ** depth``; keep `tile`
        a multiple of it too).
    level : int
        Pyramid level to process.
    mpp : float, optional
        Microns per pixel at level 0, overriding the slide's metadata.
    workers : int, optional
        Processes of the LocalCluster (default: one per CPU); ``0`` runs in this process
        without dask (for debugging).
    scheduler : str, optional
        Address of a running dask scheduler to use instead of a LocalCluster.
    client : distributed.Client, optional
        An existing client to use (then `workers` and `scheduler` are ignored).
    skip_background : bool
        Skip tiles with no tissue in the low-resolution tissue mask.
    n_calibration : int
        Tissue tiles read to fix the slide-level normalisation (0: none).
    overlay_side : int
        Longest side of the overlay PNG.
    progress : bool
        Show a progress bar on stderr.
    on_tile : callable, optional
        Called in this process with each tile's summary as it is recorded.
    parquet : bool
        Also write the nucleus table as ``nuclei.parquet`` (needs pyarrow).
    gzip_geojson : bool
        Write ``nuclei.geojson.gz`` (gzip) instead of ``nuclei.geojson``.

    Returns
    -------
    SlideReport
        ``failed`` lists tiles that could not be read or predicted; a re-run retries them.

    Raises
    ------
    InputError, FormatError
        For an unreadable slide or model.
    ConfigError
        If `out` holds a run made with other parameters.
    """
    t_start = time.perf_counter()
    if parquet and not parquet_available():  # before hours of work, not after
        raise InputError("--parquet needs pyarrow: pip install 'mcf-fast[parquet]'")
    out_dir = check_output_dir(out)  # before any model is loaded or tile read
    reader = open_slide(slide, level=level, mpp=mpp)
    if isinstance(predictor, (str, os.PathLike)):
        predictor = PredictorSpec(str(predictor))
    local_pred = predictor.build() if isinstance(predictor, PredictorSpec) else predictor
    if not isinstance(local_pred, TilePredictor):
        raise InputError(f"predictor: {type(local_pred).__name__} has no predict_tile/halo")
    halo = int(local_pred.halo)
    align = _align(local_pred)
    m = _round_up(max(int(margin) if margin is not None else 0, halo), align)
    if margin is not None and int(margin) < halo:
        log.warning("margin %d is below the predictor's halo %d; using %d", margin, halo, m)
    if tile % align:
        log.warning(
            "tile %d is not a multiple of %d (the model's pooling grid): tiles can differ "
            "from the whole-image result",
            tile,
            align,
        )
    tiles = tile_grid(reader.shape, tile=tile, margin=m)

    with lock_folder(out_dir):  # a second run into the same folder is refused
        return _run_logged(
            reader,
            predictor,
            local_pred,
            tiles,
            out_dir,
            tile=tile,
            margin=m,
            level=level,
            workers=workers,
            scheduler=scheduler,
            client=client,
            skip_background=skip_background,
            n_calibration=n_calibration,
            overlay_side=overlay_side,
            progress=progress,
            on_tile=on_tile,
            t_start=t_start,
            exports={"parquet": parquet, "gzip_geojson": gzip_geojson},
        )


def _run_logged(
    reader: SlideReader,
    predictor: Any,
    local_pred: Any,
    tiles: list[Tile],
    out_dir: Path,
    **kwargs: Any,
) -> SlideReport:
    tiles_dir = out_dir / TILES_DIR
    tiles_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    old_level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        return _run(reader, predictor, local_pred, tiles, out_dir, tiles_dir, **kwargs)
    finally:
        log.setLevel(old_level)
        log.removeHandler(handler)
        handler.close()


def _run(
    reader: SlideReader,
    predictor: Any,
    local_pred: Any,
    tiles: list[Tile],
    out_dir: Path,
    tiles_dir: Path,
    *,
    tile: int,
    margin: int,
    level: int,
    workers: int | None,
    scheduler: str | None,
    client: Any,
    skip_background: bool,
    n_calibration: int,
    overlay_side: int,
    progress: bool,
    on_tile: Callable[[dict[str, Any]], None] | None,
    t_start: float,
    exports: dict[str, bool] | None = None,
) -> SlideReport:
    from tqdm.auto import tqdm

    exports = exports or {}

    tissue = tissue_mask(reader) if skip_background else None
    todo = [t for t in tiles if tissue is None or tissue.any_in(*t.core)]
    params = {
        "slide": reader.name,
        "shape": list(reader.shape),
        "level": level,
        "downsample": reader.downsample,
        "mpp": reader.mpp,
        "tile": tile,
        "margin": margin,
        "predictor": _describe(predictor, local_pred),
        "predictor_sha256": _predictor_identity(predictor),
        "slide_identity": slide_identity(reader),
    }
    run_file = out_dir / RUN_FILE
    calibration: dict[str, Any] = {}
    if run_file.exists():
        try:
            prev = json.loads(run_file.read_text(encoding="utf-8"))
            if not isinstance(prev, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ConfigError(
                f"{run_file}: not a readable run record ({exc}); use another --out"
            ) from exc
        if "slide_identity" not in prev:
            raise ConfigError(
                f"{out_dir}: holds a run made by an earlier mcf_fast, which did not record "
                "the slide's identity, so it cannot be resumed safely; use another --out "
                "or remove the folder"
            )
        diff = {k: (prev.get(k), v) for k, v in params.items() if prev.get(k) != v}
        if "slide_identity" in diff or "predictor_sha256" in diff:
            what = [
                w
                for k, w in (
                    ("slide_identity", "another slide (its file or pixels differ)"),
                    ("predictor_sha256", "another model file"),
                )
                if k in diff
            ]
            raise ConfigError(
                f"{out_dir}: holds a run of {' and of '.join(what)}, not this "
                f"{reader.name}; resuming would mix both runs' nuclei: use another --out "
                "or remove the folder"
            )
        if diff:
            raise ConfigError(
                f"{out_dir}: holds a run with other parameters "
                f"{ {k: v[0] for k, v in diff.items()} } (now "
                f"{ {k: v[1] for k, v in diff.items()} }); use another --out"
            )
        calibration = prev.get("calibration", {})
    elif n_calibration > 0 and hasattr(local_pred, "calibration") and todo:
        samples = []
        for t in _calibration_tiles(todo, n_calibration):
            y0, x0, y1, x1 = t.read
            try:
                samples.append(reader.read_region(y0, x0, y1 - y0, x1 - x0))
            except Exception as exc:  # an unreadable sample is skipped, the run reports it
                log.warning("calibration: tile %d unreadable (%s)", t.index, exc)
        if samples:
            calibration = dict(local_pred.calibration(samples))
    if not run_file.exists():
        with atomic_path(run_file) as tmp:
            tmp.write_text(json.dumps({**params, "calibration": calibration}), encoding="utf-8")
    if calibration:
        log.info("slide-level calibration %s", _summary(calibration))
        if isinstance(predictor, PredictorSpec):
            predictor = replace(predictor, calibration=calibration)
        else:
            predictor = predictor.calibrated(calibration)

    manifest = out_dir / MANIFEST
    _remove_stale_parts(tiles_dir)
    done = _read_manifest(manifest, tiles_dir)
    # created (or reopened to resume) here; the workers write their cores into it
    open_label_store(
        out_dir / LABELS,
        shape=reader.shape,
        chunk=tile,
        attrs={
            **params,
            "calibration": _summary(calibration),
            "ids": "floor(y) * width + floor(x) + 1, (y, x) the centre in pixel corners",
        },
    )
    report = SlideReport(
        slide=reader.name,
        shape=reader.shape,
        level=level,
        mpp=reader.mpp,
        tile=tile,
        margin=margin,
        n_tiles=len(tiles),
        n_tissue=len(todo),
        calibration=_summary(calibration),
    )
    pending = [t for t in todo if t.index not in done]
    report.n_resumed = len(todo) - len(pending)
    log.info(
        "%s: %d tiles, %d with tissue, %d already done, %d to run",
        reader.name,
        len(tiles),
        len(todo),
        report.n_resumed,
        len(pending),
    )
    by_index = {t.index: t for t in tiles}

    bar = tqdm(
        total=len(pending),
        desc=f"mcf slide {reader.name}",
        unit="tile",
        disable=not progress,
        leave=True,
    )
    t_run = time.perf_counter()
    with open(manifest, "a", encoding="utf-8") as mf:

        def record(summary: dict[str, Any]) -> None:
            idx = int(summary["tile"])
            if idx in done:  # a result that arrived twice is recorded once
                return
            if summary.get("status") == "ok":
                mf.write(json.dumps(summary) + "\n")
                mf.flush()
                os.fsync(mf.fileno())
                done[idx] = summary
                report.n_processed += 1
                report.megapixels += summary["pixels"] / 1e6
            else:
                log.warning("tile %d %s: %s", idx, summary.get("status"), summary.get("error"))
                report.failed.append(summary)
            bar.update(1)
            if on_tile is not None:
                on_tile(summary)

        key = uuid.uuid4().hex[:12]
        job = _Job(
            key=key,
            reader=reader,
            predictor=predictor,
            tiles_dir=str(tiles_dir),
            labels=str(label_array_path(out_dir / (LABELS + ".partial"))),
            overlay_step=max(1, math.ceil(max(reader.shape) / overlay_side)),
        )
        if workers == 0 and client is None and scheduler is None:
            report.workers = 0
            _JOBS[key] = job
            try:
                for t in pending:
                    record(_process_tile(key, t))
            finally:
                _JOBS.pop(key, None)
                _BUILT.pop(key, None)
                _STORES.pop(key, None)
        elif pending:
            _run_dask(
                job,
                pending,
                record,
                workers=workers,
                scheduler=scheduler,
                client=client,
                report=report,
            )
    bar.close()
    run_seconds = time.perf_counter() - t_run
    _remove_stale_parts(tiles_dir)  # no task of this run is running any more

    # -- assemble the vector outputs from the result files, in tile order ------------------
    ok = [i for i in sorted(done)]
    if report.complete:
        finish_label_store(out_dir / LABELS, mpp=reader.mpp, downsample=reader.downsample)
        labels_path = out_dir / LABELS
    else:
        labels_path = out_dir / (LABELS + ".partial")

    def fragments(name: str):
        for i in ok:
            with np.load(tiles_dir / done[i]["file"]) as z:
                yield z[name].tobytes().decode()

    t_export = time.perf_counter()
    geojson_path = out_dir / (GEOJSON + ".gz" if exports.get("gzip_geojson") else GEOJSON)
    concat_geojson(geojson_path, fragments("geojson"))
    report.n_nuclei = concat_csv(out_dir / CSV, fragments("csv"))
    if exports.get("parquet"):

        def tables():
            for i in ok:
                with np.load(tiles_dir / done[i]["file"]) as z:
                    yield i, {c: z[c] for c in CSV_COLUMNS if c != "tile"}

        write_parquet(out_dir / PARQUET, tables())
    thumb, step = reader.thumbnail(overlay_side)
    canvas = np.zeros(thumb.shape[:2], np.int64)
    s = int(step)
    for i in ok:
        y0, x0, _, _ = by_index[i].core
        with np.load(tiles_dir / done[i]["file"]) as z:
            sub = z["overlay"]
        ty, tx = -(-y0 // s), -(-x0 // s)
        canvas[ty : ty + sub.shape[0], tx : tx + sub.shape[1]] = sub
    overlay(thumb, canvas, path=out_dir / OVERLAY)
    report.seconds = round(run_seconds, 3)
    report.export_seconds = round(time.perf_counter() - t_export, 3)
    report.outputs = {
        "labels": str(labels_path),
        "geojson": str(geojson_path),
        "csv": str(out_dir / CSV),
        **({"parquet": str(out_dir / PARQUET)} if exports.get("parquet") else {}),
        "overlay": str(out_dir / OVERLAY),
        "report": str(out_dir / REPORT),
        "log": str(out_dir / LOG),
    }
    with atomic_path(out_dir / REPORT) as tmp:
        tmp.write_text(
            json.dumps(
                {**report.to_dict(), "total_seconds": round(time.perf_counter() - t_start, 3)},
                indent=1,
            ),
            encoding="utf-8",
        )
    if report.failed:
        log.warning("%d tile(s) failed; a re-run retries them", len(report.failed))
    return report


def _run_dask(
    job: _Job,
    pending: list[Tile],
    record: Callable[[dict[str, Any]], None],
    *,
    workers: int | None,
    scheduler: str | None,
    client: Any,
    report: SlideReport,
) -> None:
    from distributed import as_completed

    own_cluster = None
    if client is None:
        client, own_cluster = _start_client(workers, scheduler)
        own_client = True
    else:
        own_client = False
    plugin = _plugin_class()(job)
    try:
        client.register_plugin(plugin)
        report.workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        futures = [
            client.submit(
                _process_tile, job.key, t, key=f"mcf-tile-{job.key}-{t.index}", pure=False
            )
            for t in pending
        ]
        by_key = {f.key: t for f, t in zip(futures, pending, strict=True)}
        for fut in as_completed(futures):
            t = by_key[fut.key]
            try:
                summary = fut.result()
            except Exception as exc:  # the task raised or its workers kept dying
                summary = {
                    "tile": t.index,
                    "core": list(t.core),
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            fut.release()
            record(summary)
    finally:
        try:
            client.unregister_worker_plugin(plugin.name)
        except Exception as exc:  # the cluster may already be gone; nothing to undo then
            log.debug("could not unregister %s: %s", plugin.name, exc)
        if own_client:
            client.close()
        if own_cluster is not None:
            own_cluster.close()
