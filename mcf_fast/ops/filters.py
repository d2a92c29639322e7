"""The correlation-filter bank of eq. (1), its centre crops (CFF) and the fusion weights G.

For template ``n`` resized to scale ``k`` (side ``s``, always odd so the centre is a pixel),
with windowed features ``x`` (``C`` channels) and a Gaussian label ``y`` peaked at the
origin, the multi-channel ridge-regression filter is, per channel ``c`` and frequency::

    conj(w_hat_c) = conj(x_hat_c) * y_hat / (sum_c' |x_hat_c'|^2 + lambda)      (eq. 1)

so that ``sum_c x_c (star) w_c`` reproduces ``y``.  In the spatial domain ``w`` is an
``(C, s, s)`` array whose *anchor* is its centre pixel: the response of an image ``Z`` at
pixel ``t`` is ``R(t) = sum_c sum_tau Z_c(t + tau - a) w_c(tau)`` with ``a = s // 2``; it
is high where a nucleus like the template is centred on ``t``.

CFF crops are centre crops of ``w`` (sides ``round(f * s)`` made odd).  The fusion weight
``G_k`` is a zero-sum Gaussian of side ``s``; ``G_{k,u}`` is the same Gaussian cut to the
crop and re-centred to zero sum (DESIGN.md sec. 2).  Correlating a response map with
``G`` and then correlating the image with ``w`` is one correlation with the full 2-D
convolution ``w * G`` (side ``2 s - 1``, anchor at its centre), which is how the fast
path folds ``G`` into the filters (:func:`fold_filter`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy.signal import fftconvolve

from mcf_fast._validate import check_version
from mcf_fast.config import DetectionConfig
from mcf_fast.errors import FormatError, InputError, describe

__all__ = [
    "FilterBank",
    "correlation_filters",
    "scale_factors",
    "crop_fractions",
    "build_filter_bank",
    "scale_sizes",
    "crop_sizes",
    "cosine_window",
    "gaussian_label",
    "zero_sum_gaussian",
    "train_filter",
    "centre_crop",
    "fold_filter",
    "resize_crop",
    "channel_projection",
    "projection_rank",
]

#: version of the ``.npz`` bank file written by :meth:`FilterBank.save`
BANK_VERSION = 1


def _odd(v: float) -> int:
    """The odd integer nearest ``v`` (ties go up), at least 1."""
    n = int(np.floor(v + 0.5))
    if n % 2 == 0:
        n = n + 1 if v >= n else n - 1
    return max(n, 1)


def scale_factors(config: DetectionConfig) -> np.ndarray:
    """The K scale factors of MFF (just 1.0 when ``use_mff`` is off)."""
    if not config.use_mff:
        return np.array([1.0])
    lo, hi = config.scale_range
    if config.n_scales == 1:
        return np.array([0.5 * (lo + hi)])
    return np.linspace(lo, hi, config.n_scales)


def crop_fractions(config: DetectionConfig) -> tuple[float, ...]:
    """The U crop fractions of CFF (just the whole filter when ``use_cff`` is off)."""
    return (1.0,) if not config.use_cff else tuple(config.crop_fractions)


def scale_sizes(size: int, config: DetectionConfig) -> list[int]:
    """Odd sides of a template of side ``size`` at each of the K scales."""
    return [max(_odd(size * f), 3) for f in scale_factors(config)]


def crop_sizes(side: int, config: DetectionConfig) -> list[int]:
    """Odd sides of the U centre crops of a filter of (odd) side ``side``."""
    return [min(max(_odd(side * f), 1), side) for f in crop_fractions(config)]


def cosine_window(side: int) -> np.ndarray:
    """(side, side) float64 separable cosine (Hann) window, positive at every pixel.

    The periodic-style Hann of length ``side + 2`` without its two zero ends, so that the
    border pixels of the template still count a little.
    """
    w = np.hanning(side + 2)[1:-1]
    return np.outer(w, w)


def gaussian_label(side: int, sigma: float) -> np.ndarray:
    """(side, side) float64 Gaussian with peak 1 at the origin (circularly wrapped)."""
    d = np.arange(side) - side // 2
    g = np.exp(-(d**2) / (2.0 * sigma**2))
    return sfft.ifftshift(np.outer(g, g))


def zero_sum_gaussian(side: int, sigma: float, *, crop: int | None = None) -> np.ndarray:
    """The fusion weight G: a centred 2-D Gaussian of side ``side`` with its mean removed.

    With ``crop`` (odd, <= side) the Gaussian is first cut to its centre ``crop`` x ``crop``
    pixels and then re-centred to zero sum (``G_{k,u}`` of eq. 2).

    Returns
    -------
    ndarray, shape (crop or side, crop or side), float64, summing to 0
    """
    n = side if crop is None else crop
    d = np.arange(n) - n // 2
    g1 = np.exp(-(d**2) / (2.0 * sigma**2))
    g = np.outer(g1, g1)
    return g - g.mean()


def train_filter(features: np.ndarray, *, lam: float, label_sigma: float) -> np.ndarray:
    """Eq. (1): the multi-channel correlation filter of one (windowed) feature patch.

    Parameters
    ----------
    features : ndarray, shape (s, s, C)
        Features of the resized template; the cosine window is applied here.
    lam : float
        Regulariser lambda, added to the summed power spectrum of the unitary DFT
        (``norm="ortho"``, so lambda compares with the features' mean power).
    label_sigma : float
        Sigma of the Gaussian label, as a fraction of ``s``.

    Returns
    -------
    ndarray, shape (C, s, s), float64
        The spatial filter, anchor at its centre pixel (module docstring).
    """
    x = np.asarray(features, dtype=np.float64)
    s = x.shape[0]
    xw = np.moveaxis(x, 2, 0) * cosine_window(s)[None]
    xh = sfft.fft2(xw, axes=(1, 2), norm="ortho")
    yh = sfft.fft2(gaussian_label(s, max(label_sigma * s, 0.5)), norm="ortho")
    den = np.sum((xh * np.conj(xh)).real, axis=0) + lam
    # conj(w_hat) = conj(x_hat) y_hat / den  <=>  w_hat = x_hat conj(y_hat) / den
    wh = xh * np.conj(yh)[None] / den[None]
    # w (index tau) responds at t = crop top-left when correlated as sum Z(t + tau) w(tau);
    # with the centre anchor, sum Z(t + tau - a) w(tau), the same array responds at the crop
    # centre: no shift needed
    return sfft.ifft2(wh, axes=(1, 2), norm="ortho").real / s


def centre_crop(a: np.ndarray, side: int) -> np.ndarray:
    """The centre ``side`` x ``side`` window of the last two axes (both odd)."""
    n = a.shape[-1]
    o = n // 2 - side // 2
    return a[..., o : o + side, o : o + side]


def fold_filter(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The one filter equal to correlating with ``w`` and then with ``g``.

    Parameters
    ----------
    w : ndarray, shape (C, s, s)
    g : ndarray, shape (r, r), symmetric about its centre

    Returns
    -------
    ndarray, shape (C, s + r - 1, s + r - 1): the full 2-D convolution ``w * g`` per channel.
    """
    return np.stack([fftconvolve(wc, g, mode="full") for wc in w])


def resize_crop(crop: np.ndarray, side: int) -> np.ndarray:
    """Resize an RGB uint8 crop to ``side`` x ``side`` (bilinear, anti-aliased), uint8."""
    from skimage.transform import resize

    if crop.shape[0] == side and crop.shape[1] == side:
        return np.ascontiguousarray(crop)
    out = resize(
        crop, (side, side), order=1, mode="reflect", anti_aliasing=True, preserve_range=True
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class FilterBank:
    """The filters of eq. (1) for N templates x K scales, with their crop geometry.

    Attributes
    ----------
    filters : tuple of tuple of ndarray
        ``filters[n][k]``: the (C, s_nk, s_nk) float32 spatial filter (anchor at the centre).
    sizes : ndarray, shape (N, K), int64
        Side ``s_nk`` of each filter.
    crops : ndarray, shape (N, K, U), int64
        Sides of the U centre crops of each filter.
    n_channels : int
        Feature channels C.
    g_sigma : float
        Sigma of the zero-sum Gaussian G, as a fraction of the filter side.
    """

    filters: tuple[tuple[np.ndarray, ...], ...]
    sizes: np.ndarray
    crops: np.ndarray
    n_channels: int
    g_sigma: float

    @property
    def n_templates(self) -> int:
        return len(self.filters)

    @property
    def n_scales(self) -> int:
        return int(self.sizes.shape[1])

    @property
    def n_crops(self) -> int:
        return int(self.crops.shape[2])

    @property
    def max_size(self) -> int:
        """The largest filter side (before G is folded in)."""
        return int(self.sizes.max())

    def g_weight(self, n: int, k: int, u: int | None = None) -> np.ndarray:
        """``G_k`` (u None) or ``G_{k,u}`` of template ``n`` (float64)."""
        s = int(self.sizes[n, k])
        crop = None if u is None else int(self.crops[n, k, u])
        return zero_sum_gaussian(s, max(self.g_sigma * s, 0.5), crop=crop)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank as a compressed ``.npz`` file, atomically."""
        from mcf_fast.io.images import atomic_path

        final = Path(path)
        arrays = {
            "version": np.array(BANK_VERSION),
            "sizes": self.sizes,
            "crops": self.crops,
            "n_channels": np.array(self.n_channels),
            "g_sigma": np.array(self.g_sigma),
        }
        for n, row in enumerate(self.filters):
            for k, w in enumerate(row):
                arrays[f"w_{n}_{k}"] = w
        with atomic_path(final) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        return final

    @classmethod
    def load(cls, path: str | os.PathLike) -> FilterBank:
        """Read a bank written by :meth:`save`.

        Raises
        ------
        InputError
            If the file does not exist.
        FormatError
            If it is not a bank file of a known version.
        """
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such filter-bank file")
        try:
            # our own handle: numpy leaves its file open when a damaged zip fails
            with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                check_version(int(z["version"]), BANK_VERSION, f"{p}: filter-bank version")
                sizes = np.asarray(z["sizes"], dtype=np.int64)
                crops = np.asarray(z["crops"], dtype=np.int64)
                filters = tuple(
                    tuple(
                        np.asarray(z[f"w_{n}_{k}"], dtype=np.float32) for k in range(sizes.shape[1])
                    )
                    for n in range(sizes.shape[0])
                )
                return cls(filters, sizes, crops, int(z["n_channels"]), float(z["g_sigma"]))
        except FormatError:
            raise
        except Exception as exc:  # zipfile / KeyError / ValueError on foreign files
            raise FormatError(f"{p}: not a filter-bank file ({describe(exc)})") from exc


def build_filter_bank(
    crops: Sequence[np.ndarray],
    config: DetectionConfig,
    *,
    features: Callable[[np.ndarray], np.ndarray],
) -> FilterBank:
    """Build the filter bank of eq. (1) for a list of template crops.

    Parameters
    ----------
    crops : sequence of ndarray, each (size, size, 3) uint8
        The template crops (``TemplateSet.crops()``).
    config : DetectionConfig
        Scales, crops, ``lam``, ``label_sigma`` and ``g_sigma`` are read from it.
    features : callable
        ``features(rgb_uint8 (s, s, 3)) -> (s, s, C) float32``: the same dense features
        that the images are described with.

    Returns
    -------
    FilterBank

    Raises
    ------
    InputError
        If ``crops`` is empty or a crop is not a square RGB uint8 array.
    """
    if len(crops) == 0:
        raise InputError("build_filter_bank: the template set is empty")
    filters: list[tuple[np.ndarray, ...]] = []
    sizes, crop_sides = [], []
    n_channels = -1
    for i, crop in enumerate(crops):
        c = np.asarray(crop)
        if c.ndim != 3 or c.shape[2] != 3 or c.shape[0] != c.shape[1] or c.dtype != np.uint8:
            raise InputError(
                f"templates[{i}]: expected a square (s, s, 3) uint8 crop, got {c.shape} {c.dtype}"
            )
        row, row_sizes, row_crops = [], [], []
        for s in scale_sizes(c.shape[0], config):
            f = np.asarray(features(resize_crop(c, s)), dtype=np.float32)
            if f.ndim != 3 or f.shape[:2] != (s, s):
                raise InputError(f"features of template {i}: expected ({s}, {s}, C), got {f.shape}")
            n_channels = f.shape[2]
            w = train_filter(f, lam=config.lam, label_sigma=config.label_sigma)
            row.append(w.astype(np.float32))
            row_sizes.append(s)
            row_crops.append(crop_sizes(s, config))
        filters.append(tuple(row))
        sizes.append(row_sizes)
        crop_sides.append(row_crops)
    return FilterBank(
        filters=tuple(filters),
        sizes=np.asarray(sizes, dtype=np.int64),
        crops=np.asarray(crop_sides, dtype=np.int64),
        n_channels=int(n_channels),
        g_sigma=float(config.g_sigma),
    )


def correlation_filters(
    bank: FilterBank, *, g_level: str = "crop", fold_crops: bool = True
) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray]:
    """The filters the image is actually correlated with, padded to one common side.

    Parameters
    ----------
    bank : FilterBank
    g_level : {"crop", "both", "none"}
        Where the zero-sum Gaussian G is applied: once at the crop level (``"crop"``),
        at the crop and the scale level as eq. (2) reads (``"both"``), or nowhere.
    fold_crops : bool
        Sum the U crop filters of each scale into one (valid when the crop fusion is a
        plain sum, i.e. top-T with T >= U or mean fusion; the caller decides).  With
        ``g_level="both"`` and folding, ``G_k`` is folded in as well.

    Returns
    -------
    filters : ndarray, shape (F, C, f, f), float32
        ``F = N*K`` (folded) or ``N*K*U``; all anchored at the centre of the odd side ``f``.
    layout : (N, K, U')
        How the F filters are ordered (C-order); ``U' = 1`` when folded.
    gk_sides : ndarray, shape (N, K), int64
        Side of ``G_k`` still to be applied to the fused crop maps (0 when nothing is left to
        apply, i.e. ``g_level != "both"`` or it was folded).
    """
    if g_level not in ("crop", "both", "none"):
        raise InputError(f"g_level = {g_level!r}: expected 'crop', 'both' or 'none'")
    n_t, n_k, n_u = bank.crops.shape
    out: list[np.ndarray] = []
    gk = np.zeros((n_t, n_k), dtype=np.int64)
    for n in range(n_t):
        for k in range(n_k):
            w = bank.filters[n][k].astype(np.float64)
            s = w.shape[-1]
            parts = []
            for u in range(n_u):
                cu = int(bank.crops[n, k, u])
                wu = centre_crop(w, cu)
                if g_level != "none":
                    wu = fold_filter(wu, bank.g_weight(n, k, u))
                parts.append(wu)
            if fold_crops:
                side = max(p.shape[-1] for p in parts)
                acc = np.zeros((w.shape[0], side, side))
                for p in parts:
                    o = side // 2 - p.shape[-1] // 2
                    acc[:, o : o + p.shape[-1], o : o + p.shape[-1]] += p
                if g_level == "both":
                    acc = fold_filter(acc, bank.g_weight(n, k))
                out.append(acc)
            else:
                out.extend(parts)
                if g_level == "both":
                    gk[n, k] = s
    side = max(p.shape[-1] for p in out)
    arr = np.zeros((len(out), bank.n_channels, side, side), dtype=np.float32)
    for i, p in enumerate(out):
        o = side // 2 - p.shape[-1] // 2
        arr[i, :, o : o + p.shape[-1], o : o + p.shape[-1]] = p
    layout = (n_t, n_k, 1 if fold_crops else n_u)
    return arr, layout, gk


def projection_rank(
    n_filters: int, n_channels: int, *, rank: int = 0, max_filter_channels: int = 0
) -> int:
    """The number of feature channels the bank is correlated in (``n_channels``: no projection).

    Parameters
    ----------
    n_filters, n_channels : int
        F and C of the correlation filters.
    rank : int
        A fixed rank (0: all channels).
    max_filter_channels : int
        Bound on ``F * rank`` (0: none): with it, the rank is at most
        ``max(1, max_filter_channels // F)``, so that the cached spectra and the channel sum
        cost the same whatever the template count.

    Returns
    -------
    int
        In ``1 .. n_channels``.
    """
    r = n_channels if rank <= 0 else min(rank, n_channels)
    if max_filter_channels > 0:
        r = min(r, max(1, max_filter_channels // max(n_filters, 1)))
    return int(r)


def channel_projection(
    filters: np.ndarray, rank: int, *, second_moment: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Project the feature channels of a bank onto ``rank`` shared directions.

    The response ``R_f = sum_c Z_c (star) W_fc`` is linear in the channels, so a
    ``C x C`` map ``M`` of rank ``r`` applied to the filters (``W_f -> M W_f``) is the same
    as correlating ``r`` projected feature channels ``Z P`` with ``r`` projected filters.
    ``M`` is chosen to keep the most response energy: with ``S`` the channels' second
    moment (identity when not given), ``U_r`` the leading ``r`` left singular vectors of
    ``S^(1/2) [W_1 ... W_F]`` (the filters as a ``C x (F f f)`` matrix),
    ``P = S^(-1/2) U_r`` and the projected filters are ``V_f = U_r^T S^(1/2) W_f``.  With
    ``r = C`` the result is the original correlation, up to rounding.

    Parameters
    ----------
    filters : ndarray, shape (F, C, f, f)
    rank : int
        ``r``, in ``1 .. C``.
    second_moment : ndarray, shape (C, C), optional
        ``E[z z^T]`` of the features (symmetric, positive semi-definite); a small ridge
        keeps its inverse square root finite.

    Returns
    -------
    projection : ndarray, shape (C, r), float32
        Features ``(H, W, C) @ projection`` give the ``r`` channels to correlate.
    projected : ndarray, shape (F, r, f, f), float32
    energy : float
        The share in [0, 1] of ``||S^(1/2) W||^2`` the ``r`` directions keep.

    Raises
    ------
    InputError
        For a rank outside ``1 .. C`` or a second moment of the wrong shape.
    """
    w = np.asarray(filters, dtype=np.float64)
    n_f, n_c = w.shape[:2]
    if not 1 <= rank <= n_c:
        raise InputError(f"rank = {rank}: expected 1 .. {n_c} (the feature channels)")
    if second_moment is None:
        half = inv_half = np.eye(n_c)
    else:
        s = np.asarray(second_moment, dtype=np.float64)
        if s.shape != (n_c, n_c):
            raise InputError(f"second_moment: expected shape ({n_c}, {n_c}), got {s.shape}")
        s = 0.5 * (s + s.T)
        vals, vecs = np.linalg.eigh(s)
        vals = np.maximum(vals, 0.0) + 1e-6 * max(float(vals.max()), 1e-12)
        half = (vecs * np.sqrt(vals)) @ vecs.T
        inv_half = (vecs / np.sqrt(vals)) @ vecs.T
    mat = np.moveaxis(w, 1, 0).reshape(n_c, -1)  # (C, F f f)
    weighted = half @ mat
    gram = weighted @ weighted.T
    vals, vecs = np.linalg.eigh(gram)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
    u = vecs[:, :rank]
    u = u * np.where(u[np.argmax(np.abs(u), axis=0), np.arange(rank)] < 0, -1.0, 1.0)
    projection = inv_half @ u
    projected = np.einsum("cr,fcij->frij", half @ u, w)
    energy = float(vals[:rank].sum() / max(vals.sum(), 1e-300))
    return (
        np.ascontiguousarray(projection, dtype=np.float32),
        np.ascontiguousarray(projected, dtype=np.float32),
        energy,
    )
