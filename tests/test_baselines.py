"""The classical watershed baseline on synthetic H&E-like images (and MoNuSeg when present)."""

from __future__ import annotations

import numpy as np
import pytest

from mcf_fast.errors import ConfigError, InputError
from mcf_fast.evaluation.baselines import (
    WatershedParams,
    _drop_small,
    hematoxylin,
    nuclei_foreground,
    tune_watershed,
    watershed_nuclei,
)

H_OD = np.array([0.65, 0.70, 0.29])
E_OD = np.array([0.07, 0.99, 0.11])


def synthetic_he(
    shape: tuple[int, int],
    centres: list[tuple[float, float]],
    radii: list[float],
    *,
    seed: int = 0,
    noise: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like image of disk nuclei and its instance labels.

    Hematoxylin-rich disks on an eosin background, rendered by Beer-Lambert with a little
    noise; where disks overlap, the earlier disk keeps the pixel in the labels.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, ((cy, cx), r) in enumerate(zip(centres, radii, strict=True), start=1):
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        labels[disk & (labels == 0)] = i
    h = np.where(labels > 0, 1.2, 0.05) + rng.normal(0, noise, shape)
    e = np.where(labels > 0, 0.2, 0.45) + rng.normal(0, noise, shape)
    stains = np.stack([H_OD / np.linalg.norm(H_OD), E_OD / np.linalg.norm(E_OD)])
    od = np.stack([np.clip(h, 0, None), np.clip(e, 0, None)], -1) @ stains
    img = np.clip(np.round(255.0 * np.exp(-od)), 0, 255).astype(np.uint8)
    return img, labels


def grid_scene(seed: int = 0, shape=(96, 128)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    for cy in range(16, shape[0] - 8, 30):
        for cx in range(16, shape[1] - 8, 30):
            centres.append((cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3)))
            radii.append(rng.uniform(6, 9))
    return synthetic_he(shape, centres, radii, seed=seed)


def _best_iou(pred: np.ndarray, gt: np.ndarray, i: int) -> float:
    g = gt == i
    ids, counts = np.unique(pred[g], return_counts=True)
    counts = counts[ids > 0]
    ids = ids[ids > 0]
    if ids.size == 0:
        return 0.0
    p = pred == ids[np.argmax(counts)]
    return float((g & p).sum() / (g | p).sum())


def test_separate_nuclei_are_found_one_each():
    img, gt = grid_scene()
    labels = watershed_nuclei(img)
    assert labels.shape == gt.shape and labels.dtype == np.int32
    assert labels.max() == gt.max()
    assert set(np.unique(labels)) == set(range(labels.max() + 1))  # dense ids
    assert min(_best_iou(labels, gt, i) for i in range(1, gt.max() + 1)) > 0.75


def test_touching_nuclei_are_split():
    img, gt = synthetic_he((64, 80), [(32, 28), (32, 50)], [11, 11])
    fg = nuclei_foreground(hematoxylin(img, sigma=1.0))
    from scipy import ndimage as ndi

    assert ndi.label(fg)[1] == 1  # one connected blob
    labels = watershed_nuclei(img, params=WatershedParams(min_distance=6))
    assert labels.max() == 2
    assert labels[32, 24] != labels[32, 54] and labels[32, 24] > 0 and labels[32, 54] > 0


def test_blank_and_constant_images_give_no_nuclei():
    for value in (0, 128, 255):
        img = np.full((40, 50, 3), value, np.uint8)
        assert watershed_nuclei(img).max() == 0


def test_tiny_image_and_min_size():
    img, _ = synthetic_he((9, 11), [(4, 5)], [2])
    assert watershed_nuclei(img).shape == (9, 11)
    big, gt = grid_scene()
    smallest = np.bincount(gt.ravel())[1:].min()
    assert watershed_nuclei(big, params=WatershedParams(min_size=int(smallest) + 400)).max() == 0


def test_drop_small_renumbers_in_raster_order():
    lab = np.array([[5, 5, 0, 2], [0, 0, 0, 2], [7, 0, 9, 9]], np.int32)
    out = _drop_small(lab, 2)
    np.testing.assert_array_equal(out, [[1, 1, 0, 2], [0, 0, 0, 2], [0, 0, 3, 3]])


def test_params_validation_and_round_trip():
    p = WatershedParams(sigma=2.0, min_distance=4)
    assert WatershedParams.from_dict(p.to_dict()) == p
    with pytest.raises(ConfigError, match="min_distance"):
        WatershedParams(min_distance=0)
    with pytest.raises(ConfigError, match="threshold_offset"):
        WatershedParams(threshold_offset=2.0)
    with pytest.raises(ConfigError, match="unknown"):
        WatershedParams.from_dict({"nope": 1})
    with pytest.raises(InputError):
        watershed_nuclei(np.zeros((4, 4, 2), np.uint8))


def _dice(preds, gts) -> float:
    inter = sum(int(((p > 0) & (g > 0)).sum()) for p, g in zip(preds, gts, strict=True))
    total = sum(int((p > 0).sum() + (g > 0).sum()) for p, g in zip(preds, gts, strict=True))
    return 2 * inter / max(total, 1)


def _count_objective(preds, gts) -> float:
    """Dice minus the relative error of the nucleus count (needs splitting and a good mask)."""
    n_pred = sum(int(p.max()) for p in preds)
    n_true = sum(int(g.max()) for g in gts)
    return _dice(preds, gts) - abs(n_pred - n_true) / n_true


def test_tuning_is_deterministic_and_improves():
    scenes = [grid_scene(seed=s) for s in (1, 2)]
    touching = synthetic_he((64, 80), [(32, 28), (32, 50)], [11, 11], seed=3)
    imgs = [s[0] for s in scenes] + [touching[0]]
    gts = [s[1] for s in scenes] + [touching[1]]
    grid = {"threshold_offset": (-0.1, 0.0, 0.1), "min_distance": (3, 6, 30)}
    start = WatershedParams(min_distance=30, threshold_offset=0.1)
    a = tune_watershed(imgs, gts, grid=grid, start=start, objective=_count_objective, crop=None)
    b = tune_watershed(imgs, gts, grid=grid, start=start, objective=_count_objective, crop=None)
    assert a.params == b.params and a.score == b.score and a.history == b.history
    start_score = a.history[0][1]
    assert a.history[0][0] == start.to_dict()
    assert a.score > start_score
    assert a.score == max(s for _, s in a.history)
    assert a.params.min_distance < 30  # far-apart seeds cannot split the touching pair
    tuned = [watershed_nuclei(im, params=a.params) for im in imgs]
    assert _count_objective(tuned, gts) == pytest.approx(a.score)


def test_tuning_errors():
    img, gt = grid_scene()
    with pytest.raises(ConfigError, match="unknown parameter"):
        tune_watershed([img], [gt], grid={"radius": (1, 2)}, objective=_count_objective)
    with pytest.raises(ConfigError, match="empty"):
        tune_watershed([img], [gt], grid={"sigma": ()}, objective=_count_objective)
    with pytest.raises(InputError, match="mask"):
        tune_watershed([img], [gt[:-1]], objective=_count_objective, crop=None)
    with pytest.raises(InputError, match="differ in number"):
        tune_watershed([img, img], [gt], objective=_count_objective)
    with pytest.raises(InputError, match="no images"):
        tune_watershed([], [], objective=_count_objective)


@pytest.mark.data
def test_default_params_on_one_monuseg_image(monuseg):
    from mcf_fast.io.images import read_image, read_labels

    name = sorted((monuseg / "test" / "images").glob("*.png"))[0]
    img = read_image(name)
    gt = read_labels(monuseg / "test" / "masks" / name.name)
    labels = watershed_nuclei(img)
    assert 0.5 < labels.max() / gt.max() < 2.0
    assert _dice([labels], [gt]) > 0.6
