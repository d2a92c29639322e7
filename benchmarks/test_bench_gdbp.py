"""GDBP (eq. 4) on a 1000 x 1000 response-like map, beside the numpy reference.

The map is a smoothed, normalised darkness of a MoNuSeg tile: blob-shaped peaks on the
nuclei, like the fused correlation response.  The reference (tests/naive.py) evaluates
eq. (4)'s double sum with whole-array numpy slices of the edge-padded map.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from naive import numpy_gdbp  # noqa: E402

from mcf_fast.io.images import read_image  # noqa: E402
from mcf_fast.ops.gdbp import gdbp  # noqa: E402

_MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def response(monuseg: Path) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    img = read_image(sorted((monuseg / "test" / "images").glob("*.png"))[0])
    dark = gaussian_filter(255.0 - img.astype(np.float64).mean(axis=2), 3.0)
    s = (dark - dark.min()) / np.ptp(dark)
    assert s.shape == (1000, 1000)
    return s.astype(np.float32)


@pytest.mark.benchmark(group="gdbp, 1000x1000, P=3, Q=10")
def test_gdbp_fast(benchmark, response):
    gdbp(response[:64, :64])  # JIT warm-up, outside the timing
    d = benchmark.pedantic(gdbp, args=(response,), rounds=30, warmup_rounds=3)
    assert (d > 0).sum() > 100
    _MEDIANS["gdbp"] = benchmark.stats.stats.median


@pytest.mark.benchmark(group="gdbp, 1000x1000, P=3, Q=10")
def test_gdbp_numpy_reference(benchmark, response, capsys):
    ref = benchmark.pedantic(numpy_gdbp, args=(response,), rounds=3, warmup_rounds=0)
    d = gdbp(response)
    agree = np.isclose(d, ref, rtol=1e-4, atol=1e-5).mean()
    assert agree > 0.9999
    med = benchmark.stats.stats.median
    fast = _MEDIANS.get("gdbp")
    if fast is not None:
        benchmark.extra_info["fast_median_ms"] = fast * 1e3
        benchmark.extra_info["ratio"] = med / fast
        with capsys.disabled():
            print(
                f"\ngdbp: reference {med * 1e3:.1f} ms / fast {fast * 1e3:.1f} ms "
                f"= {med / fast:.1f}x (agreement {agree:.6f})"
            )
