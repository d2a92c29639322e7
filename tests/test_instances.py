"""The h-maxima split: the reconstruction kernel against scikit-image, real and synthetic masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import skimage_hmaxima_markers
from scipy import ndimage
from skimage.morphology import reconstruction
from skimage.segmentation import watershed

from mcf_fast.kernels.instances import (
    component_order,
    flood_kernel,
    reconstruct_dilation_kernel,
)
from mcf_fast.ops.instances import _relabel, fill_holes, hmaxima_markers, instance_labels


def reference_labels(probability, *, threshold=0.5, min_area=30, h=1.0):
    """instance_labels(seeds="hmaxima") with the scikit-image markers."""
    mask = ndimage.binary_fill_holes(probability > threshold)
    comps = _relabel(ndimage.label(mask)[0], min_area)
    mask = comps > 0
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask), 1.0)
    markers = skimage_hmaxima_markers(dist, comps, h=h)
    return _relabel(watershed(-dist, markers, mask=mask).astype(np.int32), min_area)


def discs(h, w, n, seed, rmin=3, rmax=14):
    """Probability map of n random, often overlapping discs (and some diagonal contacts)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    p = np.zeros((h, w))
    for _ in range(n):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(rmin, rmax)
        p[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 1.0
    return p


def split_inputs(probability, min_area=30):
    mask = ndimage.binary_fill_holes(probability > 0.5)
    comps = _relabel(ndimage.label(mask)[0], min_area)
    dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(comps > 0), 1.0)
    return dist, comps


def test_reconstruction_kernel_equals_skimage(rng):
    f = rng.random((40, 50))
    region = np.ones(f.shape, np.int32)
    g = f - rng.uniform(0.1, 0.5, f.shape)
    flat = f.ravel()
    order = np.argsort(-flat, kind="stable")
    out = np.zeros(f.size)
    work = np.empty(f.size, np.int64), np.empty(f.size, np.int64), np.empty(f.size)
    reconstruct_dilation_kernel(
        order, flat, g.ravel(), region.ravel(), f.shape[1], work[0], work[1], work[2], out
    )
    ref = reconstruction(g, f, method="dilation")
    np.testing.assert_array_equal(out.reshape(f.shape), ref)


def test_reconstruction_kernel_keeps_regions_apart():
    # two regions touching diagonally: the low one must not see the high one's marker
    f = np.array([[5.0, 0.0], [0.0, 1.0]])
    g = np.array([[4.0, 0.0], [0.0, 0.0]])
    region = np.array([[1, 0], [0, 2]], np.int32)
    order = np.array([0, 3], np.int64)
    out = np.full(4, -1.0)
    work = np.empty(4, np.int64), np.empty(4, np.int64), np.empty(4)
    reconstruct_dilation_kernel(order, f.ravel(), g.ravel(), region.ravel(), 2, *work, out)
    assert out.tolist() == [4.0, -1.0, -1.0, 0.0]


def test_component_order_equals_lexsort(rng):
    region = ndimage.label(rng.random((60, 70)) > 0.4)[0].astype(np.int32)
    f = np.round(rng.random(region.shape) * 8)  # many ties: row-major order must hold
    flat, r = f.ravel(), region.ravel()
    order, start = component_order(r, flat, int(r.max()))
    idx = np.flatnonzero(r)
    np.testing.assert_array_equal(order, idx[np.lexsort((-flat[idx], r[idx]))])
    assert start[0] == start[1] == 0 and start[-1] == idx.size
    np.testing.assert_array_equal(np.diff(start)[1:], np.bincount(r)[1:])


@pytest.mark.parametrize("seed", range(4))
def test_flood_kernel_equals_skimage_watershed(seed):
    rng = np.random.default_rng(seed)
    region = ndimage.label(ndimage.gaussian_filter(rng.random((80, 90)), 2) > 0.5)[0]
    region = region.astype(np.int32)
    f = ndimage.gaussian_filter(rng.random(region.shape), 3) + 1e-3 * rng.random(region.shape)
    markers = np.zeros(region.shape, np.int32)
    picks = rng.choice(np.flatnonzero(region), 25, replace=False)
    markers.ravel()[picks] = np.arange(1, 26)
    order, start = component_order(region.ravel(), f.ravel(), int(region.max()))
    got = markers.ravel().copy()
    flood_kernel(f.ravel(), got, region.ravel(), order, start, region.shape[1])
    want = watershed(-f, markers, mask=region > 0)
    np.testing.assert_array_equal(got.reshape(region.shape), want)
    assert len(np.unique(got)) > 10


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("h", [0.5, 1.0, 2.5])
def test_markers_equal_skimage_on_synthetic_masks(seed, h):
    p = discs(120, 130, 40, seed)
    dist, comps = split_inputs(p)
    np.testing.assert_array_equal(
        hmaxima_markers(dist, comps, h=h), skimage_hmaxima_markers(dist, comps, h=h)
    )


def test_edge_cases_equal_skimage():
    # a component that fills its whole box (the image), thin lines, one flat square
    full = np.ones((20, 24))
    lines = np.zeros((30, 30))
    lines[3, 2:28] = 1
    lines[10:12, 5:25] = 1
    lines[18:28, 18:28] = 1
    lines[14, 1] = lines[15, 2] = lines[16, 3] = 1
    for p in (full, lines):
        dist, comps = split_inputs(p, min_area=1)
        np.testing.assert_array_equal(
            hmaxima_markers(dist, comps, h=1.0), skimage_hmaxima_markers(dist, comps, h=1.0)
        )
    empty = np.zeros((5, 5))
    assert instance_labels(empty, seeds="hmaxima").max() == 0


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(8, 60),
    w=st.integers(8, 60),
    n=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
    hh=st.sampled_from([0.25, 1.0, 3.0]),
)
def test_hypothesis_labels_equal_skimage(h, w, n, seed, hh):
    p = discs(h, w, n, seed, rmin=1, rmax=8)
    np.testing.assert_array_equal(
        instance_labels(p, seeds="hmaxima", min_area=5, h=hh),
        reference_labels(p, min_area=5, h=hh),
    )


def test_labels_equal_skimage_on_monuseg_masks(monuseg):
    from mcf_fast.io.datasets import FolderDataset

    ds = FolderDataset(monuseg / "test", require_masks=True)
    for name in ds.names[:3]:
        gt = ds.load_mask(name)
        # a probability-like map: the binary truth, blurred (touching nuclei merge)
        p = ndimage.gaussian_filter((gt > 0).astype(np.float64), 1.5)
        got = instance_labels(p, seeds="hmaxima", min_area=50)
        np.testing.assert_array_equal(got, reference_labels(p, min_area=50))
        assert got.max() > 100


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    density=st.floats(0.2, 0.9),
    seed=st.integers(0, 2**31 - 1),
)
def test_fill_holes_equals_scipy(h, w, density, seed):
    m = np.random.default_rng(seed).random((h, w)) < density
    np.testing.assert_array_equal(fill_holes(m), ndimage.binary_fill_holes(m))


def test_fill_holes_rings():
    m = np.zeros((9, 9), bool)
    m[1:8, 1:8] = True
    m[3:6, 3:6] = False
    m[4, 4] = True  # an island inside the hole
    np.testing.assert_array_equal(fill_holes(m), ndimage.binary_fill_holes(m))
    assert fill_holes(m)[3:6, 3:6].all()
