"""The shape-aware target: distance maps from pseudo instances, and seeds from the predicted map."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from seg_fakes import (  # noqa: F401
    PURPLE,
    ColourDetector,
    disk_image,
    grid_centres,
    make_templates,
    one_torch_thread,
)

from mcf_fast.config import MCFConfig, SegmentationConfig
from mcf_fast.errors import ConfigError, InputError
from mcf_fast.framework.fit import MCF
from mcf_fast.framework.model import MCFModel
from mcf_fast.ops.instances import instance_labels, label_options, pseudo_instances
from mcf_fast.ops.shape import distance_target
from mcf_fast.segmentation.train import build_unet, predict_maps, predict_proba, train_unet


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# ------------------------------------------------------------------- distance_target
def test_distance_target_of_a_rectangle_peaks_at_its_centre_line():
    lab = np.zeros((7, 9), np.int32)
    lab[1:6, 1:8] = 1  # 5 x 7: the centre row is 3 from the top and bottom edges
    t = distance_target(lab, np.ones(lab.shape, bool))
    assert t.dtype == np.float32
    assert t[3, 4] == 1.0 and t.max() == 1.0
    np.testing.assert_allclose(t[3], [0, 1 / 3, 2 / 3, 1, 1, 1, 2 / 3, 1 / 3, 0])
    assert np.all(t[lab == 0] == 0)


def test_distance_target_falls_to_the_contact_of_touching_nuclei():
    lab = np.zeros((12, 21), np.int32)
    lab[1:11, 1:10] = 1
    lab[1:11, 10:20] = 2  # touches nucleus 1 along column 9/10
    t = distance_target(lab, np.ones(lab.shape, bool))
    row = t[5]
    # each nucleus rises to 1 inside and comes down at the shared edge, not across it
    assert row[9] < 0.25 and row[10] < 0.25
    assert row[1:10].max() == 1.0 and row[10:20].max() == 1.0
    assert row[5] > row[9] and row[15] > row[10]
    # a nucleus' map depends on its own outline only: alone, nucleus 2 looks the same
    alone = distance_target(np.where(lab == 2, 1, 0), np.ones(lab.shape, bool))
    np.testing.assert_array_equal(alone[lab == 2], t[lab == 2])


def test_distance_target_marks_unknown_pixels_and_counts_the_image_edge_as_outside():
    lab = np.zeros((8, 8), np.int32)
    lab[0:4, 0:4] = 1  # in the corner: the image edge is its edge
    known = np.ones(lab.shape, bool)
    known[6:, 6:] = False
    known[0, 0] = False  # inside a nucleus, a distance is still known
    t = distance_target(lab, known)
    assert np.all(np.isnan(t[6:, 6:]))
    assert np.isfinite(t[0, 0]) and t[0, 0] == pytest.approx(0.5)
    assert t[1, 1] == 1.0


def test_distance_target_rejects_mismatched_input():
    with pytest.raises(InputError, match="one shape"):
        distance_target(np.zeros((4, 4), np.int32), np.ones((4, 5), bool))


# ------------------------------------------------------------------ pseudo_instances
def test_pseudo_instances_split_at_the_detected_centres():
    shape = (40, 60)
    a, b = _disc(shape, (20, 20), 10), _disc(shape, (20, 37), 10)
    pm = np.full(shape, -1, np.int8)
    pm[~(a | b)] = 0
    pm[a | b] = 1
    pm[20, 20] = -1  # an unknown pixel inside stays out of every instance
    lab = pseudo_instances(pm, np.array([[20, 21], [20, 37]]))
    assert lab.dtype == np.int32 and lab.max() == 2
    assert lab[20, 25] != lab[20, 33] and lab[20, 25] > 0 and lab[20, 33] > 0
    assert lab[20, 20] == 0
    assert np.array_equal(lab > 0, pm == 1)
    # without centres a component is one nucleus
    assert pseudo_instances(pm, np.zeros((0, 2))).max() == 1


# --------------------------------------------------------------- seeds from the map
def _cone(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.clip(1 - np.hypot(yy - centre[0], xx - centre[1]) / radius, 0, 1)


def _blob_of_two():
    """Two discs overlapping so much that the mask's own distance transform has one peak,
    and a predicted map with a peak in each."""
    shape = (40, 60)
    mask = _disc(shape, (20, 24), 10) | _disc(shape, (20, 29), 10)
    energy = np.maximum(_cone(shape, (20, 24), 6), _cone(shape, (20, 29), 6))
    return mask.astype(np.float32), energy * mask


def test_shape_seeds_split_what_the_mask_distance_cannot():
    p, energy = _blob_of_two()
    assert instance_labels(p, seeds="hmaxima", h=1.0).max() == 1
    lab = instance_labels(p, seeds="shape", energy=energy, h=0.2)
    assert lab.max() == 2
    assert lab[20, 22] != lab[20, 35]
    assert np.array_equal(lab > 0, p > 0.5)
    # a single-peaked map keeps the blob whole
    single = np.clip(
        1 - np.hypot(*np.mgrid[:40, :60] - np.array([20, 28])[:, None, None]) / 15, 0, 1
    )
    assert instance_labels(p, seeds="shape", energy=single, h=0.2).max() == 1


def test_shape_seeds_need_an_energy_map():
    p, _ = _blob_of_two()
    with pytest.raises(InputError, match="energy map"):
        instance_labels(p, seeds="shape")
    with pytest.raises(InputError, match="energy map"):
        instance_labels(p, seeds="shape", energy=np.zeros((3, 3)))


def test_config_ties_shape_seeds_to_the_distance_target():
    with pytest.raises(ConfigError, match="instance_seeds"):
        SegmentationConfig(instance_seeds="shape")
    with pytest.raises(ConfigError, match="target"):
        SegmentationConfig(target="star")
    seg = SegmentationConfig(target="distance", instance_seeds="shape", shape_h=0.3)
    assert label_options(seg)["seeds"] == "shape" and label_options(seg)["h"] == 0.3
    fallback = label_options(seg, energy=False)
    assert fallback["seeds"] == "hmaxima" and fallback["h"] == seg.instance_h


# ------------------------------------------------------------------------- training
SEG = SegmentationConfig(
    width=8,
    depth=2,
    crop_size=32,
    batch_size=4,
    steps=60,
    lr=1e-2,
    max_rounds=1,
    use_self_finetune=False,
    target="distance",
    instance_seeds="shape",
)


def test_distance_channel_learns_the_target(one_torch_thread):  # noqa: F811 (fixture)
    centres = grid_centres(64, 64, 20, 12)
    img, lab = disk_image(64, 64, centres, 7, [PURPLE] * len(centres), seed=1)
    mask = (lab > 0).astype(np.int8)
    dist = distance_target(lab, np.ones(lab.shape, bool))
    log: list[float] = []
    net = train_unet([img], [mask], SEG, distances=[dist], progress=False, log=log)
    assert net.hparams["n_classes"] == 3
    p, d = predict_maps(net, img)
    assert d is not None and d.shape == p.shape == img.shape[:2]
    np.testing.assert_array_equal(p, predict_proba(net, img))
    # the learnt map is high at the centres and low between the nuclei
    inside = np.array([d[y, x] for y, x in centres])
    assert inside.mean() > 0.5 and d[lab == 0].mean() < 0.2
    assert np.mean(log[-10:]) < np.mean(log[:10])


def test_distance_targets_need_a_distance_channel():
    img = np.full((32, 32, 3), 200, np.uint8)
    mask = np.zeros((32, 32), np.int8)
    binary = dataclasses.replace(SEG, target="binary", instance_seeds="hmaxima")
    net = build_unet(binary)
    assert predict_maps(net, img)[1] is None
    with pytest.raises(ConfigError, match="distance channel"):
        train_unet([img], [mask], binary, net=net, distances=[np.zeros((32, 32))], steps=1)
    with pytest.raises(InputError, match="distances"):
        train_unet([img], [mask], SEG, distances=[np.zeros((32, 31))], steps=1)


def test_fit_with_the_distance_target_predicts_and_reloads(tmp_path):
    centres = grid_centres(96, 96, 24, 12)
    img, lab = disk_image(96, 96, centres, 7, [PURPLE] * len(centres), seed=2)
    templates = make_templates(img, [(12, 12), (36, 60)])
    model = MCF(MCFConfig(segmentation=SEG), detector_cls=ColourDetector).fit(
        [img], templates, progress=False
    )
    assert model.net.hparams["n_classes"] == 3
    pred = model.predict(img)
    assert pred.labels.max() == len(centres)
    inter = np.sum(pred.mask & (lab > 0))
    assert 2 * inter / (pred.mask.sum() + (lab > 0).sum()) > 0.8
    path = model.save(tmp_path / "m.mcf")
    again = MCFModel.load(path, detector_cls=ColourDetector)
    assert again.net.hparams["n_classes"] == 3
    np.testing.assert_array_equal(again.predict(img).labels, pred.labels)
    assert torch.equal(
        next(iter(model.net.state_dict().values())), next(iter(again.net.state_dict().values()))
    )
