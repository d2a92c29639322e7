"""Fusion kernels (eqs. 2-3) against float64 loops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import fuse as naive_fuse
from naive import topk_sum

from mcf_fast.errors import InputError
from mcf_fast.ops.fusion import (
    accumulate_crops,
    accumulate_scales_templates,
    fuse_crops,
    fuse_responses,
    fuse_scales_templates,
    normalise_response,
)


@pytest.mark.parametrize("mode", ["topk", "mean"])
@pytest.mark.parametrize("t,hh", [(1, 1), (2, 3), (3, 3), (5, 2)])
def test_fuse_responses_matches_loops(rng, mode, t, hh):
    r = rng.standard_normal((4, 3, 3, 6, 7)).astype(np.float32)
    got = fuse_responses(r, top_t=t, top_h=hh, mode=mode)
    ref = naive_fuse(r, top_t=t, top_h=hh, mode=mode)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_scale_weights_match_loops(rng):
    r = rng.standard_normal((2, 2, 3, 9, 8)).astype(np.float32)
    g = [[rng.standard_normal((3, 3)) for _ in range(2)] for _ in range(2)]
    g = [[x - x.mean() for x in row] for row in g]
    got = fuse_responses(r, top_t=2, top_h=1, scale_weights=g)
    ref = naive_fuse(r, top_t=2, top_h=1, scale_weights=g)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_topk_with_t_at_least_n_is_a_sum(rng):
    r = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(fuse_crops(r, top_t=3), r.sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fuse_crops(r, top_t=7), r.sum(1), rtol=1e-5, atol=1e-5)


def test_non_contiguous_input(rng):
    big = rng.standard_normal((6, 10, 12)).astype(np.float32)
    view = big[:, 1:8, 2:9]
    got = fuse_scales_templates(view.reshape(2, 3, 7, 7), top_t=2, top_h=1)
    ref = naive_fuse(np.ascontiguousarray(view).reshape(2, 3, 1, 7, 7), top_t=2, top_h=1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 6),
    k=st.integers(1, 5),
    u=st.integers(1, 4),
    t=st.integers(1, 6),
    hh=st.integers(1, 7),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    mean=st.booleans(),
)
def test_hypothesis_fusion(n, k, u, t, hh, h, w, seed, mean):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((n, k, u, h, w)).astype(np.float32)
    mode = "mean" if mean else "topk"
    got = fuse_responses(r, top_t=t, top_h=hh, mode=mode)
    np.testing.assert_allclose(
        got, naive_fuse(r, top_t=t, top_h=hh, mode=mode), rtol=1e-5, atol=1e-5
    )


def test_ties_and_constant_maps():
    r = np.ones((3, 2, 2, 4, 4), np.float32)
    np.testing.assert_allclose(fuse_responses(r, top_t=1, top_h=2), 2.0)
    assert topk_sum([1, 1, 1], 2) == 2.0


def test_normalise():
    s = np.array([[1.0, 3.0], [2.0, 5.0]], np.float32)
    n = normalise_response(s)
    assert n.min() == 0 and n.max() == 1 and n.dtype == np.float32
    np.testing.assert_array_equal(normalise_response(np.full((3, 3), 7.0)), 0)
    with pytest.raises(InputError, match="NaN"):
        normalise_response(np.array([np.nan, 1.0]))


def test_bad_input(rng):
    r = rng.standard_normal((2, 2, 2, 3, 3)).astype(np.float32)
    with pytest.raises(InputError, match="top_t"):
        fuse_responses(r, top_t=0)
    with pytest.raises(InputError, match="mode"):
        fuse_responses(r, mode="median")
    with pytest.raises(InputError, match="expected"):
        fuse_responses(r[0])
    r[0, 0, 0, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        fuse_responses(r)


@pytest.mark.parametrize("mode", ["topk", "mean"])
def test_the_detectors_streaming_fusion_matches_loops(rng, mode):
    """The tiled form Detector.fused_response runs: two tiles of one map, then the rest."""
    n, k, u, h, w = 3, 2, 3, 6, 9
    r = rng.standard_normal((n, k, u, h, w)).astype(np.float32)
    offsets = np.array([[0, 0, h, 5], [0, 5, h, w - 5]], np.int64)  # (y0, x0, h, w)
    tiles = [r[..., :5], np.pad(r[..., 5:], [(0, 0)] * 4 + [(0, 1)])]  # same tile shape
    crops = np.empty((n * k, h, w), np.float32)
    batch = np.ascontiguousarray(np.stack([t.reshape(n * k * u, h, 5) for t in tiles]))
    accumulate_crops(batch, u, crops, offsets, top_t=2, mode=mode)
    fused = np.empty((h, w), np.float32)
    sk = np.ascontiguousarray(
        np.stack([crops[..., :5], np.pad(crops[..., 5:], [(0, 0), (0, 0), (0, 1)])])
    )
    accumulate_scales_templates(sk, n, k, fused, offsets, top_t=2, top_h=2, mode=mode)
    np.testing.assert_allclose(
        fused, naive_fuse(r, top_t=2, top_h=2, mode=mode), rtol=1e-5, atol=1e-5
    )
