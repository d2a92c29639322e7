"""Filter-bank correlation, fusion and full detection on a 1000 x 1000 MoNuSeg tile.

10 templates (``select_templates(train, n=10, seed=0)``), K = 5 scales, U = 3 crops, so
150 crop filters.  The reference is a plain numpy/scipy implementation of the same
computation: for every one of the 150 crop filters and every feature channel, an FFT of
the channel and of the filter at the full padded size, the channel sum, the correlation
with the zero-sum Gaussian ``G_{k,u}`` (scipy ``fftconvolve``), then the top-T / top-H
fusion with ``numpy.sort``.  Features, GDBP, centres and pseudo mask are shared (cheap and
timed in their own benchmarks), so the ratio is the one of the correlation + fusion core
plus the common tail.

    python -m pytest benchmarks/test_bench_detect.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft
from scipy.signal import fftconvolve

from mcf_fast.config import DetectionConfig
from mcf_fast.io.images import read_image
from mcf_fast.ops.correlation import pad_features
from mcf_fast.ops.filters import centre_crop
from mcf_fast.ops.fusion import normalise_response
from mcf_fast.ops.gdbp import gdbp
from mcf_fast.ops.pseudo import find_centres, pseudo_mask


@pytest.fixture(scope="module")
def tile(monuseg):
    names = sorted((monuseg / "test" / "images").glob("*.png"))
    return read_image(names[0])


@pytest.fixture(scope="module")
def detector(monuseg, tile):
    from mcf_fast.detection.detector import Detector
    from mcf_fast.detection.selection import select_templates

    det = Detector(select_templates(monuseg / "train", n=10, seed=0), DetectionConfig())
    det.detect(tile)  # JIT, FFT plans, cached spectra and buffers
    return det


def reference_fused(features: np.ndarray, det) -> np.ndarray:
    """Plain per-filter, per-channel FFT correlation and numpy fusion (float32)."""
    cfg = det.config
    bank = det.bank
    n_t, n_k, n_u = bank.crops.shape
    h, w, n_c = features.shape
    maps = np.empty((n_t, n_k, n_u, h, w), np.float32)
    for n in range(n_t):
        for k in range(n_k):
            wk = bank.filters[n][k]
            for u in range(n_u):
                hu = centre_crop(wk, int(bank.crops[n, k, u]))
                g = bank.g_weight(n, k, u)
                m = hu.shape[-1] // 2 + g.shape[0] // 2
                p = pad_features(features, m)
                shape = p.shape[1:]
                r = np.zeros(shape, np.float64)
                for c in range(n_c):
                    zc = sfft.rfft2(p[c])
                    fc = np.zeros(shape, np.float32)
                    fc[: hu.shape[-1], : hu.shape[-1]] = hu[c]
                    r += sfft.irfft2(zc * np.conj(sfft.rfft2(fc)), s=shape)
                e = g.shape[0] // 2
                r = r[: h + 2 * e, : w + 2 * e]  # centred response, e beyond each edge
                maps[n, k, u] = fftconvolve(r, g[::-1, ::-1], mode="valid")
    t = cfg.top_t
    sk = np.sort(maps, axis=2)[:, :, ::-1][:, :, :t].sum(2)
    sn = np.sort(sk, axis=1)[:, ::-1][:, :t].sum(1)
    return np.sort(sn, axis=0)[::-1][: cfg.top_h].sum(0)


def reference_detect(image: np.ndarray, det):
    cfg = det.config
    s = normalise_response(reference_fused(det._features(image), det))
    d = gdbp(s, p=cfg.gdbp_p, q=cfg.gdbp_q)
    centres, _ = find_centres(s, gdbp=d, min_distance=cfg.peak_distance, min_score=cfg.min_score)
    pseudo_mask(image, s, centres, window=det._window, rule=cfg.pseudo_rule, t1=cfg.t1)
    return s


def test_detect(benchmark, detector, tile):
    benchmark.group = "detect 1000x1000, 10 templates x 5 scales x 3 crops"
    r = benchmark.pedantic(detector.detect, args=(tile,), rounds=5, warmup_rounds=1)
    assert len(r.centres) > 100


def test_fused_response(benchmark, detector, tile):
    benchmark.group = "correlation + fusion 1000x1000"
    feats = detector._features(tile)
    benchmark.pedantic(detector.fused_response, args=(feats,), rounds=5, warmup_rounds=1)


def test_detect_reference(benchmark, detector, tile):
    benchmark.group = "detect 1000x1000, 10 templates x 5 scales x 3 crops"
    s = benchmark.pedantic(reference_detect, args=(tile, detector), rounds=1, iterations=1)
    fast = detector.detect(tile).response
    np.testing.assert_allclose(fast, s, atol=2e-3)
