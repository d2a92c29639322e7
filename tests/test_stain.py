"""Stain normalisation: the built-in Macenko method and the optional staintools path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcf_fast.errors import ConfigError, FormatError, InputError
from mcf_fast.ops.stain import (
    StainNormalizer,
    macenko_stain_matrix,
    normalizer_from_dict,
    optical_density,
    staintools_available,
)

# Ruifrok & Johnston's H and E optical-density vectors, and a bluer/pinker pair.
H_REF = np.array([0.65, 0.70, 0.29])
E_REF = np.array([0.07, 0.99, 0.11])
H_ALT = np.array([0.50, 0.80, 0.33])
E_ALT = np.array([0.20, 0.90, 0.40])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def two_stain_image(
    h: np.ndarray, e: np.ndarray, *, size: int = 96, seed: int = 0, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """An image rendered from two stains by Beer-Lambert; its left quarter is background.

    Returns the image and the true (H*W, 2) concentrations.
    """
    rng = np.random.default_rng(seed)
    n = size * size
    conc = np.zeros((n, 2))
    kind = rng.integers(0, 3, n)  # 0: H only, 1: E only, 2: both
    conc[kind == 0, 0] = rng.uniform(0.2, 1.5, (kind == 0).sum())
    conc[kind == 1, 1] = rng.uniform(0.2, 1.0, (kind == 1).sum())
    both = kind == 2
    conc[both] = rng.uniform(0.1, 0.8, (both.sum(), 2))
    conc *= scale
    conc.reshape(size, size, 2)[:, : size // 4] = 0.0  # white background
    stains = np.stack([_unit(h), _unit(e)])
    img = 255.0 * np.exp(-(conc @ stains))
    return np.clip(np.round(img), 0, 255).astype(np.uint8).reshape(size, size, 3), conc


def test_optical_density_white_is_zero_black_is_finite():
    img = np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    od = optical_density(img)
    assert od.shape == (2, 3)
    assert np.all(od[0] == 0) and np.all(np.isfinite(od[1])) and np.all(od[1] > 5)


def test_macenko_recovers_known_stains():
    img, _ = two_stain_image(H_REF, E_REF)
    stains = macenko_stain_matrix(img, angle_percentile=0.5)
    assert stains.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(stains, axis=1), 1.0, atol=1e-12)
    # hematoxylin first, each within two degrees of the truth
    assert stains[0] @ _unit(H_REF) > 0.9995
    assert stains[1] @ _unit(E_REF) > 0.9995


def test_transform_maps_stains_onto_reference():
    ref, _ = two_stain_image(H_REF, E_REF, seed=1)
    src, _ = two_stain_image(H_ALT, E_ALT, seed=2, scale=0.6)
    norm = StainNormalizer("macenko").fit(ref)
    out = norm.transform(src)
    assert out.shape == src.shape and out.dtype == np.uint8
    got = macenko_stain_matrix(out, angle_percentile=0.5)
    before = macenko_stain_matrix(src, angle_percentile=0.5)
    # the output carries the reference's stains, the input did not
    assert got[0] @ _unit(H_REF) > 0.995 and got[1] @ _unit(E_REF) > 0.995
    assert before[0] @ _unit(H_REF) < 0.99
    # and the reference's concentration range: the mean colour moves towards it
    err_before = np.abs(src.reshape(-1, 3).mean(0) - ref.reshape(-1, 3).mean(0)).sum()
    err_after = np.abs(out.reshape(-1, 3).mean(0) - ref.reshape(-1, 3).mean(0)).sum()
    assert err_after < 0.1 * err_before


def test_reference_onto_itself_is_nearly_identity():
    ref, _ = two_stain_image(H_REF, E_REF, seed=3)
    out = StainNormalizer("macenko").fit_transform(ref)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 0.5


def test_background_stays_bright():
    ref, _ = two_stain_image(H_REF, E_REF, seed=4)
    src, _ = two_stain_image(H_ALT, E_ALT, seed=5, scale=1.4)
    out = StainNormalizer("macenko").fit(ref).transform(src)
    background = out[:, : out.shape[1] // 4]
    assert background.min() >= 250


def test_round_trip_through_json():
    ref, _ = two_stain_image(H_REF, E_REF, seed=6)
    src, _ = two_stain_image(H_ALT, E_ALT, seed=7)
    norm = StainNormalizer("macenko", concentration_percentile=98.0).fit(ref)
    loaded = normalizer_from_dict(json.loads(json.dumps(norm.to_dict())))
    assert loaded.method == "macenko" and loaded.concentration_percentile == 98.0
    np.testing.assert_array_equal(loaded.stain_matrix, norm.stain_matrix)
    np.testing.assert_array_equal(loaded.max_concentrations, norm.max_concentrations)
    np.testing.assert_array_equal(loaded.transform(src), norm.transform(src))


def test_blank_images():
    white = np.full((32, 32, 3), 255, np.uint8)
    with pytest.raises(InputError, match="tissue"):
        StainNormalizer("macenko").fit(white)
    ref, _ = two_stain_image(H_REF, E_REF)
    out = StainNormalizer("macenko").fit(ref).transform(white)
    np.testing.assert_array_equal(out, white)


def test_errors():
    with pytest.raises(ConfigError, match="method"):
        StainNormalizer("reinhard")
    with pytest.raises(ConfigError, match="concentration_percentile"):
        StainNormalizer("macenko", concentration_percentile=10)
    with pytest.raises(InputError, match="fit"):
        StainNormalizer("macenko").transform(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="not fitted"):
        StainNormalizer("macenko").to_dict()
    ref, _ = two_stain_image(H_REF, E_REF)
    d = StainNormalizer("macenko").fit(ref).to_dict()
    with pytest.raises(FormatError, match="format_version"):
        normalizer_from_dict({**d, "format_version": 99})
    with pytest.raises(FormatError, match="stain_matrix"):
        normalizer_from_dict({**d, "stain_matrix": [[1, 0, 0]]})
    with pytest.raises(FormatError, match="method"):
        normalizer_from_dict({**d, "method": "magic"})


def test_fixed_source_from_the_same_image_equals_per_image():
    ref, _ = two_stain_image(H_REF, E_REF, seed=10)
    src, _ = two_stain_image(H_ALT, E_ALT, seed=11, scale=0.7)
    norm = StainNormalizer("macenko").fit(ref)
    state = json.loads(json.dumps(norm.source_state([src])))
    assert state["method"] == "macenko"
    assert np.shape(state["stain_matrix"]) == (2, 3)
    assert np.shape(state["max_concentrations"]) == (2,)
    np.testing.assert_array_equal(norm.transform(src, source=state), norm.transform(src))


def test_fixed_source_transforms_overlapping_crops_alike():
    ref, _ = two_stain_image(H_REF, E_REF, seed=12)
    faint, _ = two_stain_image(H_ALT, E_ALT, seed=13, scale=0.5)
    dark, _ = two_stain_image(H_ALT, E_ALT, seed=14, scale=1.5)
    slide = np.concatenate([faint, dark], axis=1)  # 96 x 192: a faint half, a dark half
    a, b = slide[:, :128], slide[:, 96:]  # overlap: slide columns 96..128
    norm = StainNormalizer("macenko").fit(ref)
    state = norm.source_state([a, b])
    fa, fb = norm.transform(a, source=state), norm.transform(b, source=state)
    np.testing.assert_array_equal(fa[:, 96:], fb[:, :32])
    # per-image estimates differ between the crops, and so does the shared part's output
    pa, pb = norm.transform(a), norm.transform(b)
    assert np.abs(pa[:, 96:].astype(int) - pb[:, :32].astype(int)).max() > 5
    # the fixed source still maps the stains onto the reference's
    got = macenko_stain_matrix(norm.transform(slide, source=state), angle_percentile=0.5)
    assert got[0] @ _unit(H_REF) > 0.99 and got[1] @ _unit(E_REF) > 0.99


def test_source_state_pools_pixels_and_subsamples():
    a, _ = two_stain_image(H_ALT, E_ALT, size=64, seed=15, scale=0.6)
    b, _ = two_stain_image(H_ALT, E_ALT, size=48, seed=16, scale=1.3)
    norm = StainNormalizer("macenko")  # the source side needs no reference
    pooled = np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)]).reshape(-1, 1, 3)
    assert norm.source_state([a, b]) == norm.source_state([pooled])
    full = norm.source_state([a, b])
    sub = norm.source_state((a, b), max_pixels=3000)
    assert sub == norm.source_state([a, b], max_pixels=3000)  # a fixed subsample
    assert sub != full
    for i in range(2):
        assert np.dot(sub["stain_matrix"][i], full["stain_matrix"][i]) > 0.99
    np.testing.assert_allclose(sub["max_concentrations"], full["max_concentrations"], rtol=0.1)


def test_fixed_source_on_a_blank_image_keeps_it_white():
    ref, _ = two_stain_image(H_REF, E_REF, seed=17)
    norm = StainNormalizer("macenko").fit(ref)
    white = np.full((16, 16, 3), 255, np.uint8)
    np.testing.assert_array_equal(norm.transform(white, source=norm.source_state([ref])), white)


def test_source_errors():
    ref, _ = two_stain_image(H_REF, E_REF, seed=18)
    norm = StainNormalizer("macenko").fit(ref)
    with pytest.raises(InputError, match="images: expected a sequence"):
        norm.source_state(ref)
    with pytest.raises(InputError, match="images: expected at least one"):
        norm.source_state([])
    with pytest.raises(InputError, match=r"images\[1\]"):
        norm.source_state([ref, np.zeros((4, 4, 5), np.uint8)])
    with pytest.raises(InputError, match="images: .*too little tissue"):
        norm.source_state([np.full((32, 32, 3), 255, np.uint8)])
    with pytest.raises(InputError, match="max_pixels"):
        norm.source_state([ref], max_pixels=10)
    state = norm.source_state([ref])
    with pytest.raises(InputError, match="source: expected a dict"):
        norm.transform(ref, source=[[1, 0, 0]])
    with pytest.raises(InputError, match="source: missing key 'max_concentrations'"):
        norm.transform(ref, source={"stain_matrix": state["stain_matrix"]})
    with pytest.raises(InputError, match=r"source: expected a finite \(2, 3\)"):
        norm.transform(ref, source={**state, "stain_matrix": [[1, 0, 0]]})
    with pytest.raises(InputError, match="positive"):
        norm.transform(ref, source={**state, "max_concentrations": [1.0, 0.0]})
    with pytest.raises(InputError, match="source: estimated with method 'vahadane'"):
        norm.transform(ref, source={**state, "method": "vahadane"})
    with pytest.raises(InputError, match="fit"):
        StainNormalizer("macenko").transform(ref, source=state)


def test_auto_picks_what_is_installed():
    expected = "vahadane" if staintools_available() else "macenko"
    assert StainNormalizer("auto").method == expected


@pytest.mark.skipif(staintools_available(), reason="staintools is installed")
def test_vahadane_without_staintools_is_a_clear_error():
    with pytest.raises(ConfigError, match="stain"):
        StainNormalizer("vahadane")


@pytest.mark.skipif(not staintools_available(), reason="optional [stain] extra not installed")
def test_vahadane_through_staintools():
    ref, _ = two_stain_image(H_REF, E_REF, size=64, seed=8)
    src, _ = two_stain_image(H_ALT, E_ALT, size=64, seed=9)
    norm = StainNormalizer("vahadane").fit(ref)
    assert norm.stain_matrix[0] @ _unit(H_REF) > 0.98
    out = norm.transform(src)
    assert out.shape == src.shape and out.dtype == np.uint8
    assert out[:, :16].min() >= 250
    loaded = normalizer_from_dict(json.loads(json.dumps(norm.to_dict())))
    assert loaded.method == "vahadane"
    np.testing.assert_array_equal(loaded.stain_matrix, norm.stain_matrix)


@pytest.mark.skipif(not staintools_available(), reason="optional [stain] extra not installed")
def test_vahadane_fixed_source():
    ref, _ = two_stain_image(H_REF, E_REF, size=64, seed=19)
    src, _ = two_stain_image(H_ALT, E_ALT, size=64, seed=20)
    norm = StainNormalizer("vahadane").fit(ref)
    state = json.loads(json.dumps(norm.source_state([src[:, :40], src[:, 24:]])))
    assert state["method"] == "vahadane" and np.shape(state["stain_matrix"]) == (2, 3)
    a = norm.transform(src[:, :40], source=state)
    b = norm.transform(src[:, 24:], source=state)
    np.testing.assert_array_equal(a[:, 24:], b[:, :16])
