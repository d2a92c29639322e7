"""The detection branch as one object: template set in, centres and pseudo masks out.

:class:`Detector` builds the filter bank of eq. (1) once from a template set; each call of
:meth:`Detector.detect` then runs features -> FFT correlation with every filter -> fusion
(eqs. 2-3) -> normalisation -> GDBP (eq. 4) -> centres -> pseudo mask.

Example
-------
>>> from mcf_fast.io.templates import TemplateSet              # doctest: +SKIP
>>> det = Detector(TemplateSet.load("templates.json"))         # doctest: +SKIP
>>> result = det.detect(read_image("tile.png"))                # doctest: +SKIP
>>> result.centres[:3], result.scores[:3]                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from mcf_fast._validate import is_device
from mcf_fast.config import DetectionConfig
from mcf_fast.errors import FormatError, InputError
from mcf_fast.io.images import as_rgb_uint8
from mcf_fast.ops.correlation import SpectralBank, iter_correlate_batches
from mcf_fast.ops.filters import (
    FilterBank,
    build_filter_bank,
    channel_projection,
    correlation_filters,
    crop_sizes,
    projection_rank,
    scale_sizes,
)
from mcf_fast.ops.fusion import (
    FusionLayout,
    accumulate_crops,
    accumulate_scales_templates,
    normalise_response,
    weight_scales,
)
from mcf_fast.ops.pseudo import colour_posterior, find_centres, gate_centres, pseudo_mask

__all__ = ["Detection", "Detector", "postprocess"]


@dataclass(frozen=True, eq=False)
class Detection:
    """What :meth:`Detector.detect` returns for one image.

    Attributes
    ----------
    centres : ndarray, shape (M, 2), int64
        Nucleus centres (y, x), by decreasing score.
    scores : ndarray, shape (M,), float32
        Normalised response S~ at each centre.
    response : ndarray, shape (H, W), float32
        The fused, normalised response S~ in [0, 1].
    gdbp : ndarray, shape (H, W), float32
        The GDBP map D of eq. (4).
    pseudo_mask : ndarray, shape (H, W), int8
        -1 unknown, 0 background, 1 nucleus.
    """

    centres: np.ndarray
    scores: np.ndarray
    response: np.ndarray
    gdbp: np.ndarray
    pseudo_mask: np.ndarray


def empty_detection(shape: tuple[int, int]) -> Detection:
    """The detection of an image without tissue: no centres, every pixel background."""
    zeros = np.zeros(shape, np.float32)
    return Detection(
        centres=np.zeros((0, 2), np.int64),
        scores=np.zeros(0, np.float32),
        response=zeros,
        gdbp=zeros.copy(),
        pseudo_mask=np.zeros(shape, np.int8),
    )


def postprocess(
    image: np.ndarray,
    response: np.ndarray,
    gdbp_map: np.ndarray,
    config: DetectionConfig,
    *,
    window: int,
    posterior: np.ndarray | None = None,
    h_levels: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres, their scores and the pseudo mask from S~ and D (the tail of ``detect``).

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
    response, gdbp_map : ndarray, shape (H, W)
        The normalised fused response S~ and the GDBP map D.
    config : DetectionConfig
        ``use_gdbp``, ``peak_distance``, ``min_score``, ``centre_gate`` and the pseudo-mask
        fields are read.
    window : int
        Side of the middle-scale filter.
    posterior : ndarray, shape (H, W), optional
        A nucleus colour posterior to use instead of the one learnt from this image's own
        detections (e.g. a slide-level colour model, so tiles agree).
    h_levels : (float, float, float), optional
        The hematoxylin scale of :func:`~mcf_fast.ops.pseudo.hematoxylin_levels` to use
        instead of this image's own (a slide's, so tiles agree).

    Returns
    -------
    centres (M, 2) int64, scores (M,) float32, pseudo mask (H, W) int8
    """
    cfg = config
    centres, scores = find_centres(
        response,
        gdbp=gdbp_map if cfg.use_gdbp else None,
        min_distance=cfg.peak_distance,
        min_score=cfg.min_score,
    )
    post = posterior
    radius = max(1.0, cfg.pseudo_radius * window)
    if post is None and (cfg.centre_gate > 0 or cfg.pseudo_rule == "gated"):
        post = colour_posterior(image, centres, scores, radius=radius)
        if post is not None and cfg.pseudo_smooth > 0:
            post = ndi.gaussian_filter(post, cfg.pseudo_smooth)
    centres, scores = gate_centres(centres, scores, post, threshold=cfg.centre_gate)
    mask = pseudo_mask(
        image,
        response,
        centres,
        window=window,
        rule=cfg.pseudo_rule,
        t1=cfg.t1,
        ratio=cfg.pseudo_ratio,
        scores=scores,
        radius=cfg.pseudo_radius,
        fg_posterior=cfg.pseudo_fg,
        bg_posterior=cfg.pseudo_bg,
        free_posterior=cfg.pseudo_fg_free,
        posterior=post,
        background=cfg.pseudo_background,
        bg_quantile=cfg.pseudo_bg_quantile,
        fill_holes=cfg.pseudo_fill_holes,
        nucleus=cfg.pseudo_nucleus,
        h_offset=cfg.pseudo_h_offset,
        h_free=cfg.pseudo_h_free,
        h_levels=h_levels,
    )
    return centres, scores, mask


def _templates_of(templates) -> tuple:
    from mcf_fast.io.templates import TemplateSet

    if isinstance(templates, TemplateSet):
        return templates.templates
    if isinstance(templates, Sequence) and not isinstance(templates, (str, bytes)):
        if len(templates) == 0:
            raise InputError("templates: the template set is empty")
        return tuple(templates)
    raise InputError(f"templates: expected a TemplateSet, got {type(templates).__name__}")


#: the attributes Detector._setup sets, built on first use
_LAZY = frozenset(
    {
        "_folded",
        "_layout",
        "_gk",
        "_fusion_layout",
        "max_filter_size",
        "_projection",
        "projection_energy",
        "_window",
        "_engine",
        "_filters",
    }
)


class Detector:
    """Correlation-filter nucleus detector (paper sec. 2.1).

    Parameters
    ----------
    templates : TemplateSet
        The template nuclei (at least one).
    config : DetectionConfig, optional
        Defaults to ``DetectionConfig()``.
    device : str
        ``"cpu"`` (FFTW/scipy + numba) or ``"cuda"`` / ``"cuda:N"`` (torch).

    Raises
    ------
    InputError
        For an empty template set, an unknown device or a missing colour-name file.
    ConfigError
        For an invalid config.

    Attributes
    ----------
    templates : TemplateSet
    config : DetectionConfig
    bank : FilterBank
        The filters of eq. (1).
    max_filter_size : int
        Side of the largest filter actually correlated with the image (with G and the
        crops folded in); ``max_filter_size // 2`` pixels of context make a tile's response
        exact away from the image edge.
    projection_energy : float
        With ``channel_rank`` or ``max_filter_channels`` in force, the share of the bank's
        response energy the projected channels keep (1.0 without projection).
    """

    def __init__(
        self,
        templates,
        config: DetectionConfig | None = None,
        *,
        device: str = "cpu",
        _bank: FilterBank | None = None,
    ) -> None:
        from mcf_fast.io.templates import TemplateSet
        from mcf_fast.ops.colornames import resolve_color_names

        cfg = DetectionConfig() if config is None else config
        if not isinstance(cfg, DetectionConfig):
            raise InputError(f"config: expected a DetectionConfig, got {type(cfg).__name__}")
        items = _templates_of(templates)
        self.templates = templates if isinstance(templates, TemplateSet) else TemplateSet(items)
        self.config = cfg
        if not is_device(device):
            raise InputError(f"device = {device!r}: expected 'cpu' or 'cuda[:N]'")
        self.device = device
        self._table = resolve_color_names(cfg.color_names) if cfg.use_cn else None
        self.bank = (
            _bank
            if _bank is not None
            else build_filter_bank(self.templates.crops(), cfg, features=self._features)
        )
        # the correlation filters and their engine are built on first use (see __getattr__):
        # a model whose labels never read the detector's centres never pays for them

    def __getattr__(self, name: str):
        # only reached when normal lookup fails: before _setup, for the attributes it sets
        if name in _LAZY and "_engine" not in self.__dict__ and "bank" in self.__dict__:
            self._setup()
            return getattr(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ set-up
    def _features(self, image: np.ndarray) -> np.ndarray:
        from mcf_fast.ops.features import extract_features

        return extract_features(image, self.config, table=self._table)

    def _setup(self) -> None:
        cfg = self.config
        n_u = self.bank.n_crops
        self._folded = bool(cfg.fold_crops and (cfg.fusion == "mean" or cfg.top_t >= n_u))
        filters, layout, gk = correlation_filters(
            self.bank, g_level=cfg.g_level, fold_crops=self._folded
        )
        if cfg.fusion == "mean" and self._folded and n_u > 1:
            filters = filters / np.float32(n_u)  # mean over crops = sum / U
        self._layout = layout
        self._gk = gk
        self._fusion_layout: FusionLayout | None = None
        self.max_filter_size = int(filters.shape[-1])
        n_f, n_c = filters.shape[:2]
        rank = projection_rank(
            n_f, n_c, rank=cfg.channel_rank, max_filter_channels=cfg.max_filter_channels
        )
        self._projection: np.ndarray | None = None
        self.projection_energy = 1.0
        if rank < n_c:
            self._projection, filters, self.projection_energy = channel_projection(
                filters, rank, second_moment=self._template_moment()
            )
        self._window = int(np.median(self.bank.sizes[:, self.bank.n_scales // 2]))
        if self.device == "cpu":
            self._engine = SpectralBank(
                filters, block=cfg.block_size, max_spectra_bytes=cfg.max_spectra_mib * 2**20
            )
        else:
            from mcf_fast.detection.torch_engine import TorchCorrelator

            self._engine = TorchCorrelator(filters, device=self.device)
        self._filters = filters

    def _template_moment(self) -> np.ndarray:
        """Second moment ``E[z z^T]`` (C, C) of the features over the template crops."""
        rows = [
            np.asarray(self._features(np.ascontiguousarray(c)), np.float64).reshape(
                -1, self.bank.n_channels
            )
            for c in self.templates.crops()
        ]
        z = np.concatenate(rows)
        return z.T @ z / max(len(z), 1)

    # ------------------------------------------------------------------ public API
    def features(self, image: np.ndarray) -> np.ndarray:
        """The (H, W, C) float32 features this detector correlates (CN then HOG channels)."""
        return self._features(image)

    @property
    def window(self) -> int:
        """Side in pixels of the pseudo-mask window around each centre (middle-scale size)."""
        return self._window

    def detect(self, image: np.ndarray) -> Detection:
        """Detect nuclei in one image.

        Parameters
        ----------
        image : ndarray, shape (H, W), (H, W, 3) or (H, W, 4)
            Any image :func:`~mcf_fast.io.images.as_rgb_uint8` accepts (grayscale is
            repeated, alpha dropped, uint16 and float in [0, 1] rescaled).  Images smaller
            than the filters work: the features are mirrored beyond the edges.

        Returns
        -------
        Detection
            No centres and an all-background pseudo mask for a blank image (one flat
            colour: see :func:`~mcf_fast.ops.tissue.is_blank`).

        Raises
        ------
        InputError
            For an image that cannot be converted (NaN values, bad shape or range).
        """
        from mcf_fast.ops.gdbp import gdbp
        from mcf_fast.ops.tissue import is_blank

        cfg = self.config
        rgb = as_rgb_uint8(image, name="image")
        if is_blank(rgb):
            return empty_detection(rgb.shape[:2])
        feats = self._features(rgb)
        s = self.fused_response(feats)
        sn = normalise_response(s)
        d = gdbp(sn, p=cfg.gdbp_p, q=cfg.gdbp_q)
        centres, scores, mask = postprocess(rgb, sn, d, cfg, window=self._window)
        return Detection(centres=centres, scores=scores, response=sn, gdbp=d, pseudo_mask=mask)

    def fused_response(self, features: np.ndarray) -> np.ndarray:
        """The fused response S of eqs. (2)-(3), before normalisation.

        Parameters
        ----------
        features : ndarray, shape (H, W, C)
            Features of the image (:func:`~mcf_fast.ops.features.extract_features`).

        Returns
        -------
        ndarray, shape (H, W), float32
        """
        if self._projection is not None:
            z = np.asarray(features, dtype=np.float32)
            if z.ndim != 3 or z.shape[2] != self._projection.shape[0]:
                raise InputError(
                    f"features: expected an (H, W, {self._projection.shape[0]}) array, "
                    f"got shape {z.shape}"
                )
            features = z @ self._projection
        if self.device != "cpu":
            return self._engine.fused(features, self.fusion_layout)
        lay = self.fusion_layout
        n_t, n_k, n_u = lay.n_templates, lay.n_scales, lay.n_crops
        fuse = {"top_t": lay.top_t, "mode": lay.mode}
        h, w = features.shape[:2]
        out = np.empty((h, w), dtype=np.float32)
        if self._folded:
            for offsets, r in iter_correlate_batches(features, self._engine):
                accumulate_scales_templates(r, n_t, n_k, out, offsets, top_h=lay.top_h, **fuse)
            return out
        # general path: crop fusion first, into full-size maps (N*K of them); with eq. (2)
        # read literally, G_k then acts on these maps, computed e pixels beyond the image
        # so that the result is exact
        e = lay.margin
        sk = np.empty((n_t * n_k, h + 2 * e, w + 2 * e), dtype=np.float32)
        for offsets, r in iter_correlate_batches(features, self._engine, margin=e):
            accumulate_crops(r, n_u, sk, offsets, **fuse)
        if e:
            sk = weight_scales(sk, lay.scale_weights, margin=e)
        whole = np.array([[0, 0, h, w]], dtype=np.int64)
        accumulate_scales_templates(sk[None], n_t, n_k, out, whole, top_h=lay.top_h, **fuse)
        return out

    @property
    def fusion_layout(self) -> FusionLayout:
        """How this detector's responses are fused (eqs. 2-3): for either engine."""
        if self._fusion_layout is None:
            cfg = self.config
            n_t, n_k, n_u = self._layout
            e = int(self._gk.max()) // 2 if self._gk.any() else 0
            weights = None
            if e:
                weights = tuple(
                    tuple(self.bank.g_weight(n, k) for k in range(n_k)) for n in range(n_t)
                )
            self._fusion_layout = FusionLayout(
                n_templates=n_t,
                n_scales=n_k,
                n_crops=n_u,
                top_t=cfg.top_t,
                top_h=cfg.top_h,
                mode=cfg.fusion,
                margin=e,
                scale_weights=weights,
            )
        return self._fusion_layout

    def with_templates(self, templates) -> Detector:
        """A new detector for ``templates``; filters of templates already here are reused.

        ``templates`` is typically ``self.templates.add(new)``; any template whose crop is
        identical to one of this detector's keeps its filters, the others are built.
        """
        from mcf_fast.io.templates import TemplateSet

        items = _templates_of(templates)
        tset = templates if isinstance(templates, TemplateSet) else TemplateSet(items)
        known = {
            t.crop.tobytes() + bytes(str(t.crop.shape), "ascii"): i
            for i, t in enumerate(self.templates)
        }
        rows, sizes, crops = [], [], []
        missing = [
            t for t in tset if t.crop.tobytes() + bytes(str(t.crop.shape), "ascii") not in known
        ]
        fresh = (
            build_filter_bank([t.crop for t in missing], self.config, features=self._features)
            if missing
            else None
        )
        j = 0
        for t in tset:
            key = t.crop.tobytes() + bytes(str(t.crop.shape), "ascii")
            if key in known:
                i = known[key]
                rows.append(self.bank.filters[i])
                sizes.append(self.bank.sizes[i])
                crops.append(self.bank.crops[i])
            else:
                assert fresh is not None
                rows.append(fresh.filters[j])
                sizes.append(fresh.sizes[j])
                crops.append(fresh.crops[j])
                j += 1
        bank = FilterBank(
            tuple(rows),
            np.asarray(sizes, np.int64),
            np.asarray(crops, np.int64),
            self.bank.n_channels,
            self.bank.g_sigma,
        )
        return Detector(tset, self.config, device=self.device, _bank=bank)

    def save_bank(self, path: str | os.PathLike) -> Path:
        """Save the filter bank (``.npz``) to travel beside the template-set file."""
        return self.bank.save(path)

    @classmethod
    def load(
        cls,
        templates,
        bank_path: str | os.PathLike,
        config: DetectionConfig | None = None,
        *,
        device: str = "cpu",
    ) -> Detector:
        """A detector from a template set and a bank saved by :meth:`save_bank`.

        Raises
        ------
        FormatError
            If the bank does not match the templates or the config (count, sizes, crops,
            feature channels).
        """
        from mcf_fast.ops.features import feature_channels

        cfg = DetectionConfig() if config is None else config
        bank = FilterBank.load(bank_path)
        items = _templates_of(templates)
        want_sizes = np.asarray([scale_sizes(t.size, cfg) for t in items], dtype=np.int64)
        want_crops = np.asarray(
            [[crop_sizes(s, cfg) for s in row] for row in want_sizes], dtype=np.int64
        )
        if (
            bank.sizes.shape != want_sizes.shape
            or np.any(bank.sizes != want_sizes)
            or bank.crops.shape != want_crops.shape
            or np.any(bank.crops != want_crops)
            or bank.n_channels != feature_channels(cfg)
        ):
            raise FormatError(
                f"{bank_path}: the filter bank ({bank.sizes.shape[0]} templates, "
                f"{bank.n_channels} channels) does not match the template set "
                f"({len(items)} templates) and config ({feature_channels(cfg)} channels)"
            )
        bank = dataclasses.replace(bank, g_sigma=float(cfg.g_sigma))
        return cls(templates, cfg, device=device, _bank=bank)

    def __repr__(self) -> str:
        n_t, n_k, n_u = self._layout
        return (
            f"Detector({len(self.templates)} templates, {n_t * n_k * n_u} correlation "
            f"filters of side {self.max_filter_size}, device={self.device!r})"
        )
