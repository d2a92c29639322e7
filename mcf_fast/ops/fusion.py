"""Response fusion, eqs. (2)-(3), and the normalisation to [0, 1].

The zero-sum Gaussian weighting of eq. (2) is a correlation of each response map with
``G``; in the detector it is folded into the filters (:func:`mcf_fast.ops.filters.fold_filter`),
so what is left here is pointwise: a top-T (or mean) accumulation over the U crops of each
scale (CFF), over the K scales of each template (MFF), and a top-H accumulation over the N
templates, eq. (3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve

from mcf_fast.errors import InputError
from mcf_fast.kernels.fusion import group_topk_kernel, scale_template_kernel

__all__ = [
    "FusionLayout",
    "accumulate_crops",
    "accumulate_scales_templates",
    "fuse_crops",
    "fuse_scales_templates",
    "fuse_responses",
    "normalise_response",
    "weight_scales",
]


@dataclass(frozen=True, eq=False)
class FusionLayout:
    """What the fusion of eqs. (2)-(3) needs to know about a filter bank's responses.

    Responses come as ``n_templates * n_scales * n_crops`` maps in C order (``n_crops`` is 1
    when the crops are folded into the filters).  With eq. (2) read literally
    (``g_level="both"``, not folded) each crop-fused map is correlated with its ``G_k``:
    ``scale_weights[n][k]``, over a `margin` of ``max side // 2`` pixels the responses carry
    beyond the image; otherwise `scale_weights` is None and `margin` 0.
    """

    n_templates: int
    n_scales: int
    n_crops: int
    top_t: int
    top_h: int
    mode: str
    margin: int = 0
    scale_weights: tuple[tuple[np.ndarray, ...], ...] | None = None


def _whole(h: int, w: int) -> np.ndarray:
    return np.array([[0, 0, h, w]], dtype=np.int64)


def _check_mode(mode: str) -> bool:
    if mode not in ("topk", "mean"):
        raise InputError(f"fusion mode = {mode!r}: expected 'topk' or 'mean'")
    return mode == "mean"


def _check_t(name: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} = {v!r}: expected a positive integer")
    return int(v)


def _as_maps(r: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(r)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return a


def accumulate_crops(
    batch: np.ndarray,
    n_u: int,
    out: np.ndarray,
    offsets: np.ndarray,
    *,
    top_t: int,
    mode: str = "topk",
) -> None:
    """CFF of a batch of response tiles, written into `out` at each tile's offset.

    The streaming form of :func:`fuse_crops` that the detector runs on the batches of
    :func:`~mcf_fast.ops.correlation.iter_correlate_batches`; no validation (the hot path).

    Parameters
    ----------
    batch : ndarray, shape (B, M * U, h, w), float32, C-contiguous
        B tiles of the M * U crop responses.
    n_u : int
        U, the crops per group.
    out : ndarray, shape (M, H, W), float32
        Written in place.
    offsets : ndarray, shape (B, 4), int64
        ``(y0, x0, h, w)``: where each tile's top-left h x w pixels go in `out`.
    top_t : int
    mode : {"topk", "mean"}
    """
    group_topk_kernel(batch, n_u, top_t, mode == "mean", out, offsets)


def accumulate_scales_templates(
    batch: np.ndarray,
    n_t: int,
    n_k: int,
    out: np.ndarray,
    offsets: np.ndarray,
    *,
    top_t: int,
    top_h: int,
    mode: str = "topk",
) -> None:
    """MFF and eq. (3) of a batch of tiles into `out`: the streaming form of
    :func:`fuse_scales_templates` (batch (B, N * K, h, w), `out` (H, W)); no validation."""
    scale_template_kernel(batch, n_t, n_k, top_t, top_h, mode == "mean", out, offsets)


def weight_scales(
    crop_fused: np.ndarray, weights: Sequence[Sequence[np.ndarray]], *, margin: int
) -> np.ndarray:
    """Eq. (2) read literally: correlate each crop-fused map ``S_k^n`` with its ``G_k``.

    Parameters
    ----------
    crop_fused : ndarray, shape (N * K, H + 2 margin, W + 2 margin), float32
        The maps, computed `margin` pixels beyond the image so that the result is exact.
    weights : N x K arrays
        ``G_k`` of each template and scale (odd sides of at most ``2 margin + 1``).
    margin : int

    Returns
    -------
    ndarray, shape (N * K, H, W), float32
    """
    n_t, n_k = len(weights), len(weights[0])
    h, w = crop_fused.shape[1] - 2 * margin, crop_fused.shape[2] - 2 * margin
    out = np.empty((n_t * n_k, h, w), dtype=np.float32)
    for n in range(n_t):
        for k in range(n_k):
            g = weights[n][k]
            ek = g.shape[0] // 2
            src = crop_fused[
                n * n_k + k, margin - ek : margin + ek + h, margin - ek : margin + ek + w
            ]
            # correlation with G is convolution with G flipped
            out[n * n_k + k] = fftconvolve(src.astype(np.float64), g[::-1, ::-1], mode="valid")
    return out


def fuse_crops(responses: np.ndarray, *, top_t: int = 3, mode: str = "topk") -> np.ndarray:
    """CFF: accumulate the top-T of the U crop responses per pixel.

    Parameters
    ----------
    responses : ndarray, shape (M, U, H, W)
        Crop responses (already weighted by ``G_{k,u}``), M = N * K groups.
    top_t : int
        T; ``T >= U`` is a plain sum.
    mode : {"topk", "mean"}

    Returns
    -------
    ndarray, shape (M, H, W), float32
    """
    _check_mode(mode)
    t = _check_t("top_t", top_t)
    r = _as_maps(responses, "responses")
    if r.ndim != 4:
        raise InputError(f"responses: expected (M, U, H, W), got shape {r.shape}")
    m, u, h, w = r.shape
    out = np.empty((m, h, w), dtype=np.float32)
    batch = np.ascontiguousarray(r.reshape(1, m * u, h, w))
    accumulate_crops(batch, u, out, _whole(h, w), top_t=t, mode=mode)
    return out


def fuse_scales_templates(
    responses: np.ndarray, *, top_t: int = 3, top_h: int = 3, mode: str = "topk"
) -> np.ndarray:
    """MFF and eq. (3): top-T over the K scales of each template, then top-H over templates.

    Parameters
    ----------
    responses : ndarray, shape (N, K, H, W)
    top_t, top_h : int
    mode : {"topk", "mean"}

    Returns
    -------
    ndarray, shape (H, W), float32: the fused response S (not normalised).
    """
    _check_mode(mode)
    t = _check_t("top_t", top_t)
    hh = _check_t("top_h", top_h)
    r = _as_maps(responses, "responses")
    if r.ndim != 4:
        raise InputError(f"responses: expected (N, K, H, W), got shape {r.shape}")
    n, k, h, w = r.shape
    out = np.empty((h, w), dtype=np.float32)
    batch = np.ascontiguousarray(r.reshape(1, n * k, h, w))
    accumulate_scales_templates(batch, n, k, out, _whole(h, w), top_t=t, top_h=hh, mode=mode)
    return out


def fuse_responses(
    responses: np.ndarray,
    *,
    top_t: int = 3,
    top_h: int = 3,
    mode: str = "topk",
    scale_weights: Sequence[Sequence[np.ndarray]] | None = None,
) -> np.ndarray:
    """The whole fusion of eqs. (2)-(3) on full response maps.

    Parameters
    ----------
    responses : ndarray, shape (N, K, U, H, W)
        ``S_{k,u}^n``, each already weighted by its ``G_{k,u}`` (or not, as wanted).
    top_t, top_h : int
        T (crops and scales) and H (templates).
    mode : {"topk", "mean"}
        Top-k accumulation (paper) or mean fusion (Table 3 ablation).
    scale_weights : N x K arrays, optional
        ``G_k`` to correlate each crop-fused map ``S_k^n`` with before the scale fusion
        (eq. 2 read literally); zero outside the map.

    Returns
    -------
    ndarray, shape (H, W), float32: S, not yet normalised.

    Examples
    --------
    >>> r = np.zeros((2, 1, 1, 1, 1), np.float32); r[:, 0, 0, 0, 0] = [1, 2]
    >>> float(fuse_responses(r, top_h=1)[0, 0])
    2.0
    """
    r = _as_maps(responses, "responses")
    if r.ndim != 5:
        raise InputError(f"responses: expected (N, K, U, H, W), got shape {r.shape}")
    n, k, u, h, w = r.shape
    sk = fuse_crops(r.reshape(n * k, u, h, w), top_t=top_t, mode=mode)
    if scale_weights is not None:
        for i in range(n):
            for j in range(k):
                g = np.asarray(scale_weights[i][j], dtype=np.float64)
                # correlation with a symmetric G equals convolution
                sk[i * k + j] = fftconvolve(
                    sk[i * k + j].astype(np.float64), g[::-1, ::-1], mode="same"
                )
    return fuse_scales_templates(sk.reshape(n, k, h, w), top_t=top_t, top_h=top_h, mode=mode)


def normalise_response(
    s: np.ndarray, *, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Min-max normalisation of S to [0, 1] (a constant map becomes all zeros).

    Parameters
    ----------
    s : ndarray
    value_range : (lo, hi), optional
        The range mapped to [0, 1]: the map's own minimum and maximum by default; a fixed
        one (e.g. a slide-level calibration) maps every tile alike, values outside it
        falling outside [0, 1].

    Returns
    -------
    ndarray, same shape, float32
    """
    a = np.asarray(s, dtype=np.float32)
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
    else:
        if a.size == 0:
            return a.copy()
        lo, hi = float(a.min()), float(a.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise InputError("response: contains NaN or infinite values")
    if hi - lo <= 0:
        return np.zeros_like(a)
    return ((a - np.float32(lo)) * np.float32(1.0 / (hi - lo))).astype(np.float32)
