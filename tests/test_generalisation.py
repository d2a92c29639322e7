"""Pseudo labels that teach "nucleus", stain augmentation, the template watershed, the
multi-dataset protocol and prediction without a detector pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_baselines import E_OD, H_OD, synthetic_he

from mcf_fast.config import DetectionConfig, MCFConfig, SegmentationConfig
from mcf_fast.errors import ConfigError, DataError
from mcf_fast.evaluation.baselines import watershed_params_from_templates
from mcf_fast.evaluation.protocol import deterministic_split, find_datasets, run_protocol
from mcf_fast.evaluation.quality import pseudo_label_quality
from mcf_fast.io.images import write_image
from mcf_fast.ops.pseudo import hematoxylin_levels, pseudo_mask, tissue_background
from mcf_fast.ops.tissue import white_space
from mcf_fast.segmentation.train import jitter_stain

DARK = [(30, 50), (30, 80), (30, 105), (60, 60), (95, 50)]
PALE = (85, 95)


def _tissue(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """White glass on the left, pink stroma of rising density elsewhere, dense red cells at
    the bottom right, dark nuclei and one vesicular nucleus (dark rim, pale interior);
    returns the image and the true nucleus mask."""
    rng = np.random.default_rng(seed)
    shape = (120, 120)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    h = np.full(shape, 0.04)
    h[:, 30:] = 0.5  # cytoplasm and stroma take up some hematoxylin too
    e = 0.4 + 0.5 * xx / shape[1]
    e[:, :30] = 0.02
    e[104:118, 60:118] = 1.5  # red blood cells: as dark as a nucleus in total, but red
    truth = np.zeros(shape, bool)
    for cy, cx in DARK:
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        h[d], e[d] = 1.2, 0.15
        truth |= d
    r2 = (yy - PALE[0]) ** 2 + (xx - PALE[1]) ** 2
    h[r2 <= 64], e[r2 <= 64] = 1.2, 0.15
    h[r2 <= 25], e[r2 <= 25] = 0.3, 0.08
    truth |= r2 <= 64
    h, e = h + rng.normal(0, 0.02, shape), e + rng.normal(0, 0.02, shape)
    stains = np.stack([H_OD / np.linalg.norm(H_OD), E_OD / np.linalg.norm(E_OD)])
    od = np.stack([np.clip(h, 0, None), np.clip(e, 0, None)], -1) @ stains
    return np.clip(np.round(255.0 * np.exp(-od)), 0, 255).astype(np.uint8), truth


def _labels(background: str, fill: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img, truth = _tissue()
    centres = np.array(DARK + [PALE], np.int64)
    pm = pseudo_mask(
        img,
        np.zeros(truth.shape, np.float32),
        centres,
        window=24,
        scores=np.ones(len(centres), np.float32),
        fg_posterior=0.8,
        background=background,
        fill_holes=fill,
    )
    return img, truth, pm


def _far(shape: tuple[int, int], points, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    far = np.ones(shape, bool)
    for cy, cx in points:
        far &= (yy - cy) ** 2 + (xx - cx) ** 2 > radius**2
    return far


def test_stroma_lands_in_confident_background():
    img, truth, pm = _labels("tissue", True)
    stroma = ~white_space(img) & ~truth & _far(truth.shape, DARK + [PALE], 2 * 0.35 * 24 + 1)
    assert stroma.sum() > 3000
    share = float((pm[stroma] == 0).mean())
    assert share > 0.9
    _, _, old = _labels("colour", True)  # mostly white space: much stroma stays unknown
    assert float((old[stroma] == 0).mean()) < share - 0.1
    assert (pm[white_space(img)] == 0).mean() > 0.95  # white space is background too
    assert (pm[truth] == 0).mean() < 0.02  # and hardly a nucleus pixel is background


def test_pale_nucleus_gets_nucleus_labels():
    _, truth, pm = _labels("tissue", True)
    yy, xx = np.mgrid[: truth.shape[0], : truth.shape[1]]
    inner = (yy - PALE[0]) ** 2 + (xx - PALE[1]) ** 2 <= 16
    assert (pm[inner] == 1).mean() > 0.9
    _, _, unfilled = _labels("tissue", False)
    assert (unfilled[inner] == 1).mean() < 0.2
    assert (pm[pm == 1] == 1).sum() and truth[pm == 1].mean() > 0.95


def test_hematoxylin_rule_does_not_follow_detections_on_stroma():
    # half the strongest detections sit on stroma: the colour model learnt from them
    # calls stroma nucleus, the stain channel does not
    img, truth = _tissue()
    false = [(20, 40), (50, 100), (75, 40), (100, 80), (15, 110), (60, 85)]
    centres = np.array(DARK + [PALE] + false, np.int64)
    scores = np.array([0.5] * (len(DARK) + 1) + [1.0] * len(false), np.float32)
    masks = {
        rule: pseudo_mask(
            img,
            np.zeros(truth.shape, np.float32),
            centres,
            window=24,
            scores=scores,
            fg_posterior=0.8,
            background="tissue",
            fill_holes=True,
            nucleus=rule,
        )
        for rule in ("posterior", "hematoxylin")
    }
    precision = {k: truth[m == 1].mean() for k, m in masks.items()}
    assert precision["hematoxylin"] > 0.95
    assert precision["posterior"] < precision["hematoxylin"] - 0.2
    assert (masks["hematoxylin"][truth] == 1).mean() > 0.8  # the nuclei, pale one too
    with pytest.raises(Exception, match="nucleus"):
        pseudo_mask(img, np.zeros(truth.shape, np.float32), centres, window=24, nucleus="dark")
    with pytest.raises(ConfigError, match="pseudo_nucleus"):
        DetectionConfig(pseudo_nucleus="dark")
    with pytest.raises(ConfigError, match="pseudo_h_offset"):
        DetectionConfig(pseudo_h_offset="high")


def test_hematoxylin_levels_ignore_glass_and_can_be_fixed():
    img, truth = _tissue()
    lo, hi, otsu = hematoxylin_levels(img)
    assert lo < hi and 0 < otsu < 1
    glassy = np.concatenate([img, np.full((120, 240, 3), 245, np.uint8)], axis=1)
    assert hematoxylin_levels([glassy])[2] == pytest.approx(otsu, abs=0.05)
    args = (img, np.zeros(truth.shape, np.float32), np.array(DARK, np.int64))
    own = pseudo_mask(*args, window=24, nucleus="hematoxylin")
    fixed = pseudo_mask(*args, window=24, nucleus="hematoxylin", h_levels=(lo, hi, otsu))
    np.testing.assert_array_equal(own, fixed)
    higher = pseudo_mask(*args, window=24, nucleus="hematoxylin", h_levels=(lo, hi, 0.99))
    assert (higher == 1).sum() < (own == 1).sum()


def test_tissue_background_needs_samples_and_a_valid_quantile():
    img, truth = _tissue()
    assert tissue_background(img, np.zeros(truth.shape, bool), ~truth) is None
    with pytest.raises(Exception, match="quantile"):
        tissue_background(img, truth, ~truth, quantile=1.5)
    with pytest.raises(ConfigError, match="pseudo_background"):
        DetectionConfig(pseudo_background="dark")


def test_pseudo_label_quality_counts():
    img = np.full((2, 4, 3), 120, np.uint8)
    img[1, 3] = 250  # white space
    gt = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    pm = np.array([[1, -1, 1, 0], [0, 0, -1, 0]], np.int8)
    q = pseudo_label_quality([pm], [gt], [img])
    assert q["nucleus_precision"] == 0.5 and q["nucleus_coverage"] == 0.5
    assert q["background_precision"] == 1.0
    assert q["tissue_background_coverage"] == pytest.approx(3 / 5)  # 3 of 5 tissue negatives
    assert q["confident"] == pytest.approx(6 / 8)


def test_jitter_stain():
    rng = np.random.default_rng(0)
    img, _ = _tissue()
    batch = np.stack([img, img])
    assert jitter_stain(batch, 0.0, rng) is batch
    assert np.abs(jitter_stain(batch, 1e-9, rng).astype(int) - batch).max() == 0
    out = jitter_stain(batch, 0.4, np.random.default_rng(1))
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert not np.array_equal(out[0], out[1])  # per-crop factors
    # white stays nearly white: the jitter acts on stain concentrations, not on RGB
    white = white_space(img)
    assert np.abs(out[0][white].astype(int) - img[white]).max() < 40
    again = jitter_stain(batch, 0.4, np.random.default_rng(1))
    assert np.array_equal(out, again)


def test_watershed_params_from_templates():
    from types import SimpleNamespace as T

    p = watershed_params_from_templates([T(size=24), T(size=40), T(size=30)])
    assert p.min_distance == 6 and p.min_size == 28 and p.seed_smoothing == 1.5
    with pytest.raises(ConfigError):
        watershed_params_from_templates([])


def test_deterministic_split():
    names = [f"n{i}" for i in range(9)]
    train, test = deterministic_split(names)
    assert len(test) == 3 and sorted(train + test) == names
    assert deterministic_split(list(reversed(names))) == (train, test)


SMALL_GRID = {"sigma": (1.0,), "threshold_offset": (0.0, 0.05), "min_size": (30,),
              "min_distance": (4, 6), "seed_smoothing": (1.0,)}  # fmt: skip

TINY = MCFConfig(
    segmentation=SegmentationConfig(
        width=4, depth=2, crop_size=64, batch_size=2, steps=3, self_steps=0,
        use_self_finetune=False, max_rounds=1, tile=128,
    )
)  # fmt: skip


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    for cy in range(18, 118, 30):
        for cx in range(18, 118, 30):
            centres.append((cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3)))
            radii.append(rng.uniform(6, 8.5))
    return synthetic_he((128, 128), centres, radii, seed=seed, noise=0.0)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> Path:
    """ROOT/alpha/{train,test}/... (official split) and ROOT/beta/{images,masks} (no split)."""
    root = tmp_path_factory.mktemp("two")
    for split, seeds in (("train", (1, 2)), ("test", (3,))):
        for s in seeds:
            img, lab = _scene(s)
            write_image(root / "alpha" / split / "images" / f"a{s}.png", img)
            write_image(root / "alpha" / split / "masks" / f"a{s}.png", lab.astype(np.uint16))
    for s in (5, 6, 7):
        img, lab = _scene(s)
        write_image(root / "beta" / "images" / f"b{s}.png", img)
        write_image(root / "beta" / "masks" / f"b{s}.png", lab.astype(np.uint16))
    (root / "notes").mkdir()  # not a dataset: ignored
    return root


def test_protocol_on_two_datasets(two_datasets, tmp_path):
    found = find_datasets(two_datasets)
    assert sorted(found) == ["alpha", "beta"]
    assert len(found["beta"][0].names) == 2 and len(found["beta"][1].names) == 1
    out = tmp_path / "proto"
    doc = run_protocol(
        two_datasets, out=out, seeds=(0,), n_templates=3, config=TINY,
        reference="alpha", progress=False, command="test", watershed_grid=SMALL_GRID,
    )  # fmt: skip
    ds = doc["datasets"]
    assert sorted(ds) == ["alpha", "beta"]
    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        assert sorted(ds[name]["seeds"]) == [0]
        r = ds[name]["seeds"][0]
        for method in ("mcf", "watershed_templates"):
            assert 0.0 <= r[method]["Dice"] <= 1.0
        assert set(r["pseudo_quality"]["round1"]) >= {"nucleus_precision", "confident"}
        assert ds[name]["reference"]["scores"]["Dice"] > 0.5
        assert sorted(ds[name]["transfer"][other]) == [0]
        assert (out / name / "seed0" / "model.mcf").exists()
        assert (out / name / "seed0" / "mcf").is_dir()
    # a second process fits one dataset with one more seed; what is there is kept
    stamp = (out / "alpha" / "seed0" / "result.json").stat().st_mtime_ns
    doc = run_protocol(two_datasets, out=out, seeds=(0, 1), n_templates=3, config=TINY,
                       datasets=["alpha"], progress=False, watershed_grid=SMALL_GRID)  # fmt: skip
    assert (out / "alpha" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    assert sorted(doc["datasets"]["alpha"]["seeds"]) == [0, 1]
    assert sorted(doc["datasets"]["alpha"]["transfer"]["beta"]) == [0, 1]
    md = (out / "protocol.md").read_text()
    assert "| alpha | MCF | 2 |" in md and "| beta | watershed from the templates | 1 |" in md
    assert "| alpha | beta | 2 |" in md and "| beta | alpha | 1 |" in md


def test_protocol_errors(two_datasets, tmp_path):
    with pytest.raises(DataError, match="no dataset"):
        find_datasets(tmp_path)
    with pytest.raises(ConfigError, match="gamma"):
        run_protocol(two_datasets, out=tmp_path / "o", datasets=["gamma"], config=TINY)


def test_predict_runs_the_detector_only_when_asked(two_datasets):
    from mcf_fast.detection.selection import select_templates
    from mcf_fast.framework.fit import MCF

    train = find_datasets(two_datasets)["alpha"][0]
    templates = select_templates(train, n=3, seed=0)
    model = MCF(TINY).fit([train.load_image(n) for n in train.names], templates, progress=False)
    img = train.load_image(train.names[0])
    calls = []
    detect = model.detector.detect
    model.detector.detect = lambda im: calls.append(1) or detect(im)
    plain = model.predict(img)
    assert calls == [] and plain.detected_centres.shape == (0, 2)
    full = model.predict(img, detect=True)
    assert calls == [1] and len(full.detected_centres) > 0
    assert np.array_equal(plain.labels, full.labels)
