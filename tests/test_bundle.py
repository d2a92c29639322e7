"""Model bundles: save, load, identical predictions, clear errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from seg_fakes import (  # noqa: F401
    PURPLE,
    ColourDetector,
    disk_image,
    grid_centres,
    make_templates,
    one_torch_thread,
)

from mcf_fast.config import MCFConfig, SegmentationConfig
from mcf_fast.errors import FormatError, InputError
from mcf_fast.framework.fit import MCF
from mcf_fast.framework.model import BUNDLE_VERSION, MCFModel

SEG = SegmentationConfig(
    width=8, depth=2, crop_size=32, batch_size=4, steps=15, self_steps=0, lr=1e-2, max_rounds=1
)


@pytest.fixture(scope="module")
def model_and_image():
    img, _ = disk_image(64, 64, grid_centres(64, 64, 20, 12), 6, [PURPLE] * 9, seed=3)
    templates = make_templates(img, [(12, 12)])
    model = MCF(MCFConfig(segmentation=SEG), detector_cls=ColourDetector).fit(
        [img], templates, progress=False
    )
    return model, img


class _Stain:
    def __init__(self, shift=5):
        self.shift = shift

    def transform(self, image):
        return np.clip(image.astype(np.int16) - self.shift, 0, 255).astype(np.uint8)

    def to_dict(self):
        return {"shift": self.shift}


def test_saved_and_loaded_bundle_predicts_identically(model_and_image, tmp_path):
    model, img = model_and_image
    path = model.save(tmp_path / "m.mcf")
    assert path.is_file()
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        doc = json.loads(zf.read("model.json"))
    assert {"model.json", "templates.json", "filter_bank.npz", "unet.pt"} <= names
    assert doc["format"] == "mcf_fast.model" and doc["format_version"] == BUNDLE_VERSION
    assert doc["network"]["width"] == 8
    loaded = MCFModel.load(path, detector_cls=ColourDetector)
    assert loaded.config == model.config
    assert len(loaded.templates) == len(model.templates)
    assert loaded.history == json.loads(json.dumps(model.history))
    a, b = model.predict(img), loaded.predict(img)
    assert np.array_equal(a.probability, b.probability)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.table, b.table)
    # overwriting an existing bundle works and leaves no temporary files behind
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mcf"]


def test_bundle_records_stain_state(model_and_image, tmp_path, monkeypatch):
    model, img = model_and_image
    stained = MCFModel(
        model.config,
        model.templates,
        model.detector,
        model.net,
        stain=_Stain(7),
        history=model.history,
    )
    path = stained.save(tmp_path / "s.mcf")
    import mcf_fast.ops.stain as stain_mod

    monkeypatch.setattr(stain_mod, "normalizer_from_dict", lambda d: _Stain(d["shift"]))
    loaded = MCFModel.load(path, detector_cls=ColourDetector)
    assert loaded.stain.shift == 7
    assert np.array_equal(loaded.predict(img).labels, stained.predict(img).labels)


def test_model_without_network_round_trips(model_and_image, tmp_path):
    model, img = model_and_image
    bare = MCFModel(model.config, model.templates, model.detector, None)
    loaded = MCFModel.load(bare.save(tmp_path / "bare.mcf"), detector_cls=ColourDetector)
    assert loaded.net is None
    assert np.array_equal(loaded.predict(img).labels, bare.predict(img).labels)


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "model.json":
                doc = json.loads(data)
                edit(doc)
                data = json.dumps(doc).encode()
            zout.writestr(name, data)


def test_unknown_version_is_a_clear_error(model_and_image, tmp_path):
    model, _ = model_and_image
    path = model.save(tmp_path / "m.mcf")
    future = tmp_path / "future.mcf"
    _rewrite(path, future, lambda d: d.update(format_version=99))
    with pytest.raises(FormatError, match=r"future\.mcf.*version 99"):
        MCFModel.load(future)
    alien = tmp_path / "alien.mcf"
    _rewrite(path, alien, lambda d: d.update(format="something.else"))
    with pytest.raises(FormatError, match=r"alien\.mcf: not a model bundle"):
        MCFModel.load(alien)


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "junk.mcf"
    junk.write_bytes(b"not a zip")
    with pytest.raises(FormatError, match=r"junk\.mcf"):
        MCFModel.load(junk)
    empty_zip = tmp_path / "empty.mcf"
    with zipfile.ZipFile(empty_zip, "w"):
        pass
    with pytest.raises(FormatError, match="no model.json"):
        MCFModel.load(empty_zip)
    with pytest.raises(InputError, match="no such model bundle"):
        MCFModel.load(tmp_path / "missing.mcf")


@pytest.mark.slow
@pytest.mark.data
def test_real_detector_fit_and_bundle(monuseg, tmp_path, monkeypatch):
    """The loop and the bundle with the real filter-bank detector on MoNuSeg crops."""
    from mcf_fast.detection.selection import select_templates
    from mcf_fast.io.datasets import FolderDataset

    train = FolderDataset(monuseg / "train")
    templates = select_templates(train, n=4, seed=0)
    images = [train.load_image(n)[:256, :256] for n in train.names[:2]]
    seg = SegmentationConfig(
        width=8, depth=3, crop_size=64, batch_size=4, steps=10, self_steps=5, max_rounds=1
    )
    model = MCF(MCFConfig(segmentation=seg)).fit(images, templates, progress=False)
    assert type(model.detector).__name__ == "Detector"
    test = FolderDataset(monuseg / "test").load_image(0)[:200, :300]
    a = model.predict(test)
    assert a.labels.shape == (200, 300)
    loaded = MCFModel.load(model.save(tmp_path / "real.mcf"))
    b = loaded.predict(test)
    assert np.array_equal(a.probability, b.probability)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.detected_centres, b.detected_centres)
