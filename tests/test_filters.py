"""The filter bank of eq. (1), its crops and the zero-sum Gaussian G."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft
from naive import correlate as naive_correlate
from naive import correlate2d_zero

from mcf_fast.config import DetectionConfig
from mcf_fast.errors import FormatError, InputError
from mcf_fast.ops.correlation import correlate_bank
from mcf_fast.ops.filters import (
    FilterBank,
    build_filter_bank,
    channel_projection,
    correlation_filters,
    cosine_window,
    crop_sizes,
    fold_filter,
    projection_rank,
    scale_sizes,
    train_filter,
    zero_sum_gaussian,
)


def _feat(img: np.ndarray) -> np.ndarray:
    """A small stand-in feature map: RGB in [0, 1] and a darkness channel."""
    x = img.astype(np.float32) / 255
    return np.concatenate([x, 1 - x.mean(2, keepdims=True)], axis=2)


def test_sizes_are_odd_and_ordered():
    cfg = DetectionConfig()
    s = scale_sizes(30, cfg)
    assert len(s) == 5 and all(v % 2 == 1 for v in s) and s == sorted(s)
    assert crop_sizes(31, cfg) == [31, 23, 15]
    assert scale_sizes(30, DetectionConfig(use_mff=False)) == [31]
    assert crop_sizes(31, DetectionConfig(use_cff=False)) == [31]


def test_zero_sum_gaussian():
    g = zero_sum_gaussian(21, 3.0)
    assert g.shape == (21, 21) and abs(g.sum()) < 1e-12
    assert g[10, 10] == g.max() and g[0, 0] < 0
    gc = zero_sum_gaussian(21, 3.0, crop=11)
    assert gc.shape == (11, 11) and abs(gc.sum()) < 1e-12
    assert np.all(cosine_window(7) > 0)


def test_filter_reproduces_the_label(rng):
    x = rng.random((15, 15, 3))
    w = train_filter(x, lam=1e-8, label_sigma=0.1)
    # circular correlation of the windowed features with w is y (peak at the origin)
    xw = np.moveaxis(x, 2, 0) * cosine_window(15)[None]
    r = sfft.ifft2(np.sum(sfft.fft2(xw) * np.conj(sfft.fft2(w)), axis=0)).real
    d = np.arange(15) - 7
    y = np.outer(np.exp(-(d**2) / (2 * 1.5**2)), np.exp(-(d**2) / (2 * 1.5**2)))
    np.testing.assert_allclose(sfft.fftshift(r), y, atol=1e-5)


def test_filter_responds_most_at_the_template_centre(rng):
    img = rng.integers(0, 255, (41, 41, 3)).astype(np.uint8)
    crop = img[10:31, 10:31]
    # zero-mean features: no response to mere brightness, so the template's own place wins
    w = train_filter(_feat(crop) - 0.5, lam=10.0, label_sigma=0.1)
    r = correlate_bank(_feat(img) - 0.5, w[None].astype(np.float32))[0]
    assert np.unravel_index(np.argmax(r), r.shape) == (20, 20)


def test_fold_filter_equals_two_correlations(rng):
    z = rng.random((14, 13, 2))
    w = rng.standard_normal((2, 5, 5))
    g = zero_sum_gaussian(5, 1.2)
    two = correlate2d_zero(naive_correlate(z, w[None], margin=2)[0], g)[2:-2, 2:-2]
    one = naive_correlate(z, fold_filter(w, g)[None])[0]
    np.testing.assert_allclose(one, two, atol=1e-10)


def _bank(rng, **cfg):
    crops = [rng.integers(0, 255, (s, s, 3)).astype(np.uint8) for s in (13, 17)]
    config = DetectionConfig(**cfg)
    return build_filter_bank(crops, config, features=_feat), config


def test_bank_shapes(rng):
    bank, _ = _bank(rng)
    assert bank.sizes.shape == (2, 5) and bank.crops.shape == (2, 5, 3)
    for n in range(2):
        for k in range(5):
            s = bank.sizes[n, k]
            assert bank.filters[n][k].shape == (4, s, s)
            assert bank.filters[n][k].dtype == np.float32
    assert bank.max_size == bank.sizes.max()


@pytest.mark.parametrize("g_level", ["crop", "both", "none"])
def test_folded_filters_equal_the_sum_of_crop_filters(rng, g_level):
    bank, _ = _bank(rng)
    folded, lay_f, gk_f = correlation_filters(bank, g_level=g_level, fold_crops=True)
    general, lay_g, gk_g = correlation_filters(bank, g_level=g_level, fold_crops=False)
    assert lay_f == (2, 5, 1) and lay_g == (2, 5, 3)
    assert not gk_f.any() and gk_g.any() == (g_level == "both")
    z = rng.random((20, 22, 4)).astype(np.float32)
    rf = correlate_bank(z, folded).reshape(2, 5, 20, 22)
    rg = correlate_bank(z, general).reshape(2, 5, 3, 20, 22).sum(2)
    if g_level == "both":  # G_k still to apply to the general path: compare without it
        rf = correlate_bank(z, correlation_filters(bank, g_level="crop")[0]).reshape(2, 5, 20, 22)
    np.testing.assert_allclose(rf, rg, atol=1e-3 * np.abs(rg).max())


def test_bank_round_trip(tmp_path, rng):
    bank, _ = _bank(rng)
    p = bank.save(tmp_path / "b.npz")
    back = FilterBank.load(p)
    np.testing.assert_array_equal(back.sizes, bank.sizes)
    for a, b in zip(back.filters, bank.filters, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(InputError, match="no such"):
        FilterBank.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="not a filter-bank"):
        FilterBank.load(tmp_path / "bad.npz")


def test_bad_crops():
    with pytest.raises(InputError, match="empty"):
        build_filter_bank([], DetectionConfig(), features=_feat)
    with pytest.raises(InputError, match="square"):
        build_filter_bank([np.zeros((5, 6, 3), np.uint8)], DetectionConfig(), features=_feat)
    with pytest.raises(InputError, match="g_level"):
        correlation_filters(_bank(np.random.default_rng(0))[0], g_level="scale")


@pytest.mark.parametrize("moment", [False, True])
def test_full_rank_projection_is_the_original_correlation(rng, moment):
    w = rng.normal(size=(3, 5, 7, 7)).astype(np.float32)
    z = rng.random((20, 23, 5)).astype(np.float32)
    s = z.reshape(-1, 5).T.astype(np.float64) @ z.reshape(-1, 5) / 460 if moment else None
    proj, wp, energy = channel_projection(w, 5, second_moment=s)
    assert proj.shape == (5, 5) and wp.shape == (3, 5, 7, 7) and energy == pytest.approx(1.0)
    np.testing.assert_allclose(
        correlate_bank(z @ proj, wp), correlate_bank(z, w), rtol=1e-4, atol=1e-4
    )


def test_low_rank_projection_keeps_a_low_rank_bank(rng):
    # filters whose channels span 2 directions: rank 2 is exact, and keeps all the energy
    basis = rng.normal(size=(2, 6))
    w = np.einsum("fjab,jc->fcab", rng.normal(size=(4, 2, 5, 5)), basis).astype(np.float32)
    z = rng.random((16, 18, 6)).astype(np.float32)
    proj, wp, energy = channel_projection(w, 2)
    assert proj.shape == (6, 2) and wp.shape == (4, 2, 5, 5)
    assert energy == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(
        correlate_bank(z @ proj, wp), correlate_bank(z, w), rtol=1e-3, atol=1e-3
    )
    _, _, e1 = channel_projection(w, 1)
    assert 0 < e1 < 1


def test_projection_rank_rule():
    assert projection_rank(50, 20) == 20
    assert projection_rank(50, 20, rank=8) == 8
    assert projection_rank(50, 20, rank=40) == 20
    assert projection_rank(50, 20, max_filter_channels=1000) == 20
    assert projection_rank(80, 20, max_filter_channels=1000) == 12
    assert projection_rank(80, 20, rank=6, max_filter_channels=1000) == 6
    assert projection_rank(5000, 20, max_filter_channels=1000) == 1


def test_projection_bad_input(rng):
    w = rng.normal(size=(2, 3, 5, 5))
    with pytest.raises(InputError, match="rank = 0"):
        channel_projection(w, 0)
    with pytest.raises(InputError, match="second_moment"):
        channel_projection(w, 2, second_moment=np.eye(4))
