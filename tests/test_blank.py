"""Images without tissue give no nuclei, from the detector and from a fitted model."""

from __future__ import annotations

import numpy as np
import pytest

from mcf_fast.config import MCFConfig
from mcf_fast.detection.detector import Detector
from mcf_fast.framework.model import MCFModel
from mcf_fast.io.templates import TemplateSet
from mcf_fast.ops.tissue import is_blank
from mcf_fast.segmentation.unet import UNet
from tests.test_detector import CENTRES, synthetic

FLAT = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "glass": (242, 240, 244),
    "pink": (232, 196, 222),
}


def _flat(colour, noise: float = 0.0, shape=(512, 512)) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((*shape, 3), colour, np.float64) + rng.normal(0, noise, (*shape, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def detector():
    img = synthetic(64, 70)
    return Detector(TemplateSet.from_points(img, [CENTRES[0], CENTRES[2]], size=17, image_name="a"))


def test_is_blank():
    for colour in FLAT.values():
        assert is_blank(_flat(colour))
        assert is_blank(_flat(colour, noise=3.0))
    assert not is_blank(synthetic(64, 70))
    img = _flat(FLAT["glass"])
    img[200:208, 300:308] = (90, 40, 140)  # one small nucleus on glass
    assert not is_blank(img)


@pytest.mark.parametrize("name", sorted(FLAT))
def test_blank_tiles_give_no_detections(detector, name):
    det = detector.detect(_flat(FLAT[name], noise=2.0))
    assert len(det.centres) == 0 and len(det.scores) == 0
    assert det.response.shape == (512, 512) and not det.response.any()
    assert (det.pseudo_mask == 0).all()  # all background, none unknown


def test_detections_on_tissue_are_unchanged(detector):
    img = synthetic(64, 70)
    assert len(detector.detect(img).centres) > 0


@pytest.mark.parametrize("name", ["white", "black"])
def test_blank_tiles_give_no_nuclei_from_a_model(detector, name):
    net = UNet(width=4, depth=2)
    model = MCFModel(MCFConfig(), detector.templates, detector, net)
    pred = model.predict(_flat(FLAT[name], shape=(64, 64)))
    assert pred.labels.max() == 0 and len(pred.table) == 0 and not pred.mask.any()
    assert pred.centres.shape == (0, 2)
