"""Dense colour-name and HOG features against their float64 loop references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from naive import naive_color_names, naive_hog, numpy_color_names, numpy_hog
from scipy.io import savemat

from mcf_fast.config import DetectionConfig
from mcf_fast.errors import FormatError, InputError
from mcf_fast.ops.colornames import (
    COLOR_NAMES,
    builtin_color_names,
    color_index,
    load_color_names,
    resolve_color_names,
)
from mcf_fast.ops.features import (
    HOG_CLIP,
    HOG_EPS,
    color_name_features,
    extract_features,
    feature_channels,
    hog_features,
)


def _texture(rng, shape):
    """A smooth-ish RGB image with edges in every direction (uint8)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    base = 128 + 60 * np.sin(xx / 2.3 + yy / 3.1)[..., None] * np.array([1.0, 0.6, -0.8])
    noise = rng.normal(0, 25, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _random_table(rng):
    t = rng.random((32768, 11))
    return (t / t.sum(axis=1, keepdims=True)).astype(np.float32)


# ---- colour-name tables ------------------------------------------------------------------


def test_builtin_table_is_a_cached_distribution():
    t = builtin_color_names()
    assert t.shape == (32768, 11) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-5)
    assert (t >= 0).all()
    assert builtin_color_names() is t and not t.flags.writeable
    assert resolve_color_names(None) is t and resolve_color_names("builtin") is t


@pytest.mark.parametrize(
    "rgb, name",
    [
        ((0, 0, 0), "black"),
        ((255, 255, 255), "white"),
        ((128, 128, 128), "grey"),
        ((230, 20, 30), "red"),
        ((20, 160, 20), "green"),
        ((20, 40, 230), "blue"),
        ((255, 245, 10), "yellow"),
        ((255, 140, 0), "orange"),
        ((120, 40, 140), "purple"),
        ((255, 175, 205), "pink"),
        ((125, 72, 30), "brown"),
    ],
)
def test_builtin_table_names_basic_colours(rgb, name):
    row = builtin_color_names()[color_index(np.array(rgb, np.uint8))]
    assert COLOR_NAMES[int(np.argmax(row))] == name


def test_srgb_to_lab_matches_skimage(rng):
    from skimage.color import rgb2lab

    from mcf_fast.ops.colornames import srgb_to_lab

    x = rng.random((500, 3))
    # same formula; the white points differ in the 5th digit (ours maps white to a = b = 0)
    np.testing.assert_allclose(srgb_to_lab(x), rgb2lab(x[None])[0], atol=0.02)


def test_load_npy_and_mat(tmp_path, rng):
    table = _random_table(rng)
    np.save(tmp_path / "w2c.npy", table.astype(np.float64))
    savemat(tmp_path / "w2c.mat", {"w2c": table.astype(np.float64)})
    for name in ("w2c.npy", "w2c.mat"):
        got = load_color_names(tmp_path / name)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, table)
        np.testing.assert_array_equal(resolve_color_names(str(tmp_path / name)), table)
        assert load_color_names(tmp_path / name) is got  # cached per file
    # a rewritten file is read again
    np.save(tmp_path / "w2c.npy", table[::-1].copy())
    np.testing.assert_array_equal(load_color_names(tmp_path / "w2c.npy"), table[::-1])


def test_missing_table_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "w2c.mat"
    with pytest.raises(InputError, match="nowhere"):
        load_color_names(path)
    with pytest.raises(InputError, match="nowhere"):
        extract_features(np.zeros((4, 4, 3), np.uint8), DetectionConfig(color_names=str(path)))


def test_bad_tables(tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((100, 11)))
    with pytest.raises(FormatError, match=r"small\.npy.*shape"):
        load_color_names(tmp_path / "small.npy")
    savemat(tmp_path / "other.mat", {"x": np.zeros((3, 3))})
    with pytest.raises(FormatError, match=r"other\.mat.*w2c"):
        load_color_names(tmp_path / "other.mat")
    (tmp_path / "w2c.txt").write_text("1 2 3")
    with pytest.raises(FormatError, match=r"w2c\.txt"):
        load_color_names(tmp_path / "w2c.txt")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(FormatError, match=r"junk\.npy"):
        load_color_names(tmp_path / "junk.npy")
    with pytest.raises(FormatError, match="table"):
        color_name_features(np.zeros((2, 2, 3), np.uint8), table=np.zeros((32768, 10)))


# ---- colour-name features ----------------------------------------------------------------


def test_color_names_parity(rng):
    img = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    for table in (builtin_color_names(), _random_table(rng)):
        got = color_name_features(img, table=table)
        assert got.shape == (13, 17, 11) and got.dtype == np.float32
        np.testing.assert_array_equal(got, naive_color_names(img, table).astype(np.float32))
        np.testing.assert_array_equal(got, numpy_color_names(img, table))


@pytest.mark.data
def test_original_table_on_monuseg(monuseg, shared_data):
    from mcf_fast.io.images import read_image

    path = shared_data / "colornames" / "w2c.mat"
    table = load_color_names(path)
    img = read_image(sorted((monuseg / "test" / "images").glob("*.png"))[0])[:200, :300]
    got = extract_features(img, DetectionConfig(color_names=str(path)))
    np.testing.assert_array_equal(got[..., :11], numpy_color_names(img, table))
    np.testing.assert_allclose(got[..., 11:], numpy_hog(img), rtol=1e-4, atol=2e-6)


# ---- HOG ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, bins, cell", [((21, 26), 9, 4), ((17, 12), 6, 3), ((9, 31), 9, 1), ((11, 8), 4, 6)]
)
def test_hog_parity(rng, shape, bins, cell):
    img = _texture(rng, shape)
    got = hog_features(img, bins=bins, cell=cell)
    assert got.shape == shape + (bins,) and got.dtype == np.float32
    ref = naive_hog(img, bins=bins, cell=cell, eps=HOG_EPS, clip=HOG_CLIP)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-6)
    assert got.max() > 0.1


def test_numpy_hog_matches_naive(rng):
    img = _texture(rng, (15, 22))
    for bins, cell in ((9, 4), (5, 3)):
        np.testing.assert_allclose(
            numpy_hog(img, bins=bins, cell=cell),
            naive_hog(img, bins=bins, cell=cell),
            rtol=1e-10,
            atol=1e-12,
        )


def test_hog_orientation_of_an_edge():
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, 8:] = 200  # vertical edge: horizontal gradient, theta = 0 -> bins 0 and 8
    h = hog_features(img, bins=9, cell=4)
    hist = h[8, 8]
    assert hist[0] > 0 and hist[8] > 0 and np.allclose(hist[1:8], 0)
    np.testing.assert_allclose(hist[0], hist[8], rtol=1e-5)


images = arrays(
    np.uint8,
    st.tuples(st.integers(1, 9), st.integers(1, 9), st.just(3)),
    elements=st.integers(0, 255),
)


@settings(max_examples=40, deadline=None)
@given(img=images, bins=st.integers(1, 9), cell=st.integers(1, 5))
def test_property_hog_matches_reference_on_tiny_images(img, bins, cell):
    got = hog_features(img, bins=bins, cell=cell)
    ref = naive_hog(img, bins=bins, cell=cell, eps=HOG_EPS, clip=HOG_CLIP)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-6)
    assert ((got >= 0) & (got <= 2 * HOG_CLIP + 1e-6)).all()


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    colour=st.tuples(*[st.integers(0, 255)] * 3),
)
def test_property_constant_image(shape, colour):
    img = np.empty(shape + (3,), np.uint8)
    img[:] = colour
    f = extract_features(img)
    assert not f[..., 11:].any()
    np.testing.assert_allclose(f[..., :11].sum(axis=2), 1.0, atol=1e-5)
    assert (f[..., :11] == f[0, 0, :11]).all()


# ---- extract_features --------------------------------------------------------------------


def test_extract_layout_and_switches(rng):
    img = _texture(rng, (19, 23))
    table = _random_table(rng)
    full = extract_features(img, DetectionConfig(hog_bins=7, hog_cell=3), table=table)
    assert full.shape == (19, 23, 18) and full.flags.c_contiguous and full.dtype == np.float32
    np.testing.assert_array_equal(full[..., :11], color_name_features(img, table=table))
    np.testing.assert_array_equal(full[..., 11:], hog_features(img, bins=7, cell=3))
    cn_only = DetectionConfig(use_hog=False)
    hog_only = DetectionConfig(use_cn=False)
    assert feature_channels(cn_only) == 11 and feature_channels(hog_only) == 9
    assert feature_channels(None) == feature_channels(DetectionConfig()) == 20
    np.testing.assert_array_equal(extract_features(img, cn_only), color_name_features(img))
    np.testing.assert_array_equal(extract_features(img, hog_only), hog_features(img))


def test_documented_conversions(rng):
    gray = rng.integers(0, 256, (12, 14), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(extract_features(gray), extract_features(rgb))
    rgba = np.concatenate([rgb, np.zeros((12, 14, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(extract_features(rgba), extract_features(rgb))
    np.testing.assert_array_equal(extract_features(rgb / 255.0), extract_features(rgb))
    # 16-bit: scaled by 255/65535 (v * 257 maps back to v exactly)
    np.testing.assert_array_equal(
        extract_features(rgb.astype(np.uint16) * 257), extract_features(rgb)
    )


def test_bad_inputs():
    img = np.zeros((5, 5, 3))
    img[2, 2, 1] = np.nan
    for fn in (extract_features, color_name_features, hog_features):
        with pytest.raises(InputError, match="NaN"):
            fn(img)
    with pytest.raises(InputError, match="shape"):
        extract_features(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InputError, match="bins"):
        hog_features(np.zeros((4, 4, 3), np.uint8), bins=0)
    with pytest.raises(InputError, match="cell"):
        hog_features(np.zeros((4, 4, 3), np.uint8), cell=2.5)
    with pytest.raises(InputError, match="DetectionConfig"):
        extract_features(np.zeros((4, 4, 3), np.uint8), {"use_cn": True})


def test_atan_polynomial_accuracy():
    from mcf_fast.kernels.features import atan01

    x = np.linspace(0.0, 1.0, 10001, dtype=np.float32)
    got = np.array([atan01(v) for v in x[::50]])
    np.testing.assert_allclose(got, np.arctan(x[::50].astype(np.float64)), rtol=0, atol=3e-7)


@pytest.mark.parametrize("cell", [1, 3, 4, 6])
def test_tiled_equals_whole(rng, cell):
    from mcf_fast.ops.features import feature_halo

    cfg = DetectionConfig(hog_cell=cell)
    img = _texture(rng, (48, 53))
    whole = extract_features(img, cfg)
    halo = feature_halo(cfg)
    for r0, r1, c0, c1 in ((0, 20, 0, 25), (20, 48, 25, 53), (10, 30, 13, 40)):
        a0, a1 = max(r0 - halo, 0), min(r1 + halo, 48)
        b0, b1 = max(c0 - halo, 0), min(c1 + halo, 53)
        tile = extract_features(img[a0:a1, b0:b1], cfg)
        np.testing.assert_array_equal(
            tile[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0], whole[r0:r1, c0:c1]
        )
    # one pixel less context changes some values: the halo is tight
    r0, r1, c0, c1 = 20, 30, 20, 30
    tight = extract_features(img[r0 - halo + 1 : r1 + halo - 1, c0 - halo + 1 : c1 + halo - 1], cfg)
    assert not np.array_equal(
        tight[halo - 1 : -(halo - 1), halo - 1 : -(halo - 1)], whole[r0:r1, c0:c1]
    )
