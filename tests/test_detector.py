"""The Detector: end to end on a small synthetic image, path equivalences, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from mcf_fast.config import DetectionConfig
from mcf_fast.detection.detector import Detection, Detector
from mcf_fast.errors import ConfigError, FormatError, InputError
from mcf_fast.io.templates import TemplateSet

CENTRES = [(14, 15), (15, 46), (40, 26), (44, 60), (66, 14), (70, 44), (20, 75), (72, 78)]


def synthetic(h: int = 90, w: int = 92, seed: int = 0) -> np.ndarray:
    """Pink background with dark purple discs (radius 5) at CENTRES."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float64)
    img[:] = (236, 190, 214)
    yy, xx = np.mgrid[:h, :w]
    for y, x in CENTRES:
        d2 = (yy - y) ** 2 + (xx - x) ** 2
        img[d2 <= 25] = (92, 60, 140)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


SMALL = dict(n_scales=3, scale_range=(0.9, 1.1), min_score=0.5, peak_distance=4)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic()


@pytest.fixture(scope="module")
def templates(image) -> TemplateSet:
    return TemplateSet.from_points(image, [CENTRES[0], CENTRES[3]], size=21, image_name="syn")


@pytest.fixture(scope="module")
def detector(templates) -> Detector:
    return Detector(templates, DetectionConfig(**SMALL))


def _matched(centres: np.ndarray, radius: float = 3.0) -> int:
    return sum(
        bool(len(centres)) and np.min(np.hypot(*(centres - np.array(c)).T)) <= radius
        for c in CENTRES
    )


def test_detects_every_disc(detector, image):
    r = detector.detect(image)
    assert isinstance(r, Detection)
    assert r.centres.dtype == np.int64 and r.centres.shape[1] == 2
    assert r.scores.dtype == np.float32 and r.scores.shape == (len(r.centres),)
    assert r.response.shape == image.shape[:2] and r.response.dtype == np.float32
    assert 0.0 <= r.response.min() and r.response.max() == pytest.approx(1.0)
    assert r.gdbp.shape == image.shape[:2] and r.gdbp.dtype == np.float32
    assert r.pseudo_mask.dtype == np.int8 and set(np.unique(r.pseudo_mask)) <= {-1, 0, 1}
    assert _matched(r.centres) == len(CENTRES)
    assert len(r.centres) <= len(CENTRES) + 2
    # the pseudo mask labels disc pixels nucleus and far pixels background
    for y, x in CENTRES:
        assert r.pseudo_mask[y, x] == 1
    assert r.pseudo_mask[30, 2] in (0, -1)
    assert (r.pseudo_mask == 0).sum() > 0.3 * r.pseudo_mask.size


@pytest.mark.parametrize("g_level", ["crop", "both"])
def test_folded_path_equals_general_path(templates, image, g_level):
    cfg = DetectionConfig(**SMALL, g_level=g_level)
    fast = Detector(templates, cfg)
    slow = Detector(
        templates, DetectionConfig(**SMALL, g_level=g_level, fold_crops=False), _bank=fast.bank
    )
    assert fast._folded and not slow._folded
    a = fast.fused_response(fast._features(image))
    b = slow.fused_response(slow._features(image))
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())


def test_paper_rule_and_ablations_run(templates, image):
    for extra in (
        dict(pseudo_rule="paper"),
        dict(use_cff=False),
        dict(use_mff=False),
        dict(top_h=1),
        dict(fusion="mean"),
        dict(use_gdbp=False),
        dict(top_t=2),
    ):
        r = Detector(templates, DetectionConfig(**{**SMALL, **extra})).detect(image)
        assert _matched(r.centres, 4.0) >= len(CENTRES) - 2, extra


def test_input_conversions(detector, image):
    base = detector.detect(image)
    gray = image.mean(2).astype(np.uint8)
    assert detector.detect(gray).response.shape == gray.shape
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], 2)
    np.testing.assert_array_equal(detector.detect(rgba).centres, base.centres)
    u16 = image.astype(np.uint16) * 257
    np.testing.assert_array_equal(detector.detect(u16).centres, base.centres)
    f = image.astype(np.float64) / 255
    np.testing.assert_array_equal(detector.detect(f).centres, base.centres)


def test_filters_are_built_on_first_use(detector, image):
    fresh = Detector(detector.templates, detector.config, _bank=detector.bank)
    assert "_engine" not in vars(fresh)  # loading a bundle does not pay for the filters
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = fresh.no_such_thing
    assert "_engine" not in vars(fresh)
    np.testing.assert_array_equal(fresh.detect(image).centres, detector.detect(image).centres)
    assert fresh.max_filter_size == detector.max_filter_size and "_engine" in vars(fresh)


def test_tiny_image_is_padded(detector, image):
    assert detector.max_filter_size > 10
    r = detector.detect(image[:7, :5])
    assert r.response.shape == (7, 5)


def test_bad_input(detector, templates, image, tmp_path):
    bad = image.astype(np.float64) / 255
    bad[3, 3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        detector.detect(bad)
    with pytest.raises(InputError, match="empty"):
        Detector([])
    with pytest.raises(InputError, match="TemplateSet"):
        Detector("templates.json")
    with pytest.raises(InputError, match="device"):
        Detector(templates, device="tpu")
    with pytest.raises(InputError):
        Detector(templates, DetectionConfig(color_names=str(tmp_path / "w2c.npy")))
    with pytest.raises(ConfigError):
        DetectionConfig(pseudo_rule="magic")


def test_bank_save_load_and_with_templates(detector, templates, image, tmp_path):
    p = detector.save_bank(tmp_path / "bank.npz")
    back = Detector.load(templates, p, detector.config)
    np.testing.assert_array_equal(back.detect(image).centres, detector.detect(image).centres)
    with pytest.raises(FormatError, match="does not match"):
        Detector.load(templates, p, DetectionConfig())
    more = templates.add(
        TemplateSet.from_points(image, [CENTRES[5]], size=19, image_name="syn").templates
    )
    d2 = detector.with_templates(more)
    assert len(d2.templates) == 3 and d2.bank.filters[0] is detector.bank.filters[0]
    fresh = Detector(more, detector.config)
    np.testing.assert_allclose(d2.bank.filters[2][1], fresh.bank.filters[2][1])
    assert _matched(d2.detect(image).centres) == len(CENTRES)


# ---------------------------------------------------------------- centres and pseudo masks
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from naive import local_maxima  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from mcf_fast.ops.pseudo import find_centres, gate_centres, pseudo_mask  # noqa: E402


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 30), w=st.integers(1, 30), r=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_find_centres_are_separated_local_maxima(h, w, r, seed):
    rng = np.random.default_rng(seed)
    d = ndi.gaussian_filter(rng.random((h, w)), 1.5).astype(np.float32)
    s = rng.random((h, w)).astype(np.float32)
    centres, scores = find_centres(s, gdbp=d, min_distance=r, min_score=0.3)
    naive = set(local_maxima(d, s, min_distance=r, min_score=0.3))
    got = [tuple(c) for c in centres.tolist()]
    assert set(got) <= naive
    assert np.all(scores >= 0.3) and np.all(np.diff(scores) <= 0)
    for i in range(len(got)):
        for j in range(i + 1, len(got)):
            assert max(abs(got[i][0] - got[j][0]), abs(got[i][1] - got[j][1])) > r
    # every naive maximum is kept or lies within r of a kept centre
    for y, x in naive:
        assert any(max(abs(y - a), abs(x - b)) <= r for a, b in got)


def test_find_centres_constant_and_empty():
    c, s = find_centres(np.zeros((5, 5), np.float32))
    assert c.shape == (0, 2) and s.shape == (0,)
    with pytest.raises(InputError, match="2-D"):
        find_centres(np.zeros((2, 2, 2)))


def test_paper_pseudo_rule():
    s = np.full((20, 20), 0.2, np.float32)
    s[8:13, 8:13] = 0.9
    s[10, 10] = 1.0
    m = pseudo_mask(
        np.zeros((20, 20, 3), np.uint8),
        s,
        np.array([[10, 10]]),
        window=9,
        rule="paper",
        t1=0.4,
        ratio=0.8,
    )
    assert np.all(m[8:13, 8:13] == 1)
    assert m[0, 0] == 0 and (m == -1).sum() == 0


def test_gated_pseudo_rule_and_gate(image):
    cents = np.array(CENTRES)
    s = np.zeros(image.shape[:2], np.float32)
    m = pseudo_mask(image, s, cents, window=21, scores=np.ones(len(cents)))
    disc = np.zeros(image.shape[:2], bool)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    for y, x in CENTRES:
        disc |= (yy - y) ** 2 + (xx - x) ** 2 <= 25
    assert (m == 1).sum() > 0.7 * disc.sum()
    assert np.mean(disc[m == 1]) > 0.9  # nucleus labels lie on the discs
    assert not np.any(disc[m == 0])  # background labels never do
    post = np.zeros(image.shape[:2], np.float32)
    post[disc] = 1.0
    extra = np.vstack([cents, [[30, 2]]])
    kept, _ = gate_centres(extra, np.ones(len(extra), np.float32), post, threshold=0.5)
    assert len(kept) == len(CENTRES)


def test_channel_projection_options(templates, image, detector):
    full = detector.fused_response(detector.features(image))
    same = Detector(templates, DetectionConfig(**SMALL, channel_rank=20), _bank=detector.bank)
    assert same._projection is None and same.projection_energy == 1.0
    low = Detector(templates, DetectionConfig(**SMALL, channel_rank=6), _bank=detector.bank)
    assert low._projection.shape == (20, 6) and low._engine.n_channels == 6
    assert 0.9 < low.projection_energy < 1.0
    s = low.fused_response(low.features(image))
    assert s.shape == full.shape
    # close to the full bank's response, and still finds every disc
    assert np.corrcoef(s.ravel(), full.ravel())[0, 1] > 0.95
    assert _matched(low.detect(image).centres) == len(CENTRES)
    # the bound on filters x channels: 2 templates x 3 scales = 6 filters, 60 -> rank 10
    capped = Detector(
        templates, DetectionConfig(**SMALL, max_filter_channels=60), _bank=detector.bank
    )
    assert capped._engine.n_channels == 10
    with pytest.raises(InputError, match="features"):
        low.fused_response(np.zeros((10, 10, 3), np.float32))


@pytest.mark.parametrize("field", ["channel_rank", "max_filter_channels"])
def test_projection_fields_validated(field):
    with pytest.raises(ConfigError, match=field):
        DetectionConfig(**{field: -1})
