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
Per frequency the sum over channels of a batch of blocks against all filters is one small
matrix product (``(F x C) @ (C x blocks)``), computed by a numba kernel in cache-sized
frequency chunks (:mod:`mcf_fast.kernels.correlation`).

Borders: outside the image the features are mirrored (numpy ``mode="symmetric"``: the edge
pixel repeated, ``... 1 0 | 0 1 ...``), so any image size works, even one smaller than the
filters.

FFTs: pyFFTW plans (built once per shape, reused; ``FFTW_MEASURE`` wisdom kept on disk) when
pyfftw imports, ``scipy.fft`` otherwise; both use ``workers`` threads (:class:`_FFT`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from mcf_fast.errors import InputError
from mcf_fast.kernels.correlation import spectral_mac_kernel

__all__ = [
    "BlockPlan",
    "SpectralBank",
    "correlate_bank",
    "iter_correlate",
    "iter_correlate_batches",
    "pad_features",
    "plan_blocks",
    "default_workers",
]

#: measured on the 2-core reference machine: ns per (n log2 n) of one real 2-D FFT and
#: ns per complex multiply-add of the channel sum; only their ratio matters
_FFT_NS = 0.21
_MAC_NS = 0.19
#: memory cap of the spectra of one group of blocks (inputs and products) in bytes
_GROUP_BYTES = 192 * 2**20
#: frequencies per parallel chunk of the multiply-add kernel
_MAC_CHUNK = 1024


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
            cost = (
                nh
                * nw
                * (
                    (n_channels + 2 * n_filters) * _FFT_NS * nlog
                    + _MAC_NS * n_filters * n_channels * nfreq
                )
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


def _wisdom_path() -> Path | None:
    env = os.environ.get("MCF_FFTW_WISDOM")
    if env == "0":
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mcf_fast" / "fftw-wisdom.bin"


_WISDOM_MAGIC = b"MCFW1\n"


def _load_wisdom(pyfftw) -> None:
    path = _wisdom_path()
    if path is None or not path.is_file():
        return
    try:
        data = path.read_bytes()
        if not data.startswith(_WISDOM_MAGIC):
            return
        pos, parts = len(_WISDOM_MAGIC), []
        while pos < len(data):
            n = int.from_bytes(data[pos : pos + 8], "little")
            parts.append(data[pos + 8 : pos + 8 + n])
            pos += 8 + n
        pyfftw.import_wisdom(tuple(parts))
    except Exception:  # a damaged cache only costs planning time
        return


def _save_wisdom(pyfftw) -> None:
    path = _wisdom_path()
    if path is None:
        return
    try:
        from mcf_fast.io.images import atomic_path

        blob = _WISDOM_MAGIC + b"".join(
            len(w).to_bytes(8, "little") + w for w in pyfftw.export_wisdom()
        )
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)
    except OSError:  # read-only home: plans are still cached in memory
        return


class _FFT:
    """Batched real 2-D FFTs of (M, h, w) stacks with cached single-transform plans.

    With pyFFTW, one plan per shape and thread (``FFTW_MEASURE``, planning time capped,
    wisdom kept on disk across processes: ``$MCF_FFTW_WISDOM``, default
    ``~/.cache/mcf_fast/fftw-wisdom.bin``; ``MCF_FFTW_WISDOM=0`` turns the file off); the
    transforms of a stack are shared among ``workers`` threads (FFTW releases the GIL).
    Without pyFFTW, ``scipy.fft`` with ``workers`` threads.
    """

    _wisdom_lock = threading.Lock()
    _wisdom_loaded = False

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._local = threading.local()
        self._pool = None
        try:
            import pyfftw

            self._pyfftw = pyfftw
        except ImportError:  # pragma: no cover - pyfftw is a dependency
            self._pyfftw = None
        if self._pyfftw is not None:
            with _FFT._wisdom_lock:
                if not _FFT._wisdom_loaded:
                    _load_wisdom(self._pyfftw)
                    _FFT._wisdom_loaded = True

    def _plan(self, kind: str, shape: tuple[int, int]):
        plans = getattr(self._local, "plans", None)
        if plans is None:
            plans = self._local.plans = {}
        plan = plans.get((kind, shape))
        if plan is None:
            p = self._pyfftw
            h, w = shape
            with _FFT._wisdom_lock:
                real = p.empty_aligned((h, w), dtype=np.float32)
                cplx = p.empty_aligned((h, w // 2 + 1), dtype=np.complex64)
                flags = ("FFTW_MEASURE", "FFTW_UNALIGNED", "FFTW_DESTROY_INPUT")
                if kind == "r":
                    plan = p.FFTW(
                        real,
                        cplx,
                        axes=(0, 1),
                        direction="FFTW_FORWARD",
                        flags=flags,
                        threads=1,
                        planning_timelimit=5.0,
                    )
                else:
                    plan = p.FFTW(
                        cplx,
                        real,
                        axes=(0, 1),
                        direction="FFTW_BACKWARD",
                        flags=flags,
                        threads=1,
                        planning_timelimit=5.0,
                    )
                _save_wisdom(p)
            plans[(kind, shape)] = plan
        return plan

    def _run(self, kind: str, src: np.ndarray, dst: np.ndarray, shape: tuple[int, int]):
        def work(lo: int, hi: int) -> None:
            plan = self._plan(kind, shape)
            for i in range(lo, hi):
                plan.update_arrays(src[i], dst[i])
                plan.execute()
            if kind == "c":  # FFTW's c2r is unnormalised
                dst[lo:hi] *= np.float32(1.0 / (shape[0] * shape[1]))

        m = src.shape[0]
        nw = min(self.workers, m)
        if nw <= 1:
            work(0, m)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mcf-fft")
        cuts = np.linspace(0, m, nw + 1).astype(int)
        futures = [self._pool.submit(work, int(cuts[i]), int(cuts[i + 1])) for i in range(nw)]
        for f in futures:
            f.result()

    def rfft2(self, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(M, h, w) float32 -> (M, h, w // 2 + 1) complex64 (into ``out`` if given)."""
        m, h, w = a.shape
        if self._pyfftw is None:
            r = sfft.rfft2(a, axes=(-2, -1), workers=self.workers)
            if out is None:
                return r.astype(np.complex64)
            out[...] = r
            return out
        if out is None:
            out = np.empty((m, h, w // 2 + 1), dtype=np.complex64)
        self._run("r", np.ascontiguousarray(a, dtype=np.float32), out, (h, w))
        return out

    def irfft2(self, a: np.ndarray, s: tuple[int, int], out: np.ndarray | None = None):
        """(M, h, w // 2 + 1) complex64 -> (M, h, w) float32; ``a`` is destroyed."""
        if self._pyfftw is None:
            r = sfft.irfft2(a, s=s, axes=(-2, -1), workers=self.workers)
            if out is None:
                return r.astype(np.float32)
            out[...] = r
            return out
        if out is None:
            out = np.empty((a.shape[0],) + tuple(s), dtype=np.float32)
        self._run("c", np.ascontiguousarray(a, dtype=np.complex64), out, tuple(s))
        return out


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
        self._spectra: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._work: dict[tuple, dict[str, np.ndarray]] = {}

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
        return plan_blocks(
            shape,
            self.side,
            self.n_filters,
            self.n_channels,
            block=self.block,
            max_spectra_bytes=self.max_spectra_bytes,
        )

    def _workspace(self, block: tuple[int, int], group: int) -> dict[str, np.ndarray]:
        """Work buffers for one block shape and group size, kept between calls."""
        key = (block, group)
        work = self._work.get(key)
        if work is None:
            bh, bw = block
            nf = bh * (bw // 2 + 1)
            f_, c_ = self.n_filters, self.n_channels
            work = {
                "block": np.zeros((c_, bh, bw), dtype=np.float32),
                "spec": np.zeros((c_, bh, bw // 2 + 1), dtype=np.complex64),
                "z_re": np.zeros((group, c_, nf), dtype=np.float32),
                "z_im": np.zeros((group, c_, nf), dtype=np.float32),
                "prod": np.zeros((group, f_, nf), dtype=np.complex64),
                "resp": np.zeros((1, f_, bh, bw), dtype=np.float32),
            }
            self._work.clear()
            self._work[key] = work
        return work

    def release(self) -> None:
        """Drop the cached filter spectra and work buffers (they are rebuilt on demand)."""
        self._spectra.clear()
        self._work.clear()

    def spectra(self, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """conj(rfft2(w)) at block shape as real and imaginary (F, C, nfreq) float32 planes.

        Cached for the last block shape only (bounded memory).
        """
        sp = self._spectra.get(block)
        if sp is None:
            f_, c_, s, _ = self.filters.shape
            nf = block[0] * (block[1] // 2 + 1)
            re = np.empty((f_, c_, nf), dtype=np.float32)
            im = np.empty((f_, c_, nf), dtype=np.float32)
            buf = np.zeros((c_, block[0], block[1]), dtype=np.float32)
            for i in range(f_):  # one filter at a time keeps the temporaries small
                buf[:, :s, :s] = self.filters[i]
                spec = sfft.rfft2(buf, axes=(-2, -1), workers=self.workers).reshape(c_, nf)
                re[i] = spec.real
                np.negative(spec.imag, out=im[i])
            self._spectra.clear()
            self._spectra[block] = sp = (re, im)
        return sp


def iter_correlate_batches(
    features: np.ndarray, bank: SpectralBank, *, margin: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the responses one overlap-save block at a time.

    Blocks are transformed one by one, multiplied with the filter spectra a group at a time
    (so the cached spectra are read once per group) and transformed back one by one; the
    work buffers are kept by ``bank`` between calls (fresh memory is slow to touch).

    Parameters
    ----------
    features : ndarray, shape (H, W, C)
    bank : SpectralBank
    margin : int
        Also compute the responses ``margin`` pixels beyond each image edge (mirrored
        features), so the output region is ``(H + 2 margin, W + 2 margin)``.

    Yields
    ------
    offsets : ndarray, shape (1, 4), int64
        ``(y0, x0, h, w)``: the block's valid output is the top-left ``h`` x ``w`` of its
        maps and lands at rows ``y0 .. y0 + h``, columns ``x0 .. x0 + w`` of the region.
    responses : ndarray, shape (1, F, bh, bw), float32, C-contiguous
        A reused buffer: use it before asking for the next block.
    """
    z = _check_features(features, bank.n_channels)
    f = bank.side
    m = f // 2
    p = pad_features(z, m + margin)
    out_h, out_w = z.shape[0] + 2 * margin, z.shape[1] + 2 * margin
    plan = bank.plan((out_h, out_w))
    (bh, bw), (vh, vw) = plan.block, plan.valid
    w_re, w_im = bank.spectra((bh, bw))
    n_f, n_c = bank.n_filters, bank.n_channels
    bwr = bw // 2 + 1
    nfreq = bh * bwr
    per_block = nfreq * 8 * (n_c + n_f)
    n_groups = math.ceil(plan.n_blocks / max(1, min(plan.n_blocks, _GROUP_BYTES // per_block)))
    group = math.ceil(plan.n_blocks / n_groups)
    work = bank._workspace((bh, bw), group)
    blk, z_re, z_im, prod, resp = (
        work["block"],
        work["z_re"],
        work["z_im"],
        work["prod"],
        work["resp"],
    )
    starts = [(by * vh, bx * vw) for by in range(plan.counts[0]) for bx in range(plan.counts[1])]
    offsets = np.empty((1, 4), dtype=np.int64)
    for g0 in range(0, len(starts), group):
        gs = starts[g0 : g0 + group]
        nb = len(gs)
        for i, (y0, x0) in enumerate(gs):
            piece = p[:, y0 : y0 + bh, x0 : x0 + bw]
            ph, pw = piece.shape[1:]
            blk[:, :ph, :pw] = piece
            if ph < bh:
                blk[:, ph:, :] = 0.0
            if pw < bw:
                blk[:, :, pw:] = 0.0
            spec = bank._fft.rfft2(blk, out=work["spec"]).reshape(n_c, nfreq)
            np.copyto(z_re[i], spec.real)
            np.copyto(z_im[i], spec.imag)
        spectral_mac_kernel(w_re, w_im, z_re[:nb], z_im[:nb], prod[:nb], _MAC_CHUNK)
        for i, (y0, x0) in enumerate(gs):
            bank._fft.irfft2(prod[i].reshape(n_f, bh, bwr), (bh, bw), out=resp[0])
            offsets[0] = (y0, x0, min(vh, out_h - y0), min(vw, out_w - x0))
            yield offsets, resp


def iter_correlate(
    features: np.ndarray, bank: SpectralBank, *, margin: int = 0
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield the responses block by block: ``(y0, x0, responses (F, h, w))``.

    The arrays are views into reused buffers: use (or copy) each before asking for the
    next.  See :func:`iter_correlate_batches` for the parameters.
    """
    for offsets, resp in iter_correlate_batches(features, bank, margin=margin):
        for i, (y0, x0, h, w) in enumerate(offsets.tolist()):
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
    bank = (
        filters
        if isinstance(filters, SpectralBank)
        else SpectralBank(filters, block=block, workers=workers)
    )
    z = _check_features(features, bank.n_channels)
    out = np.empty(
        (bank.n_filters, z.shape[0] + 2 * margin, z.shape[1] + 2 * margin), dtype=np.float32
    )
    for y0, x0, r in iter_correlate(z, bank, margin=margin):
        out[:, y0 : y0 + r.shape[1], x0 : x0 + r.shape[2]] = r
    return out


def _check_features(features: np.ndarray, n_channels: int) -> np.ndarray:
    z = np.asarray(features)
    if z.ndim != 3 or z.shape[2] != n_channels:
        raise InputError(f"features: expected an (H, W, {n_channels}) array, got shape {z.shape}")
    if z.shape[0] < 1 or z.shape[1] < 1:
        raise InputError(f"features: empty array of shape {z.shape}")
    if not np.issubdtype(z.dtype, np.floating) and not np.issubdtype(z.dtype, np.integer):
        raise InputError(f"features: expected real numbers, got {z.dtype}")
    if not np.all(np.isfinite(z)):
        raise InputError("features: contain NaN or infinite values")
    return z
