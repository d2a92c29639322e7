"""Training and inference of the segmentation U-Net (paper sec. 2.2).

Targets are per-pixel foreground labels of one of two kinds:

- ``int8`` pseudo masks: ``1`` nucleus, ``0`` background, ``-1`` unknown (ignored);
- ``float32`` soft targets in ``[0, 1]`` (the probability that a pixel is a nucleus), with NaN
  for ignored pixels; the ``"weighted"`` ablation of Table 3 trains on these.

Internally both become one float map ``t`` (NaN = ignore) and every loss is the soft
cross-entropy ``-(t log p1 + (1 - t) log p0)`` averaged over the kept pixels, which equals the
usual cross-entropy for hard targets:

- ``"confidence"``: eq. (5), unknown pixels ignored;
- ``"ce"``: unknown pixels treated as background (the Table 3 "CE" row; also the supervised
  upper bound, whose targets have no unknown pixels);
- ``"weighted"``: the same formula on soft targets (Table 3 "+weig.").

Synthetic samples (:class:`SyntheticSampler`) are fully labelled, so in a mixed batch they get
plain cross-entropy whatever the loss.  Training crops are random, with a random one of the
eight flips/rotations of the square.

With ``SegmentationConfig.target = "distance"`` the network has a third output channel, the
logit of each pixel's normalised distance to its nucleus' edge (:mod:`mcf_fast.ops.shape`),
trained by binary cross-entropy against the distance targets on the pixels where they are
known, weighted by ``distance_weight``; synthetic crops carry no distance target.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from mcf_fast.config import SegmentationConfig
from mcf_fast.errors import ConfigError, InputError
from mcf_fast.io.images import as_rgb_uint8
from mcf_fast.segmentation.precision import arithmetic
from mcf_fast.segmentation.unet import UNet

__all__ = [
    "SyntheticSampler",
    "build_unet",
    "deterministic",
    "distance_loss",
    "dihedral",
    "jitter_stain",
    "predict_maps",
    "predict_proba",
    "segmentation_loss",
    "self_targets",
    "train_unet",
]

_LOSSES = ("confidence", "ce", "weighted")


def build_unet(config: SegmentationConfig, *, seed: int | None = None) -> UNet:
    """A freshly initialised U-Net of the configured width and depth (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed if seed is None else seed)
        n_classes = 3 if config.target == "distance" else 2
        return UNet(width=config.width, depth=config.depth, n_classes=n_classes)


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Run a block with ``torch.use_deterministic_algorithms`` on, then restore the old mode.

    On CPU every op mcf_fast uses has a deterministic kernel, so two runs with the same seed
    and the same number of threads give bit-identical weights.
    """
    old = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if enabled:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of the square on the first two axes (``k`` in 0..7)."""
    if k >= 4:
        a = a[:, ::-1]
    return np.rot90(a, k % 4, axes=(0, 1))


def _as_target(t: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    """Float32 nucleus probability with NaN for ignored pixels."""
    a = np.asarray(t)
    if a.shape != shape:
        raise InputError(f"{name}: shape {a.shape} does not match its image {shape}")
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        a = a.astype(np.int8)
        if a.size and (a.min() < -1 or a.max() > 1):
            raise InputError(f"{name}: integer targets must be -1 (unknown), 0 or 1")
        out = a.astype(np.float32)
        out[a < 0] = np.nan
        return out
    if np.issubdtype(a.dtype, np.floating):
        out = a.astype(np.float32)
        fin = out[np.isfinite(out)]
        if fin.size and (fin.min() < 0 or fin.max() > 1):
            raise InputError(f"{name}: soft targets must lie in [0, 1] (NaN = ignore)")
        return out
    raise InputError(f"{name}: unsupported target dtype {a.dtype}")


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, *, loss: str, unknown_weight: float = 0.0
) -> torch.Tensor:
    """Soft cross-entropy of two-class logits against a float target map (NaN = ignore).

    Parameters
    ----------
    logits : Tensor, shape (B, 2, H, W)
    target : Tensor, shape (B, H, W), float
        Nucleus probability per pixel; NaN marks unknown pixels.
    loss : {"confidence", "ce", "weighted"}
        See the module docstring; "ce" turns unknown pixels into background.
    unknown_weight : float
        With "confidence": unknown pixels count as background with this weight (0, the
        paper's eq. (5), ignores them; 1 is the "ce" ablation).

    Returns
    -------
    Tensor
        A scalar: the mean over the kept pixels (0, with a gradient, when none is kept).
    """
    if loss not in _LOSSES:
        raise ConfigError(f"loss = {loss!r}: expected one of {_LOSSES}")
    if loss == "ce":
        target = torch.nan_to_num(target, nan=0.0)
    keep = torch.isfinite(target)
    t = torch.where(keep, target, torch.zeros_like(target))
    logp = F.log_softmax(logits, dim=1)
    per_pixel = -(t * logp[:, 1] + (1.0 - t) * logp[:, 0])
    weight = keep.to(per_pixel.dtype)
    if unknown_weight > 0 and loss != "ce":
        weight = torch.where(keep, weight, torch.full_like(weight, unknown_weight))
    total = weight.sum()
    return (weight * per_pixel).sum() / total.clamp(min=1)


def distance_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of distance logits against a distance map in [0, 1] (NaN = ignore).

    Parameters
    ----------
    logits : Tensor, shape (B, H, W)
    target : Tensor, shape (B, H, W), float

    Returns
    -------
    Tensor
        The mean over the known pixels (0, with a gradient, when none is known).
    """
    keep = torch.isfinite(target)
    t = torch.where(keep, target, torch.zeros_like(target))
    per_pixel = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    weight = keep.to(per_pixel.dtype)
    return (weight * per_pixel).sum() / weight.sum().clamp(min=1)


def self_targets(p1: np.ndarray, *, t2: float, t3: float) -> np.ndarray:
    """Targets of the self-finetuning loss, eq. (6): 1 where p1 > t2, 0 where p1 < t3, else -1.

    The paper writes the background test as ``p0 < t3``, which would pick foreground; we read
    it as ``p1 < t3`` (docs/algorithm.md).
    """
    out = np.full(p1.shape, -1, np.int8)
    out[p1 > t2] = 1
    out[p1 < t3] = 0
    return out


class SyntheticSampler:
    """Synthetic, fully labelled training crops (paper sec. 2.2.2).

    Confident nucleus regions are enlarged (grown by ``grow`` times their equivalent radius,
    so the pasted pixels include the ambiguous rim the pseudo mask leaves unknown), randomly
    flipped, rotated and rescaled by a factor in ``scale``, and pasted onto a background
    quilted from patches of confident background.  Labels: 1 inside a pasted region, 0
    elsewhere.

    Build one with :meth:`from_pseudo_masks`.
    """

    def __init__(
        self,
        nuclei: list[tuple[np.ndarray, np.ndarray]],
        backgrounds: list[np.ndarray],
        *,
        density: float,
        scale: tuple[float, float] = (0.9, 1.2),
    ) -> None:
        if not nuclei or not backgrounds:
            raise InputError(
                "SyntheticSampler: needs at least one nucleus and one background patch"
            )
        self.nuclei = nuclei
        self.backgrounds = backgrounds
        self.density = float(density)
        self.scale = scale

    @classmethod
    def from_pseudo_masks(
        cls,
        images: Sequence[np.ndarray],
        pseudo_masks: Sequence[np.ndarray],
        *,
        rng: np.random.Generator,
        grow: float = 0.3,
        scale: tuple[float, float] = (0.9, 1.2),
        patch: int = 16,
        max_nuclei: int = 3000,
        max_backgrounds: int = 3000,
    ) -> SyntheticSampler | None:
        """Collect nucleus and background patches; None when either kind is missing.

        Parameters
        ----------
        images : sequence of (H, W, 3) uint8
        pseudo_masks : sequence of (H, W) int8 in {-1, 0, 1}
        rng : numpy Generator
            Subsamples the patches when there are more than the maxima.
        grow : float
            Enlargement of each confident nucleus region, relative to its equivalent radius.
        scale : (float, float)
            Range of the random rescaling applied when pasting.
        patch : int
            Side of the background patches (each lies wholly in confident background).
        """
        nuclei: list[tuple[np.ndarray, np.ndarray]] = []
        backgrounds: list[np.ndarray] = []
        n_comp = 0
        n_pix = 0
        for img, pm in zip(images, pseudo_masks, strict=True):
            h, w = pm.shape
            n_pix += h * w
            lab, n = ndimage.label(pm == 1)
            n_comp += n
            for i, sl in enumerate(ndimage.find_objects(lab), start=1):
                if sl is None:
                    continue
                comp = lab[sl] == i
                area = int(comp.sum())
                if area < 4:
                    continue
                g = max(1, int(round(grow * math.sqrt(area / math.pi))))
                y0, y1 = sl[0].start - g - 1, sl[0].stop + g + 1
                x0, x1 = sl[1].start - g - 1, sl[1].stop + g + 1
                if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
                    continue
                m = np.zeros((y1 - y0, x1 - x0), bool)
                m[sl[0].start - y0 : sl[0].stop - y0, sl[1].start - x0 : sl[1].stop - x0] = comp
                grown = ndimage.distance_transform_edt(~m) <= g
                nuclei.append((img[y0:y1, x0:x1].copy(), grown))
            for p in (patch, max(4, patch // 2)):
                ok = ndimage.minimum_filter(
                    (pm == 0).astype(np.uint8), size=p, mode="constant", cval=0
                )
                ys, xs = np.nonzero(ok)
                if ys.size:
                    take = rng.choice(ys.size, size=min(ys.size, 200), replace=False)
                    for j in np.sort(take):
                        y, x = ys[j] - p // 2, xs[j] - p // 2
                        backgrounds.append(img[y : y + p, x : x + p].copy())
                    break
        if not nuclei or not backgrounds:
            return None
        if len(nuclei) > max_nuclei:
            keep = np.sort(rng.choice(len(nuclei), size=max_nuclei, replace=False))
            nuclei = [nuclei[i] for i in keep]
        if len(backgrounds) > max_backgrounds:
            keep = np.sort(rng.choice(len(backgrounds), size=max_backgrounds, replace=False))
            backgrounds = [backgrounds[i] for i in keep]
        return cls(nuclei, backgrounds, density=n_comp / max(n_pix, 1), scale=scale)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """One synthetic crop: image (size, size, 3) uint8 and target (size, size) int8."""
        canvas = np.empty((size, size, 3), np.uint8)
        y = 0
        while y < size:
            x = 0
            row_h = size
            while x < size:
                bg = dihedral(
                    self.backgrounds[rng.integers(len(self.backgrounds))], int(rng.integers(8))
                )
                ph, pw = min(bg.shape[0], size - y), min(bg.shape[1], size - x)
                canvas[y : y + ph, x : x + pw] = bg[:ph, :pw]
                row_h = min(row_h, ph)
                x += pw
            y += row_h
        target = np.zeros((size, size), np.int8)
        count = rng.poisson(self.density * size * size)
        for _ in range(count):
            img, m = self.nuclei[rng.integers(len(self.nuclei))]
            k = int(rng.integers(8))
            img, m = dihedral(img, k), dihedral(m, k)
            s = rng.uniform(*self.scale)
            if abs(s - 1.0) > 1e-3:
                img = ndimage.zoom(img, (s, s, 1), order=1)
                m = ndimage.zoom(m.astype(np.float32), (s, s), order=1) > 0.5
            ph, pw = m.shape
            if ph >= size or pw >= size:
                continue
            y0 = int(rng.integers(size - ph))
            x0 = int(rng.integers(size - pw))
            region = target[y0 : y0 + ph, x0 : x0 + pw]
            if np.any(region[m] == 1):
                continue
            region[m] = 1
            canvas[y0 : y0 + ph, x0 : x0 + pw][m] = img[m]
        return canvas, target


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1]."""
    a = np.ascontiguousarray(batch)
    if not a.flags.writeable:  # torch wants writable memory (images read by PIL are not)
        a = a.copy()
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0


def _random_crop(
    img: np.ndarray, tgt: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    h, w = tgt.shape[:2]
    if h < size or w < size:  # pad small images; padded pixels are ignored
        ph, pw = max(0, size - h), max(0, size - w)
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
        extra = ((0, 0),) * (tgt.ndim - 2)
        tgt = np.pad(tgt, ((0, ph), (0, pw), *extra), constant_values=np.nan)
        h, w = tgt.shape[:2]
    y = int(rng.integers(h - size + 1))
    x = int(rng.integers(w - size + 1))
    k = int(rng.integers(8))
    return dihedral(img[y : y + size, x : x + size], k), dihedral(
        tgt[y : y + size, x : x + size], k
    )


def _jitter_colour(batch: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Per-sample, per-channel gain in ``1 +- amount`` and offset in ``+- 64 amount``."""
    n = batch.shape[0]
    gain = rng.uniform(1 - amount, 1 + amount, (n, 1, 1, 3))
    offset = rng.uniform(-64 * amount, 64 * amount, (n, 1, 1, 3))
    out = batch.astype(np.float32) * gain.astype(np.float32) + offset.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


#: optical-density vectors of hematoxylin, eosin and the residual (rows; Ruifrok and
#: Johnston's H&E values, as used by scikit-image's rgb2hed), unit length
_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
_HED = (_HED / np.linalg.norm(_HED, axis=1, keepdims=True)).astype(np.float32)
_HED_INV = np.linalg.inv(_HED).astype(np.float32)


def jitter_stain(batch: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Random stain variation of a batch in hematoxylin / eosin space.

    Each crop's optical density is unmixed into hematoxylin, eosin and residual
    concentrations; the hematoxylin and eosin ones are scaled by a factor drawn from
    ``1 +- amount`` and shifted by up to ``+- amount / 4`` (per crop, per stain), then
    mixed back.  A lab whose hematoxylin is paler or whose eosin is stronger then looks
    like one the network has seen.

    Parameters
    ----------
    batch : ndarray, shape (B, H, W, 3), uint8
    amount : float
        In [0, 1]; 0 returns the batch unchanged.
    rng : numpy Generator

    Returns
    -------
    ndarray, shape (B, H, W, 3), uint8
    """
    if amount <= 0:
        return batch
    n = batch.shape[0]
    od = -np.log((batch.astype(np.float32) + 1.0) / 256.0)
    conc = od @ _HED_INV
    scale = np.ones((n, 1, 1, 3), np.float32)
    shift = np.zeros((n, 1, 1, 3), np.float32)
    scale[..., :2] = rng.uniform(1 - amount, 1 + amount, (n, 1, 1, 2))
    shift[..., :2] = rng.uniform(-amount / 4, amount / 4, (n, 1, 1, 2))
    conc = conc * scale + shift
    rgb = 256.0 * np.exp(-(conc @ _HED)) - 1.0
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def train_unet(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    config: SegmentationConfig,
    *,
    net: torch.nn.Module | None = None,
    steps: int | None = None,
    loss: str | None = None,
    synthetic: SyntheticSampler | None = None,
    progress: bool = True,
    seed: int | None = None,
    log: list[float] | None = None,
    desc: str = "train U-Net",
    unknown_weight: float | None = None,
    distances: Sequence[np.ndarray] | None = None,
) -> torch.nn.Module:
    """Train (or continue training) the U-Net on random crops of images and targets.

    Parameters
    ----------
    images : sequence of (H, W, 3) uint8 arrays
    targets : sequence of (H, W) arrays
        int8 pseudo masks in {-1, 0, 1} or float32 soft targets in [0, 1] with NaN for
        ignored pixels (see the module docstring).
    config : SegmentationConfig
        Width, depth, crop size, batch size, steps, learning rate, loss, device, seed,
        synthetic fraction.
    net : torch.nn.Module, optional
        A network to continue training; a fresh one (seeded) when None.
    steps, loss : optional
        Override ``config.steps`` and ``config.loss``.
    synthetic : SyntheticSampler, optional
        When given, ``config.synthetic_fraction`` of each batch are synthetic crops.
    progress : bool
        Show a tqdm bar on stderr.
    seed : int, optional
        Seeds the crop sampler (and the initial weights); ``config.seed`` when None.
    log : list, optional
        Receives the loss of every step.
    desc : str
        Label of the progress bar.
    unknown_weight : float, optional
        Overrides ``config.unknown_weight`` (see :func:`segmentation_loss`).
    distances : sequence of (H, W) float32 arrays, optional
        Distance-map targets (:func:`mcf_fast.ops.shape.distance_target`, NaN = unknown)
        for a network with a distance channel; without them only the mask is trained.

    Returns
    -------
    torch.nn.Module
        The trained network, in eval mode, on ``config.device``.

    Raises
    ------
    InputError
        For mismatched images and targets, or targets outside their allowed values.
    ConfigError
        For an unknown loss, or a crop size that is not a multiple of ``2 ** depth``.
    """
    steps = config.steps if steps is None else int(steps)
    loss = config.loss if loss is None else loss
    unknown_weight = config.unknown_weight if unknown_weight is None else float(unknown_weight)
    if loss not in _LOSSES:
        raise ConfigError(f"loss = {loss!r}: expected one of {_LOSSES}")
    seed = config.seed if seed is None else int(seed)
    if len(images) != len(targets):
        raise InputError(f"train_unet: {len(images)} images but {len(targets)} targets")
    if not images:
        raise InputError("train_unet: no training images")
    imgs = [as_rgb_uint8(im, name=f"images[{i}]") for i, im in enumerate(images)]
    tgts = [
        _as_target(t, im.shape[:2], f"targets[{i}]")
        for i, (im, t) in enumerate(zip(imgs, targets, strict=True))
    ]
    device = torch.device(config.device)
    if net is None:
        net = build_unet(config, seed=seed)
    if distances is not None:
        if len(distances) != len(imgs):
            raise InputError(f"train_unet: {len(imgs)} images but {len(distances)} distances")
        if getattr(net, "hparams", {}).get("n_classes", 2) < 3:
            raise ConfigError(
                "train_unet: distance targets need a network with a distance channel "
                "(SegmentationConfig.target = 'distance')"
            )
        for i, (t, d) in enumerate(zip(tgts, distances, strict=True)):
            if np.shape(d) != t.shape:
                raise InputError(f"distances[{i}]: shape {np.shape(d)} does not match {t.shape}")
        # crop the mask and distance targets together
        tgts = [
            np.stack([t, np.asarray(d, np.float32)], axis=-1)
            for t, d in zip(tgts, distances, strict=True)
        ]
    multiple = getattr(net, "multiple", 1)
    size = config.crop_size
    if size % multiple:
        raise ConfigError(
            f"SegmentationConfig.crop_size = {size}: expected a multiple of {multiple} (2 ** depth)"
        )
    net.to(device).train()
    if steps == 0:
        return net.eval()
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=config.lr * 0.05)
    n_syn = 0
    if synthetic is not None:
        n_syn = int(round(config.batch_size * config.synthetic_fraction))
    n_real = config.batch_size - n_syn
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    channels = 2 if distances is not None else 1
    for _ in bar:
        xb = np.empty((config.batch_size, size, size, 3), np.uint8)
        yb = np.full((config.batch_size, size, size, channels), np.nan, np.float32)
        for b in range(n_real):
            i = int(rng.integers(len(imgs)))
            xb[b], t = _random_crop(imgs[i], tgts[i], size, rng)
            yb[b] = t.reshape(size, size, channels)
        for b in range(n_real, config.batch_size):
            xb[b], t = synthetic.sample(rng, size)
            yb[b, ..., 0] = t
        if config.augment_stain > 0:
            xb = jitter_stain(xb, config.augment_stain, rng)
        if config.augment_colour > 0:
            xb = _jitter_colour(xb, config.augment_colour, rng)
        x = _to_tensor(xb).to(device)
        y = torch.from_numpy(yb).to(device)
        with arithmetic(config.train_precision, device):
            out = net(x)
        out = out.float()  # the loss in float32 (a no-op for float32 steps)
        value = segmentation_loss(out[:, :2], y[..., 0], loss=loss, unknown_weight=unknown_weight)
        if distances is not None and config.distance_weight > 0:
            value = value + config.distance_weight * distance_loss(out[:, 2], y[..., 1])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        v = float(value.detach())
        if log is not None:
            log.append(v)
        bar.set_postfix(loss=f"{v:.4f}", refresh=False)
    bar.close()
    return net.eval()


def _pad_to(a: np.ndarray, multiple: int) -> np.ndarray:
    h, w = a.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return a
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(a, ((0, ph), (0, pw), (0, 0)), mode=mode)


def predict_proba(
    net: torch.nn.Module,
    image: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    tile: int = 512,
    flips: bool = False,
    halo: int | None = None,
    precision: str = "float32",
) -> np.ndarray:
    """Nucleus probability p1 of every pixel, by tiles with an overlap margin.

    Each tile is read with ``halo`` extra pixels on every side (reflect-padded to a multiple of
    ``2 ** depth``) and only its centre is kept, so seams carry no border artefacts.

    Parameters
    ----------
    net : torch.nn.Module
        A two-class segmentation network (e.g. :class:`~mcf_fast.segmentation.unet.UNet`).
    image : ndarray, shape (H, W, 3)
        RGB image (any dtype :func:`~mcf_fast.io.images.as_rgb_uint8` accepts).
    device : str or torch.device
    tile : int
        Side of the written part of each tile; one tile when the image is not larger.
    flips : bool
        Test-time augmentation: average the probabilities of the image and its horizontal,
        vertical and double flips.
    halo : int, optional
        Overlap margin in pixels; default: the network's receptive-field radius
        (``net.reach``, 106 px at depth 4) rounded up to a multiple of ``2 ** depth``, so
        that tiled and whole-image probabilities agree (64 without ``reach``).
    precision : {"float32", "bfloat16", "auto"}
        Arithmetic of the network pass (see
        :func:`mcf_fast.segmentation.precision.inference_dtype`).

    Returns
    -------
    ndarray, shape (H, W), float32
        Foreground probability in [0, 1].
    """
    return predict_maps(
        net, image, device=device, tile=tile, flips=flips, halo=halo, precision=precision
    )[0]


def predict_maps(
    net: torch.nn.Module,
    image: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    tile: int = 512,
    flips: bool = False,
    halo: int | None = None,
    precision: str = "float32",
) -> tuple[np.ndarray, np.ndarray | None]:
    """The nucleus probability and, for a network with a distance channel, its distance map.

    Same parameters and tiling as :func:`predict_proba`.

    Returns
    -------
    probability : ndarray, shape (H, W), float32
    distance : ndarray, shape (H, W), float32, or None
        The predicted normalised distance to the nucleus edge (0..1; see
        :mod:`mcf_fast.ops.shape`); None for a two-class network.
    """
    img = as_rgb_uint8(image)
    multiple = getattr(net, "multiple", 1)
    if halo is None:
        reach = getattr(net, "reach", None)
        halo = 64 if reach is None else -(-int(reach) // multiple) * multiple
    if tile < 1 or halo < 0:
        raise InputError(
            f"predict_proba: tile must be positive and halo non-negative, got {tile}, {halo}"
        )
    h, w = img.shape[:2]
    device = torch.device(device)
    context = arithmetic(precision, device)
    with_distance = getattr(net, "hparams", {}).get("n_classes", 2) >= 3
    out = np.empty((h, w), np.float32)
    dist = np.empty((h, w), np.float32) if with_distance else None
    was_training = net.training
    net.eval()
    run = net.for_inference() if hasattr(net, "for_inference") else net

    def unflip(q: torch.Tensor) -> torch.Tensor:
        if not flips:
            return q[0]
        return (q[0] + q[1].flip(1) + q[2].flip(0) + q[3].flip(0, 1)) / 4.0

    try:
        with torch.inference_mode(), context:
            for y0 in range(0, h, tile):
                for x0 in range(0, w, tile):
                    y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
                    ry0, rx0 = max(0, y0 - halo), max(0, x0 - halo)
                    ry1, rx1 = min(h, y1 + halo), min(w, x1 + halo)
                    block = _pad_to(img[ry0:ry1, rx0:rx1], multiple)
                    x = _to_tensor(block[None]).to(device)
                    if flips:
                        x = torch.cat([x, x.flip(3), x.flip(2), x.flip(2, 3)])
                    logits = run(x).float()
                    keep = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
                    p = unflip(torch.softmax(logits[:, :2], dim=1)[:, 1])
                    out[y0:y1, x0:x1] = p.float().cpu().numpy()[keep]
                    if dist is not None:
                        d = unflip(torch.sigmoid(logits[:, 2]))
                        dist[y0:y1, x0:x1] = d.float().cpu().numpy()[keep]
    finally:
        net.train(was_training)
    return out, dist
