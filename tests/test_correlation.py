"""FFT correlation of features with a filter bank: parity with direct correlation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import correlate as naive_correlate

from mcf_fast.errors import InputError
from mcf_fast.ops.correlation import SpectralBank, correlate_bank, iter_correlate, plan_blocks


def _data(rng, h, w, c, f, n):
    z = rng.random((h, w, c)).astype(np.float32)
    filt = rng.standard_normal((n, c, f, f)).astype(np.float32)
    return z, filt


@pytest.mark.parametrize("block", [0, 9, 16, 40])
def test_parity_with_direct_correlation(rng, block):
    z, w = _data(rng, 23, 31, 3, 5, 4)
    if block and block < 5:
        return
    got = correlate_bank(z, w, block=block)
    ref = naive_correlate(z, w)
    assert got.shape == (4, 23, 31)
    np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max())


def test_margin_extends_the_output(rng):
    z, w = _data(rng, 12, 10, 2, 7, 2)
    got = correlate_bank(z, w, margin=3, block=16)
    ref = naive_correlate(z, w, margin=3)
    assert got.shape == (2, 18, 16)
    np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max())


def test_image_smaller_than_filter(rng):
    z, w = _data(rng, 3, 4, 2, 9, 3)
    np.testing.assert_allclose(correlate_bank(z, w), naive_correlate(z, w), atol=2e-4 * 9 * 9 * 2)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 19),
    w=st.integers(1, 19),
    c=st.integers(1, 3),
    half=st.integers(0, 4),
    n=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_parity(h, w, c, half, n, seed):
    rng = np.random.default_rng(seed)
    z, filt = _data(rng, h, w, c, 2 * half + 1, n)
    got = correlate_bank(z, filt)
    ref = naive_correlate(z, filt)
    np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))


@settings(max_examples=10, deadline=None)
@given(v=st.floats(0, 5), h=st.integers(1, 15), w=st.integers(1, 15))
def test_constant_image_gives_constant_response(v, h, w):
    z = np.full((h, w, 2), v, np.float32)
    filt = np.arange(2 * 25, dtype=np.float32).reshape(1, 2, 5, 5) / 50
    got = correlate_bank(z, filt)
    np.testing.assert_allclose(got, v * filt.sum(), rtol=1e-4, atol=1e-4)


def test_blocks_tile_the_output_exactly(rng):
    z, w = _data(rng, 40, 33, 2, 7, 2)
    bank = SpectralBank(w, block=12)
    seen = np.zeros((40, 33), int)
    for y0, x0, r in iter_correlate(z, bank):
        seen[y0 : y0 + r.shape[1], x0 : x0 + r.shape[2]] += 1
    assert np.all(seen == 1)


def test_plan_respects_memory_cap():
    p = plan_blocks((1000, 1000), 101, 50, 20, max_spectra_bytes=256 * 2**20)
    assert 50 * 20 * p.block[0] * (p.block[1] // 2 + 1) * 8 <= 256 * 2**20
    assert p.valid[0] * p.counts[0] >= 1000 and p.valid[1] * p.counts[1] >= 1000


def test_bad_input(rng):
    z, w = _data(rng, 8, 8, 2, 3, 1)
    with pytest.raises(InputError, match="odd"):
        correlate_bank(z, np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(InputError, match="channels|expected an"):
        correlate_bank(z[:, :, :1], w)
    bad = z.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        correlate_bank(bad, w)
    with pytest.raises(InputError, match="block_size"):
        correlate_bank(z, w, block=2)
