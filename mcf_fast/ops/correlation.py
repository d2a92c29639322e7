"""Correlation of one image's features with a whole filter bank, through the FFT.

A multi-channel filter ``w`` (C channels, odd side ``f``, anchor at the centre ``a``)
gives the response ``R(t) = sum_c sum_tau Z_c(t + tau - a) w_c(tau)``.  By the correlation
theorem, the sum over channels can be taken in the Fourier domain::

    R = irfft2( sum_c rfft2(Z_c) * conj(rfft2(w_c)) )

so each image channel is transformed once for all filters, and each filter costs one
inverse transform.  Full-image filter spectra would take ``F * C`` image-sized complex
arrays (gigabytes for 50 filters of 20 channels), so the image is cut into blocks
(overlap-save): a block of side ``B`` yields ``B - f + 1`` valid output rows and columns,
and the filter spectra are only ``B`` x ``B`` -- computed once per block size and cached.
Per frequency the sum over channels of all blocks against all filters is one small matrix
product (``(F x C) @ (C x blocks)``), which runs on BLAS.

Borders: outside the image the features are mirrored (numpy ``mode="symmetric"``: the edge
pixel repeated, ``... 1 0 | 0 1 ...``), so any image size works, even one smaller than the
filters.

FFTs: pyFFTW plans (built once per shape, reused; ``FFTW_MEASURE`` wisdom is kept for the
process) when pyfftw imports, ``scipy.fft`` otherwise; both use ``workers`` threads.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from mcf_fast.errors import InputError

__all__ = [
    "BlockPlan",
    "SpectralBank",
    "correlate_bank",
    "iter_correlate",
    "pad_features",
    "plan_blocks",
    "default_workers",
]

#: measured on the 2-core reference machine: ns per (n log2 n) of one real 2-D FFT and
#: ns per complex multiply-add of the channel sum; only their ratio matters
_FFT_NS = 0.21
_MAC_NS = 0.19
#: memory cap of one group of blocks (input and output spectra) in bytes
_GROUP_BYTES = 96 * 2**20


def default_workers() -> int:
    """FFT threads: ``MCF_FFT_THREADS`` or the number of CPUs this process may use."""
    env = os.environ.get("MCF_FFT_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class BlockPlan:
    """Overlap-save geometry: block shape, valid output per block and block counts."""

    block: tuple[int, int]
    valid: tuple[int, int]
    counts: tuple[int, int]

    @property
    def n_blocks(self) -> int:
        return self.counts[0] * self.counts[1]


def _fast_lengths(lo: int, hi: int) -> list[int]:
    out, n = [], sfft.next_fast_len(max(lo, 1), real=True)
    while n <= hi:
        out.append(n)
        n = sfft.next_fast_len(n + 1, real=True)
    if not out:
        out.append(sfft.next_fast_len(max(lo, 1), real=True))
    return out


def plan_blocks(
    shape: tuple[int, int],
    filter_side: int,
    n_filters: int,
    n_channels: int,
    *,
    block: int = 0,
    max_spectra_bytes: int = 512 * 2**20,
) -> BlockPlan:
    """Choose the overlap-save block shape for an output of ``shape``.

    Parameters
    ----------
    shape : (H, W)
        Output size (the image, plus any extra margin).
    filter_side : int
        Odd side ``f`` of the (common) filter support.
    n_filters, n_channels : int
        F and C, for the cost model and the memory cap.
    block : int
        A fixed block side (0: choose by cost, the smallest total FFT + multiply cost whose
        cached filter spectra ``F * C * Bh * (Bw // 2 + 1) * 8`` bytes fit the cap).
    max_spectra_bytes : int
        Cap on the cached filter spectra.

    Returns
    -------
    BlockPlan
    """
    h, w = shape
    f = filter_side
    if block:
        if block < f:
            raise InputError(f"block_size = {block}: must be at least the filter side {f}")
        bh = bw = block
        vh, vw = bh - f + 1, bw - f + 1
        return BlockPlan((bh, bw), (vh, vw), (math.ceil(h / vh), math.ceil(w / vw)))
    best: tuple[float, BlockPlan] | None = None
    fallback: tuple[int, BlockPlan] | None = None
    cands_h = _fast_lengths(f + max(8, f // 2), h + f - 1)
    cands_w = _fast_lengths(f + max(8, f // 2), w + f - 1)
    for bh in cands_h:
        vh = bh - f + 1
        nh = math.ceil(h / vh)
        for bw in cands_w:
            vw = bw - f + 1
            nw = math.ceil(w / vw)
            nfreq = bh * (bw // 2 + 1)
            plan = BlockPlan((bh, bw), (vh, vw), (nh, nw))
            mem = n_filters * n_channels * nfreq * 8
            if fallback is None or mem < fallback[0]:
                fallback = (mem, plan)
            if mem > max_spectra_bytes:
                continue
            nlog = bh * bw * math.log2(bh * bw)
            cost = nh * nw * (
                (n_channels + 2 * n_filters) * _FFT_NS * nlog
                + _MAC_NS * n_filters * n_channels * nfreq
            )
            if best is None or cost < best[0]:
                best = (cost, plan)
    if best is None:
        assert fallback is not None
        return fallback[1]
    return best[1]


def pad_features(features: np.ndarray, margin: int) -> np.ndarray:
    """(C, H + 2m, W + 2m) float32 channel-first copy of (H, W, C) features, mirrored."""
    z = np.moveaxis(np.asarray(features, dtype=np.float32), 2, 0)
    if margin == 0:
        return np.ascontiguousarray(z)
    return np.pad(z, ((0, 0), (margin, margin), (margin, margin)), mode="symmetric")


class _FFT:
    """Batched real 2-D FFTs over the last two axes with cached plans."""

    _lock = threading.Lock()

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._plans: dict[tuple, object] = {}
        try:
            import pyfftw

            self._pyfftw = pyfftw
        except ImportError:  # pragma: no cover - pyfftw is a dependency
            self._pyfftw = None

    def _plan(self, kind: str, shape: tuple[int, ...], s: tuple[int, int]):
        key = (kind, shape, s)
        plan = self._plans.get(key)
        if plan is None:
            p = self._pyfftw
            with self._lock:
                if kind == "r":
                    a = p.empty_aligned(shape, dtype=np.float32)
                    plan = p.builders.rfft2(a, s=s, axes=(-2, -1), threads=self.workers,
                                            planner_effort="FFTW_MEASURE",
                                            overwrite_input=True, auto_align_input=True)
                else:
                    a = p.empty_aligned(shape, dtype=np.complex64)
                    plan = p.builders.irfft2(a, s=s, axes=(-2, -1), threads=self.workers,
                                             planner_effort="FFTW_MEASURE",
                                             auto_align_input=True)
            self._plans[key] = plan
        return plan

    def rfft2(self, a: np.ndarray) -> np.ndarray:
        if self._pyfftw is None:
            return sfft.rfft2(a, axes=(-2, -1), workers=self.workers)
        plan = self._plan("r", a.shape, a.shape[-2:])
        return plan(a)

    def irfft2(self, a: np.ndarray, s: tuple[int, int]) -> np.ndarray:
        if self._pyfftw is None:
            return sfft.irfft2(a, s=s, axes=(-2, -1), workers=self.workers)
        plan = self._plan("c", a.shape, s)
        return plan(a)


class SpectralBank:
    """A filter bank ready for correlation: filters plus their cached block spectra.

    Parameters
    ----------
    filters : ndarray, shape (F, C, f, f)
        Spatial filters with odd side ``f``, anchored at the centre pixel.
    block : int
        Fixed overlap-save block side, 0 for automatic.
    max_spectra_bytes : int
        Cap on the cached filter spectra (per block shape).
    workers : int, optional
        FFT threads (default :func:`default_workers`).
    """

    def __init__(
        self,
        filters: np.ndarray,
        *,
        block: int = 0,
        max_spectra_bytes: int = 512 * 2**20,
        workers: int | None = None,
    ) -> None:
        w = np.asarray(filters, dtype=np.float32)
        if w.ndim != 4 or w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0:
            raise InputError(f"filters: expected (F, C, f, f) with odd f, got {w.shape}")
        if w.shape[0] == 0:
            raise InputError("filters: the bank is empty")
        if not np.all(np.isfinite(w)):
            raise InputError("filters: contain NaN or infinite values")
        self.filters = np.ascontiguousarray(w)
        self.block = int(block)
        self.max_spectra_bytes = int(max_spectra_bytes)
        self.workers = default_workers() if workers is None else int(workers)
        self._fft = _FFT(self.workers)
        self._spectra: dict[tuple[int, int], np.ndarray] = {}

    @property
    def n_filters(self) -> int:
        return int(self.filters.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.filters.shape[1])

    @property
    def side(self) -> int:
        return int(self.filters.shape[2])

    def plan(self, shape: tuple[int, int]) -> BlockPlan:
        return plan_blocks(shape, self.side, self.n_filters, self.n_channels,
                           block=self.block, max_spectra_bytes=self.max_spectra_bytes)

    def spectra(self, block: tuple[int, int]) -> np.ndarray:
        """conj(rfft2(w)) at block shape, laid out (nfreq, F, C) complex64 (cached)."""
        sp = self._spectra.get(block)
        if sp is None:
            f_, c_, s, _ = self.filters.shape
            buf = np.zeros((f_ * c_, block[0], block[1]), dtype=np.float32)
            buf[:, :s, :s] = self.filters.reshape(f_ * c_, s, s)
            spec = sfft.rfft2(buf, axes=(-2, -1), workers=self.workers)
            spec = np.conj(spec, out=spec).reshape(f_, c_, -1)
            sp = np.ascontiguousarray(spec.transpose(2, 0, 1)).astype(np.complex64)
            self._spectra.clear()  # keep one block shape: bounded memory
            self._spectra[block] = sp
        return sp


def iter_correlate(
    features: np.ndarray, bank: SpectralBank, *, margin: int = 0
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield the responses block by block.

    Parameters
    ----------
    features : ndarray, shape (H, W, C)
    bank : SpectralBank
    margin : int
        Also compute the responses ``margin`` pixels beyond each image edge (mirrored
        features), so the output region is ``(H + 2 margin, W + 2 margin)``.

    Yields
    ------
    The arrays are views into reused buffers: use (or copy) each before asking for the next.

    y0, x0 : int
        Top-left of the block's valid output in the output region.
    responses : ndarray, shape (F, h, w), float32
        ``R_f`` over rows ``y0 .. y0 + h`` and columns ``x0 .. x0 + w`` of the region.
    """
    z = _check_features(features, bank.n_channels)
    f = bank.side
    m = f // 2
    p = pad_features(z, m + margin)
    out_h, out_w = z.shape[0] + 2 * margin, z.shape[1] + 2 * margin
    plan = bank.plan((out_h, out_w))
    (bh, bw), (vh, vw) = plan.block, plan.valid
    spec = bank.spectra((bh, bw))
    n_f, n_c = bank.n_filters, bank.n_channels
    nfreq = bh * (bw // 2 + 1)
    per_block = nfreq * 8 * (n_c + 2 * n_f) + 4 * bh * bw * (n_c + n_f)
    group = max(1, min(plan.n_blocks, _GROUP_BYTES // max(per_block, 1)))
    starts = [(by * vh, bx * vw) for by in range(plan.counts[0]) for bx in range(plan.counts[1])]
    for g0 in range(0, len(starts), group):
        gs = starts[g0 : g0 + group]
        blocks = np.zeros((len(gs), n_c, bh, bw), dtype=np.float32)
        for i, (y0, x0) in enumerate(gs):
            piece = p[:, y0 : y0 + bh, x0 : x0 + bw]
            blocks[i, :, : piece.shape[1], : piece.shape[2]] = piece
        zh = bank._fft.rfft2(blocks)  # (G, C, bh, bw//2+1)
        zt = np.ascontiguousarray(zh.reshape(len(gs), n_c, nfreq).transpose(2, 1, 0))
        prod = np.matmul(spec, zt)  # (nfreq, F, G)
        prod = np.ascontiguousarray(prod.transpose(2, 1, 0)).reshape(
            len(gs), n_f, bh, bw // 2 + 1)
        resp = bank._fft.irfft2(prod, (bh, bw))
        for i, (y0, x0) in enumerate(gs):
            h = min(vh, out_h - y0)
            w = min(vw, out_w - x0)
            yield y0, x0, resp[i, :, :h, :w]


def correlate_bank(
    features: np.ndarray,
    filters: np.ndarray | SpectralBank,
    *,
    margin: int = 0,
    block: int = 0,
    workers: int | None = None,
) -> np.ndarray:
    """Correlate (H, W, C) features with every filter of a bank.

    Parameters
    ----------
    features : ndarray, shape (H, W, C)
        Float features (converted to float32), finite.
    filters : ndarray, shape (F, C, f, f), or SpectralBank
        Odd-sided filters anchored at their centre pixel.
    margin : int
        Extra output pixels beyond each edge (see :func:`iter_correlate`).
    block, workers : int
        Overlap-save block side (0: automatic) and FFT threads, when ``filters`` is an
        array.

    Returns
    -------
    ndarray, shape (F, H + 2 margin, W + 2 margin), float32

    Raises
    ------
    InputError
        If the shapes do not match, or features or filters hold NaN or infinite values.

    Examples
    --------
    >>> z = np.zeros((8, 9, 2), np.float32); z[4, 4, 0] = 1
    >>> w = np.zeros((1, 2, 3, 3), np.float32); w[0, 0, 1, 1] = 2
    >>> r = correlate_bank(z, w)
    >>> r.shape, float(r[0, 4, 4])
    ((1, 8, 9), 2.0)
    """
    bank = filters if isinstance(filters, SpectralBank) else SpectralBank(
        filters, block=block, workers=workers)
    z = _check_features(features, bank.n_channels)
    out = np.empty((bank.n_filters, z.shape[0] + 2 * margin, z.shape[1] + 2 * margin),
                   dtype=np.float32)
    for y0, x0, r in iter_correlate(z, bank, margin=margin):
        out[:, y0 : y0 + r.shape[1], x0 : x0 + r.shape[2]] = r
    return out


def _check_features(features: np.ndarray, n_channels: int) -> np.ndarray:
    z = np.asarray(features)
    if z.ndim != 3 or z.shape[2] != n_channels:
        raise InputError(
            f"features: expected an (H, W, {n_channels}) array, got shape {z.shape}")
    if z.shape[0] < 1 or z.shape[1] < 1:
        raise InputError(f"features: empty array of shape {z.shape}")
    if not np.issubdtype(z.dtype, np.floating) and not np.issubdtype(z.dtype, np.integer):
        raise InputError(f"features: expected real numbers, got {z.dtype}")
    if not np.all(np.isfinite(z)):
        raise InputError("features: contain NaN or infinite values")
    return z
