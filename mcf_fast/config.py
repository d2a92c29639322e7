"""Configuration as frozen, validated dataclasses.

Defaults are the paper's (Feng et al. 2021, sec. 3): K=5, T=3, H=3, P=3, Q=10, t1=0.4,
t2=0.6, t3=0.4, t4=0.65.  Where the paper is silent the default is ours and the field's
comment says so; docs/algorithm.md maps every field to the equation it implements.

Each ``__post_init__`` checks its fields and raises :class:`~mcf_fast.errors.ConfigError`
naming the field and the bad value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mcf_fast._validate import is_device
from mcf_fast.errors import ConfigError

__all__ = ["PRECISIONS", "DetectionConfig", "SegmentationConfig", "MCFConfig", "config_to_dict"]

#: the arithmetics of the U-Net (``SegmentationConfig.precision`` and ``train_precision``):
#: float32, bfloat16, or bfloat16 where the device computes it natively
PRECISIONS = ("float32", "bfloat16", "auto")


def _check(ok: bool, cls: str, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{cls}.{name} = {value!r}: expected {expected}")


def _positive_int(cls: str, name: str, value: Any) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        cls,
        name,
        value,
        "a positive integer",
    )


def _unit(cls: str, name: str, value: Any) -> None:
    _check(
        isinstance(value, (int, float)) and 0.0 <= value <= 1.0,
        cls,
        name,
        value,
        "a number in [0, 1]",
    )


@dataclass(frozen=True)
class DetectionConfig:
    """Parameters of the correlation-filter detection branch (paper sec. 2.1)."""

    # --- features ---
    #: "builtin" (the project's own approximation) or a path to w2c.mat / w2c.npy
    color_names: str = "builtin"
    use_cn: bool = True
    use_hog: bool = True
    #: HOG orientation bins (unsigned gradients) and cell size in pixels (ours)
    hog_bins: int = 9
    hog_cell: int = 4
    # --- filter bank, eq. (1) ---
    #: K: number of scales each template is resized to (MFF)
    n_scales: int = 5
    #: smallest and largest scale factor (ours: 0.8..1.2)
    scale_range: tuple[float, float] = (0.8, 1.2)
    #: U centre crops of each filter, as fractions of its size (CFF; ours: 1, 3/4, 1/2)
    crop_fractions: tuple[float, ...] = (1.0, 0.75, 0.5)
    #: ridge-regression regulariser lambda of eq. (1)
    lam: float = 1e-4
    #: sigma of the Gaussian label y, as a fraction of the template size (ours)
    label_sigma: float = 0.1
    # --- fusion, eqs. (2)-(3) ---
    #: T: top-T accumulation over crops (CFF) and over scales (MFF)
    top_t: int = 3
    #: H: top-H accumulation over templates
    top_h: int = 3
    #: "topk" (paper) or "mean" (Table 3 ablation)
    fusion: str = "topk"
    use_cff: bool = True
    use_mff: bool = True
    # --- GDBP, eq. (4) ---
    use_gdbp: bool = True
    gdbp_p: int = 3
    gdbp_q: int = 10
    #: sigma of the zero-sum Gaussian G of eq. (2), as a fraction of the filter side (ours)
    g_sigma: float = 0.15
    #: where G is applied: "crop" (once, at the crop level; ours), "both" (crop and scale
    #: level, eq. (2) read literally) or "none"
    g_level: str = "crop"
    #: fold G and the U crops into one filter per scale when that is exact (top-T with
    #: T >= U, or mean fusion); False forces the general N*K*U path (same result, slower)
    fold_crops: bool = True
    # --- correlation engine (ours) ---
    #: overlap-save block side (0: chosen by a cost model) and the memory cap of the cached
    #: filter spectra in MiB
    block_size: int = 0
    max_spectra_mib: int = 512
    #: correlate in this many projected feature channels instead of all C (0: all, exact);
    #: the projection keeps the directions of most response energy (ours, see
    #: docs/algorithm.md "Channel projection")
    channel_rank: int = 0
    #: bound on filters x correlated channels (0: none): above it the channels are
    #: projected to max(1, max_filter_channels // filters), so the bank's cost does not
    #: grow with the template count (ours)
    max_filter_channels: int = 0
    # --- centres ---
    #: centres are local maxima of D (or of S when use_gdbp is off) at least this many
    #: pixels apart, with normalised response S >= min_score (ours, tuned on the MoNuSeg
    #: train split, see docs/evaluation.md)
    peak_distance: int = 6
    min_score: float = 0.3
    #: drop centres whose colour posterior (a per-image nucleus/background colour model
    #: learnt from the detections, see ops/pseudo.py) is below this; 0 turns it off (ours,
    #: tuned on train)
    centre_gate: float = 0.3
    # --- pseudo mask ---
    #: t1: background where the normalised response is below it
    t1: float = 0.4
    #: "paper" (S > ratio * S(centre) in the middle-scale window; background S < t1) or
    #: "gated" (ours: the paper's rule refined by a colour gate learnt from the templates)
    pseudo_rule: str = "gated"
    #: the paper's 0.8 of S(centre) inside the window
    pseudo_ratio: float = 0.8
    #: gated rule (ours): nucleus labels within radius * (middle-scale side) of a centre
    #: where the colour posterior exceeds pseudo_fg; background where it is below
    #: pseudo_bg, outside those discs
    pseudo_radius: float = 0.35
    pseudo_fg: float = 0.8
    pseudo_bg: float = 0.1
    #: gated rule: also label nucleus, anywhere, the pixels whose colour posterior exceeds
    #: this (in pieces of at least 30 pixels); 1 turns it off
    pseudo_fg_free: float = 0.8
    #: sigma (pixels) of the Gaussian smoothing of the colour posterior; 0 turns it off
    pseudo_smooth: float = 1.0
    #: gated rule: "tissue" also labels background the non-nuclear tissue (stroma,
    #: cytoplasm, red cells; see ops/pseudo.tissue_background), "colour" only the pixels
    #: below pseudo_bg (mostly white space)
    pseudo_background: str = "tissue"
    #: share of the nucleus colour samples allowed below the tissue-background threshold
    pseudo_bg_quantile: float = 0.05
    #: gated rule: fill the holes of each nucleus label (pale vesicular interiors)
    pseudo_fill_holes: bool = True
    #: gated rule: what makes a pixel nucleus-coloured: "hematoxylin" (the stretched
    #: hematoxylin channel above its Otsu level over the tissue + pseudo_h_offset; free
    #: pieces above Otsu + pseudo_h_free) or "posterior" (the learnt colour posterior above
    #: pseudo_fg; free pieces above pseudo_fg_free).  Chosen on train splits
    #: (docs/evaluation.md, "Pseudo labels from the stain")
    pseudo_nucleus: str = "hematoxylin"
    pseudo_h_offset: float = 0.0
    pseudo_h_free: float = 0.1

    def __post_init__(self) -> None:
        c = "DetectionConfig"
        for name in ("hog_bins", "hog_cell", "n_scales", "top_t", "top_h", "gdbp_p", "gdbp_q"):
            _positive_int(c, name, getattr(self, name))
        _check(
            self.gdbp_p < self.gdbp_q,
            c,
            "gdbp_p",
            self.gdbp_p,
            f"smaller than gdbp_q ({self.gdbp_q})",
        )
        _check(
            self.use_cn or self.use_hog,
            c,
            "use_cn",
            self.use_cn,
            "True when use_hog is False (no features left)",
        )
        lo_hi = self.scale_range
        _check(
            len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1],
            c,
            "scale_range",
            lo_hi,
            "(low, high) with 0 < low <= high",
        )
        _check(
            len(self.crop_fractions) > 0 and all(0 < f <= 1 for f in self.crop_fractions),
            c,
            "crop_fractions",
            self.crop_fractions,
            "a non-empty tuple of fractions in (0, 1]",
        )
        _check(self.lam > 0, c, "lam", self.lam, "a positive number")
        _check(self.label_sigma > 0, c, "label_sigma", self.label_sigma, "a positive number")
        _check(self.fusion in ("topk", "mean"), c, "fusion", self.fusion, "'topk' or 'mean'")
        _unit(c, "t1", self.t1)
        _check(self.g_sigma > 0, c, "g_sigma", self.g_sigma, "a positive number")
        _check(
            self.g_level in ("crop", "both", "none"),
            c,
            "g_level",
            self.g_level,
            "'crop', 'both' or 'none'",
        )
        _check(
            isinstance(self.block_size, int) and self.block_size >= 0,
            c,
            "block_size",
            self.block_size,
            "0 (automatic) or a positive integer",
        )
        _positive_int(c, "max_spectra_mib", self.max_spectra_mib)
        for name in ("channel_rank", "max_filter_channels"):
            v = getattr(self, name)
            _check(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                c,
                name,
                v,
                "0 (off) or a positive integer",
            )
        _positive_int(c, "peak_distance", self.peak_distance)
        _unit(c, "min_score", self.min_score)
        _unit(c, "centre_gate", self.centre_gate)
        _check(
            self.pseudo_rule in ("paper", "gated"),
            c,
            "pseudo_rule",
            self.pseudo_rule,
            "'paper' or 'gated'",
        )
        _unit(c, "pseudo_ratio", self.pseudo_ratio)
        _check(self.pseudo_radius > 0, c, "pseudo_radius", self.pseudo_radius, "a positive number")
        _unit(c, "pseudo_fg", self.pseudo_fg)
        _unit(c, "pseudo_bg", self.pseudo_bg)
        _unit(c, "pseudo_fg_free", self.pseudo_fg_free)
        _check(
            self.pseudo_nucleus in ("posterior", "hematoxylin"),
            c,
            "pseudo_nucleus",
            self.pseudo_nucleus,
            "'posterior' or 'hematoxylin'",
        )
        for name in ("pseudo_h_offset", "pseudo_h_free"):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and -1 <= v <= 1
            _check(ok, c, name, v, "a number in [-1, 1]")
        _check(
            self.pseudo_background in ("colour", "tissue"),
            c,
            "pseudo_background",
            self.pseudo_background,
            "'colour' or 'tissue'",
        )
        _check(
            0 < self.pseudo_bg_quantile < 1,
            c,
            "pseudo_bg_quantile",
            self.pseudo_bg_quantile,
            "a number in (0, 1)",
        )
        _check(
            self.pseudo_smooth >= 0, c, "pseudo_smooth", self.pseudo_smooth, "a non-negative number"
        )


@dataclass(frozen=True)
class SegmentationConfig:
    """Parameters of the confidence segmentation branch (paper sec. 2.2)."""

    #: channels of the U-Net's first level (doubles at each of `depth` levels)
    width: int = 16
    depth: int = 4
    crop_size: int = 256
    batch_size: int = 8
    steps: int = 600
    self_steps: int = 200
    lr: float = 1e-3
    #: confidence loss of eq. (5) ("confidence"), plain CE on all pixels ("ce"), or
    #: class-weighted CE ("weighted") for the Table 3 ablations
    loss: str = "confidence"
    use_synthetic: bool = True
    use_self_finetune: bool = True
    #: t2, t3 of eq. (6); t4 of eq. (7)
    t2: float = 0.6
    t3: float = 0.4
    t4: float = 0.65
    #: smallest residual component (pixels) that becomes a new template
    residual_min_area: int = 60
    max_rounds: int = 3
    device: str = "cpu"
    seed: int = 0
    #: False: no network, the prediction comes from the detection (Table 3 "-seg.")
    use_network: bool = True
    #: share of each batch that is synthetic (ours)
    synthetic_fraction: float = 0.25
    #: growth of a pasted confident nucleus region, relative to its radius (ours)
    synthetic_grow: float = 0.3
    #: random rescaling of pasted nuclei (ours)
    synthetic_scale: tuple[float, float] = (0.9, 1.2)
    #: at most this many residual components become templates per round (ours)
    templates_per_round: int = 3
    #: side of a new template = this times the component's larger extent (ours)
    residual_template_scale: float = 2.0
    #: keep training the previous round's network instead of a fresh one (ours)
    warm_start: bool = True
    #: final mask: p1 > threshold; instances smaller than min_nucleus_area are dropped
    threshold: float = 0.5
    min_nucleus_area: int = 50
    #: watershed seeds: "hmaxima" (h-maxima of the distance transform, height instance_h),
    #: "distance" (distance-transform maxima at least 8 px apart), "centres" (detected,
    #: plus one per unseeded component) or "shape" (h-maxima of the network's predicted
    #: distance map, height shape_h; needs target="distance"); see
    #: mcf_fast.ops.instances for the comparison
    instance_seeds: str = "hmaxima"
    instance_h: float = 0.5
    #: what the network learns besides the nucleus mask (ours): "binary" (the mask alone,
    #: the paper's target) or "distance" (also each confident nucleus pixel's distance to
    #: its pseudo instance's edge, normalised to 1 at its centre; mcf_fast.ops.shape)
    target: str = "binary"
    #: weight of the distance map's loss beside the mask's (target="distance")
    distance_weight: float = 1.0
    #: least height of a seed of the predicted distance map, in its units (0..1); 0.1 was
    #: the best AJI of 0.1, 0.2, 0.3 on the train hold-outs of MoNuSeg and CoNSeP (ours)
    shape_h: float = 0.1
    #: inference tile side and test-time flips (ours)
    tile: int = 1024
    tta_flips: bool = False
    #: arithmetic of the U-Net at prediction time: "float32", "bfloat16" or "auto"
    #: (bfloat16 where the CPU or GPU computes it natively; training has its own
    #: train_precision).  See docs/performance.md, "U-Net in bfloat16" (ours)
    precision: str = "auto"
    #: arithmetic of the U-Net's training steps: "float32", "bfloat16" (autocast, the loss
    #: in float32) or "auto" (bfloat16 where native); see docs/performance.md (ours)
    train_precision: str = "float32"
    #: colour augmentation of training crops: per-channel gain in 1 +- a, offset +- 64 a (ours)
    augment_colour: float = 0.0
    #: stain augmentation of training crops: the hematoxylin and eosin concentrations
    #: (colour deconvolution) scaled by 1 +- a and shifted by +- a / 4 each, per crop (ours)
    augment_stain: float = 0.0
    #: weight of unknown pixels, counted as background, in the confidence loss (ours; 0 is
    #: eq. (5), 1 the "CE" ablation)
    unknown_weight: float = 0.0
    #: learning rate of self-finetuning, relative to lr (ours)
    self_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        c = "SegmentationConfig"
        for name in (
            "width",
            "depth",
            "crop_size",
            "batch_size",
            "max_rounds",
            "residual_min_area",
        ):
            _positive_int(c, name, getattr(self, name))
        for name in ("steps", "self_steps"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 0, c, name, v, "a non-negative integer")
        _check(self.lr > 0, c, "lr", self.lr, "a positive number")
        _check(
            self.loss in ("confidence", "ce", "weighted"),
            c,
            "loss",
            self.loss,
            "'confidence', 'ce' or 'weighted'",
        )
        for name in ("t2", "t3", "t4"):
            _unit(c, name, getattr(self, name))
        _check(
            is_device(self.device),
            c,
            "device",
            self.device,
            "'cpu' or 'cuda[:N]'",
        )
        for name in (
            "synthetic_fraction",
            "threshold",
            "augment_colour",
            "augment_stain",
            "unknown_weight",
        ):
            _unit(c, name, getattr(self, name))
        _check(
            self.synthetic_grow >= 0,
            c,
            "synthetic_grow",
            self.synthetic_grow,
            "a non-negative number",
        )
        lo_hi = self.synthetic_scale
        _check(
            len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1],
            c,
            "synthetic_scale",
            lo_hi,
            "(low, high) with 0 < low <= high",
        )
        for name in ("precision", "train_precision"):
            _check(
                getattr(self, name) in PRECISIONS,
                c,
                name,
                getattr(self, name),
                f"one of {', '.join(PRECISIONS)}",
            )
        for name in ("templates_per_round", "tile"):
            _positive_int(c, name, getattr(self, name))
        _check(
            isinstance(self.min_nucleus_area, int) and self.min_nucleus_area >= 0,
            c,
            "min_nucleus_area",
            self.min_nucleus_area,
            "a non-negative integer",
        )
        _check(self.self_lr_scale > 0, c, "self_lr_scale", self.self_lr_scale, "a positive number")
        _check(
            self.residual_template_scale > 0,
            c,
            "residual_template_scale",
            self.residual_template_scale,
            "a positive number",
        )
        _check(
            self.instance_seeds in ("centres", "distance", "hmaxima", "shape"),
            c,
            "instance_seeds",
            self.instance_seeds,
            "'centres', 'distance', 'hmaxima' or 'shape'",
        )
        _check(self.instance_h > 0, c, "instance_h", self.instance_h, "a positive number")
        _check(
            self.target in ("binary", "distance"),
            c,
            "target",
            self.target,
            "'binary' or 'distance'",
        )
        _check(
            self.instance_seeds != "shape" or self.target == "distance",
            c,
            "instance_seeds",
            self.instance_seeds,
            "a mode other than 'shape' with target='binary' (no distance map to seed from)",
        )
        _check(
            self.distance_weight >= 0,
            c,
            "distance_weight",
            self.distance_weight,
            "a non-negative number",
        )
        _unit(c, "shape_h", self.shape_h)
        _check(self.shape_h > 0, c, "shape_h", self.shape_h, "a number in (0, 1]")


@dataclass(frozen=True)
class MCFConfig:
    """The whole framework: detection, segmentation and the loop between them."""

    detection: DetectionConfig = field(default_factory=DetectionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)

    def __post_init__(self) -> None:
        _check(
            isinstance(self.detection, DetectionConfig),
            "MCFConfig",
            "detection",
            type(self.detection).__name__,
            "a DetectionConfig",
        )
        _check(
            isinstance(self.segmentation, SegmentationConfig),
            "MCFConfig",
            "segmentation",
            type(self.segmentation).__name__,
            "a SegmentationConfig",
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MCFConfig:
        """Rebuild a config from :func:`config_to_dict` output; unknown keys are errors."""
        return cls(
            detection=_from_dict(DetectionConfig, data.get("detection", {})),
            segmentation=_from_dict(SegmentationConfig, data.get("segmentation", {})),
        )


def _from_dict(cls: type, data: dict[str, Any]):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)
