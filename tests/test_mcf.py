"""The MCF loop: residual templates, rounds, checkpoints and resume, instance labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage
from seg_fakes import (  # noqa: F401
    BLUE,
    PURPLE,
    ColourDetector,
    disk_image,
    grid_centres,
    make_templates,
    one_torch_thread,
)

from mcf_fast.config import MCFConfig, SegmentationConfig
from mcf_fast.errors import DataError, InputError
from mcf_fast.framework.fit import MCF
from mcf_fast.framework.model import MCFModel
from mcf_fast.framework.residual import mask_residual, missed_nuclei
from mcf_fast.ops.instances import instance_labels, nucleus_table

SEG = SegmentationConfig(
    width=8,
    depth=2,
    crop_size=32,
    batch_size=4,
    steps=40,
    self_steps=10,
    lr=1e-2,
    residual_min_area=40,
    max_rounds=3,
    templates_per_round=3,
)
CONFIG = MCFConfig(segmentation=SEG)
PLANTED = (36, 36)


@pytest.fixture(scope="module")
def scene():
    centres = grid_centres(96, 96, 24, 12)
    colours = [BLUE if c == PLANTED else PURPLE for c in centres]
    img, lab = disk_image(96, 96, centres, 7, colours, seed=2)
    templates = make_templates(img, [(12, 12), (36, 60)])
    return img, lab, templates


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.sum(a & b) / max(a.sum() + b.sum(), 1)


def test_planted_nucleus_found_by_residual_becomes_template(scene):
    img, lab, templates = scene
    first = ColourDetector(templates).detect(img)
    assert not np.any(np.all(np.abs(first.centres - PLANTED) <= 2, axis=1))  # missed at first
    model = MCF(CONFIG, detector_cls=ColourDetector).fit([img], templates, progress=False)
    assert isinstance(model, MCFModel)
    added = model.history[0]["added"]
    assert len(added) == 1
    assert abs(added[0]["y"] - PLANTED[0]) <= 2 and abs(added[0]["x"] - PLANTED[1]) <= 2
    assert added[0]["image"] == "image0"
    # the next round's detector finds it, nothing more is added, the loop stops
    assert len(model.history) == 2 and model.history[1]["added"] == []
    assert len(model.templates) == 3
    det = model.detector.detect(img)
    assert np.any(np.all(np.abs(det.centres - PLANTED) <= 2, axis=1))
    pred = model.predict(img)
    assert pred.labels.dtype == np.int32 and pred.mask.dtype == bool
    assert np.array_equal(pred.mask, pred.labels > 0)
    assert pred.labels.max() == len(pred.table) == len(pred.centres) == 16
    assert _dice(pred.mask, lab > 0) > 0.85
    assert model.history[0]["seg_loss"]["last"] < model.history[0]["seg_loss"]["first"]


def test_resume_after_interruption_ends_like_uninterrupted(scene, tmp_path):
    img, _, templates = scene
    full = MCF(CONFIG, detector_cls=ColourDetector).fit(
        [img], templates, progress=False, checkpoint_dir=tmp_path / "a"
    )

    def stop(r, entry):
        if r == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MCF(CONFIG, detector_cls=ColourDetector).fit(
            [img], templates, progress=False, checkpoint_dir=tmp_path / "b", on_round=stop
        )
    assert (tmp_path / "b" / "state.json").is_file()
    resumed = MCF(CONFIG, detector_cls=ColourDetector).fit(
        [img], templates, progress=False, checkpoint_dir=tmp_path / "b", resume=True
    )
    assert len(resumed.history) == len(full.history) == 2
    assert [h["added"] for h in resumed.history] == [h["added"] for h in full.history]
    assert len(resumed.templates) == len(full.templates)
    for (ka, va), (kb, vb) in zip(
        full.net.state_dict().items(), resumed.net.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb), ka
    assert np.array_equal(full.predict(img).labels, resumed.predict(img).labels)
    # a checkpoint of another job is refused
    other = dataclasses.replace(CONFIG, segmentation=dataclasses.replace(SEG, seed=5))
    with pytest.raises(InputError, match="other images, templates or settings"):
        MCF(other, detector_cls=ColourDetector).fit(
            [img], templates, progress=False, checkpoint_dir=tmp_path / "b", resume=True
        )
    # prediction-time settings do not invalidate it: resuming re-predicts without training
    looser = dataclasses.replace(
        CONFIG,
        segmentation=dataclasses.replace(
            SEG, threshold=0.3, min_nucleus_area=5, instance_seeds="distance", tta_flips=True
        ),
    )
    seen = []
    again = MCF(looser, detector_cls=ColourDetector).fit(
        [img],
        templates,
        progress=False,
        checkpoint_dir=tmp_path / "b",
        resume=True,
        on_round=lambda r, e: seen.append(r),
    )
    assert seen == [] and again.config.segmentation.threshold == 0.3
    for va, vb in zip(full.net.state_dict().values(), again.net.state_dict().values(), strict=True):
        assert torch.equal(va, vb)


def test_no_network_ablation_predicts_from_pseudo_mask(scene):
    img, lab, templates = scene
    cfg = dataclasses.replace(CONFIG, segmentation=dataclasses.replace(SEG, use_network=False))
    model = MCF(cfg, detector_cls=ColourDetector).fit([img], templates, progress=False)
    assert model.net is None and len(model.history) == 1
    pred = model.predict(img)
    core = ColourDetector(templates).detect(img).pseudo_mask == 1
    assert np.array_equal(pred.mask, core)
    assert pred.labels.max() == 15  # the planted blue nucleus stays missed


class _Shift:
    """A stand-in stain normaliser: brightens every pixel by 10."""

    def transform(self, image):
        return np.clip(image.astype(np.int16) + 10, 0, 255).astype(np.uint8)

    def to_dict(self):
        return {"shift": 10}


def test_stain_normaliser_applies_to_images_and_templates(scene):
    img, _, templates = scene
    cfg = dataclasses.replace(
        CONFIG, segmentation=dataclasses.replace(SEG, steps=2, self_steps=0, max_rounds=1)
    )
    model = MCF(cfg, detector_cls=ColourDetector).fit(
        [img], templates, stain=_Shift(), progress=False
    )
    assert model.stain is not None
    t0 = model.templates[0]
    assert np.array_equal(t0.crop.astype(int), np.clip(templates[0].crop.astype(int) + 10, 0, 255))


def test_fit_rejects_bad_input(scene):
    img, _, templates = scene
    with pytest.raises(InputError, match="TemplateSet"):
        MCF(CONFIG, detector_cls=ColourDetector).fit([img], [1, 2])
    with pytest.raises(InputError, match="single"):
        MCF(CONFIG, detector_cls=ColourDetector).fit(img, templates)
    with pytest.raises(InputError, match="names"):
        MCF(CONFIG, detector_cls=ColourDetector).fit([img], templates, names=["a", "b"])


# ------------------------------------------------------------------------ residual
def test_mask_residual_is_eq7():
    p1 = np.array([[0.9, 0.1], [0.7, 0.6]])
    nuc = np.array([[1, 1], [0, -1]], np.int8)
    assert mask_residual(p1, nuc, t4=0.65).tolist() == [[False, True], [True, False]]


def test_missed_nuclei_filters():
    h = w = 80
    yy, xx = np.mgrid[:h, :w]
    p1 = np.zeros((h, w), np.float32)
    pm = np.zeros((h, w), np.int8)

    def disk(cy, cx, r, value=0.9):
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        p1[m] = value
        return m

    disk(20, 20, 6)  # missed: kept
    pm[disk(20, 55, 6)] = 0
    pm[18:22, 53:57] = 1  # overlaps the pseudo nucleus mask: dropped
    disk(55, 20, 6)  # holds a detected centre: dropped
    disk(60, 60, 2)  # too small: dropped
    p1[40:43, 30:70] = 0.9  # elongated bar: not nucleus-shaped
    p1[70:80, 40:50] = 0.9  # touches the border: dropped
    ring = ((yy - 40) ** 2 + (xx - 10) ** 2 <= 49) & ((yy - 40) ** 2 + (xx - 10) ** 2 >= 16)
    p1[ring] = 0.8  # not convex: dropped
    found = missed_nuclei(p1, pm, np.array([[55, 20]]), t4=0.65, min_area=40, max_area=200)
    assert [(d["y"], d["x"]) for d in found] == [(20, 20)]
    assert found[0]["area"] == int(np.sum((yy - 20) ** 2 + (xx - 20) ** 2 <= 36))
    assert found[0]["score"] == pytest.approx(0.9)


# ------------------------------------------------------------------------ instances
def _two_touching():
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 <= 100
    b = (yy - 20) ** 2 + (xx - 37) ** 2 <= 100
    return (a | b).astype(np.float32), a, b


def test_instances_split_touching_nuclei_at_centres():
    p, a, b = _two_touching()
    lab = instance_labels(p, centres=np.array([[20, 20], [20, 37]]))
    assert lab.max() == 2
    assert lab[20, 20] != lab[20, 37]
    assert np.array_equal(lab > 0, a | b)
    one = instance_labels(p, centres=np.array([[20, 20]]))
    assert one.max() == 1  # one centre, one nucleus
    # a component no centre falls in still becomes one instance
    none = instance_labels(p, centres=np.zeros((0, 2)))
    assert none.max() == 1


def test_instances_distance_seeds_split_and_min_area():
    p, a, b = _two_touching()
    p[2:4, 50:52] = 1.0  # a 4-pixel speck
    lab = instance_labels(p, seeds="distance", min_area=12)
    assert lab.max() == 2
    assert lab[2, 50] == 0
    assert set(np.unique(lab)) == {0, 1, 2}


def test_instances_hmaxima_split_touching_keep_one_and_drop_specks():
    p, a, b = _two_touching()
    p[2:4, 50:52] = 1.0  # a 4-pixel speck
    lab = instance_labels(p, seeds="hmaxima", min_area=12)
    assert set(np.unique(lab)) == {0, 1, 2}
    assert lab[20, 20] != lab[20, 37] and lab[2, 50] == 0
    # each half lands mostly in its own instance
    for half in (a & ~b, b & ~a):
        ids, counts = np.unique(lab[half], return_counts=True)
        assert counts.max() >= 0.95 * half.sum()
    # a single disc stays whole
    yy, xx = np.mgrid[:40, :60]
    disc = ((yy - 20) ** 2 + (xx - 25) ** 2 <= 120).astype(np.float32)
    assert instance_labels(disc, seeds="hmaxima").max() == 1
    # two unequal discs: split while the smaller one's peak stands h above the neck
    pair = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 100) | ((yy - 20) ** 2 + (xx - 35) ** 2 <= 64)
    counts = [
        instance_labels(pair.astype(np.float32), seeds="hmaxima", min_area=12, h=h).max()
        for h in (0.5, 1.0, 2.0, 5.0)
    ]
    assert counts == [2, 2, 1, 1]
    # a speck of min_area or more survives, as its own instance
    assert instance_labels(p, seeds="hmaxima", min_area=4).max() == 3


def test_instances_hmaxima_by_component_equals_whole_map_reconstruction(rng):
    from scipy import ndimage
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    yy, xx = np.mgrid[:160, :200]
    p = np.zeros((160, 200), np.float32)
    for cy, cx, r in zip(
        rng.uniform(10, 150, 40), rng.uniform(10, 190, 40), rng.uniform(4, 11, 40), strict=True
    ):
        p[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
    for h in (0.5, 1.0, 2.0):
        lab = instance_labels(p, seeds="hmaxima", min_area=20, h=h)
        # the reference: h-maxima of the whole smoothed distance map
        mask = ndimage.binary_fill_holes(p > 0.5)
        comps, _ = ndimage.label(mask)
        sizes = np.bincount(comps.ravel())
        mask &= sizes[comps] >= 20
        dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask), 1.0)
        peaks = h_maxima(np.where(mask, dist, 0.0), h).astype(bool) & mask
        markers, _ = ndimage.label(peaks, structure=np.ones((3, 3), bool))
        comps, n = ndimage.label(mask)
        seeded = np.zeros(n + 1, bool)
        seeded[comps[markers > 0]] = True
        for k in np.nonzero(~seeded[1:])[0] + 1:
            markers[ndimage.maximum_position(dist, comps, k)] = markers.max() + 1
        ref = watershed(-dist, markers, mask=mask)
        ref_sizes = np.bincount(ref.ravel())
        ref[ref_sizes[ref] < 20] = 0
        assert lab.max() == len(np.unique(ref)) - 1 >= 25
        # the same partition of the same pixels
        assert np.array_equal(lab > 0, ref > 0)
        pairs = np.unique(np.stack([lab[lab > 0], ref[ref > 0]]), axis=1)
        assert pairs.shape[1] == lab.max()


def test_instances_empty_and_bad_input():
    assert instance_labels(np.zeros((5, 5))).max() == 0
    with pytest.raises(InputError):
        instance_labels(np.zeros((2, 2, 2)))
    with pytest.raises(InputError):
        instance_labels(np.ones((4, 4)), centres=np.zeros((3, 3)))


def test_nucleus_table_matches_direct_computation():
    rng = np.random.default_rng(0)
    lab = ndimage.label(rng.random((30, 30)) > 0.7)[0].astype(np.int32)
    img = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    table = nucleus_table(lab, img)
    grey = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    for row in table:
        m = lab == row["label"]
        ys, xs = np.nonzero(m)
        assert row["area"] == m.sum()
        assert row["y"] == pytest.approx(ys.mean()) and row["x"] == pytest.approx(xs.mean())
        assert row["mean_intensity"] == pytest.approx(grey[m].mean())
    assert len(table) == lab.max()
    assert len(nucleus_table(np.zeros((3, 3), np.int32))) == 0


def test_pseudo_masks_without_background_are_an_error(scene, monkeypatch):
    img, _, templates = scene

    class NoBackground(ColourDetector):
        def detect(self, image):
            d = super().detect(image)
            pm = d.pseudo_mask.copy()
            pm[pm == 0] = -1
            return dataclasses.replace(d, pseudo_mask=pm)

    with pytest.raises(DataError, match="no confident background"):
        MCF(CONFIG, detector_cls=NoBackground).fit([img], templates, progress=False)


def test_history_records_pseudo_fractions(scene):
    img, _, templates = scene
    cfg = dataclasses.replace(
        CONFIG, segmentation=dataclasses.replace(SEG, steps=2, self_steps=0, max_rounds=1)
    )
    model = MCF(cfg, detector_cls=ColourDetector).fit([img], templates, progress=False)
    frac = model.history[0]["pseudo_fractions"]
    pm = ColourDetector(templates).detect(img).pseudo_mask
    assert frac["nucleus"] == pytest.approx(np.mean(pm == 1), abs=1e-5)
    assert sum(frac.values()) == pytest.approx(1.0, abs=1e-4)


def test_a_nucleus_is_not_added_twice(scene, monkeypatch):
    img, _, templates = scene

    class Stubborn(ColourDetector):
        """Never learns from added templates: the planted nucleus stays missed."""

        def __init__(self, ts, config=None, *, device="cpu"):
            super().__init__(ts, config, device=device)
            self.colours = self.colours[:2]

    model = MCF(CONFIG, detector_cls=Stubborn).fit([img], templates, progress=False)
    assert len(model.history[0]["added"]) == 1
    assert model.history[1]["added"] == [] and len(model.history) == 2
    assert len(model.templates) == 3
