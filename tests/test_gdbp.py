"""GDBP, eq. (4): the O(Q) kernel against the literal double sum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from naive import naive_gdbp, naive_gdbp_directions, numpy_gdbp
from scipy.ndimage import gaussian_filter

from mcf_fast.errors import InputError
from mcf_fast.ops.gdbp import gdbp, gdbp_weights


def _smooth_map(rng, shape, sigma=2.0):
    s = gaussian_filter(rng.random(shape), sigma)
    return ((s - s.min()) / (np.ptp(s) + 1e-12)).astype(np.float32)


@pytest.mark.parametrize("p, q", [(1, 2), (3, 10), (2, 7), (4, 5)])
def test_weights_count_pairs(p, q):
    expected = np.zeros(q + 1)
    for pp in range(1, p + 1):
        for qq in range(pp + 1, q + 1):
            expected[pp] += 1
            expected[qq] -= 1
    np.testing.assert_array_equal(gdbp_weights(p=p, q=q), expected)
    assert gdbp_weights(p=p, q=q).sum() == 0


@pytest.mark.parametrize(
    "shape, p, q", [((23, 31), 3, 10), ((40, 17), 2, 5), ((5, 6), 3, 10), ((1, 30), 1, 4)]
)
def test_parity_with_literal_double_sum(rng, shape, p, q):
    s = _smooth_map(rng, shape)
    d = naive_gdbp_directions(s, p=p, q=q)
    ref = np.where((d > 0).all(axis=0), d.sum(axis=0), 0.0)
    got = gdbp(s, p=p, q=q)
    assert got.dtype == np.float32 and got.shape == shape
    # where some d_r is within rounding of 0 (but not exactly 0, as on a clamped border)
    # the float32 kernel may decide either way
    clear = ~((np.abs(d) <= 1e-5) & (d != 0)).any(axis=0)
    assert clear.mean() > 0.95
    np.testing.assert_allclose(got[clear], ref[clear], rtol=1e-4, atol=1e-5)
    if min(shape) >= 15:
        assert (got > 0).sum() > 0


def test_numpy_reference_matches_naive(rng):
    s = _smooth_map(rng, (19, 24))
    np.testing.assert_allclose(numpy_gdbp(s), naive_gdbp(s), rtol=1e-12, atol=1e-12)


grid_maps = arrays(
    np.float32,
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    elements=st.integers(0, 16).map(lambda k: k / 16.0),
)


@settings(max_examples=60, deadline=None)
@given(s=grid_maps, p=st.integers(1, 4), extra=st.integers(1, 8))
def test_property_exact_on_grid_values(s, p, extra):
    # multiples of 1/16 times integer weights add exactly in float32: no rounding at all
    q = p + extra
    np.testing.assert_array_equal(gdbp(s, p=p, q=q), naive_gdbp(s, p=p, q=q).astype(np.float32))


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 15), st.integers(1, 15)),
    value=st.floats(-1e3, 1e3, allow_nan=False, width=32),
)
def test_property_constant_map_is_zero(shape, value):
    assert not gdbp(np.full(shape, value, np.float32)).any()


def test_one_pixel_and_border_are_zero(rng):
    assert gdbp(np.ones((1, 1), np.float32))[0, 0] == 0
    d = gdbp(_smooth_map(rng, (30, 30)))
    # on the border the outward profile is flat (clamped), so some d_r is 0
    assert not d[0].any() and not d[-1].any() and not d[:, 0].any() and not d[:, -1].any()


def test_peak_at_blob_centre_and_symmetries(rng):
    yy, xx = np.mgrid[:41, :41]
    blob = np.exp(-((yy - 20.0) ** 2 + (xx - 20.0) ** 2) / 30.0).astype(np.float32)
    d = gdbp(blob)
    assert np.unravel_index(np.argmax(d), d.shape) == (20, 20)
    assert d[20, 20] > 0 and d[5, 5] == 0
    s = _smooth_map(rng, (21, 26))
    d = gdbp(s)
    np.testing.assert_allclose(gdbp(s.T.copy()), d.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gdbp(s[::-1].copy()), d[::-1], rtol=1e-5, atol=1e-5)


def test_accepts_float64_and_integers():
    yy, xx = np.mgrid[:25, :25]
    s = np.round(100 * np.exp(-((yy - 12.0) ** 2 + (xx - 12.0) ** 2) / 30.0))
    np.testing.assert_array_equal(gdbp(s), gdbp(s.astype(np.float32)))
    assert gdbp(s.astype(np.int64)).max() > 0


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), "NaN or infinite"),
        (np.zeros((3, 3, 3)), "2-D"),
        (np.zeros((3, 3), complex), "real"),
        (np.zeros((3, 3), bool), "real"),
    ],
)
def test_bad_maps(bad, match):
    with pytest.raises(InputError, match=match):
        gdbp(bad)


@pytest.mark.parametrize("p, q, match", [(3, 3, "smaller"), (0, 4, "p"), (2, 1.5, "q")])
def test_bad_radii(p, q, match):
    with pytest.raises(InputError, match=match):
        gdbp(np.zeros((4, 4), np.float32), p=p, q=q)


def test_tiled_equals_whole(rng):
    from mcf_fast.ops.gdbp import gdbp_halo

    s = _smooth_map(rng, (60, 57))
    whole = gdbp(s, p=3, q=10)
    halo = gdbp_halo(q=10)
    for r0, r1, c0, c1 in ((0, 30, 0, 30), (30, 60, 20, 57), (15, 45, 12, 44)):
        a0, a1 = max(r0 - halo, 0), min(r1 + halo, 60)
        b0, b1 = max(c0 - halo, 0), min(c1 + halo, 57)
        tile = gdbp(s[a0:a1, b0:b1], p=3, q=10)
        np.testing.assert_array_equal(
            tile[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0], whole[r0:r1, c0:c1]
        )
