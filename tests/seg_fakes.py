"""Small stand-ins for the segmentation tests: synthetic H&E-like images and a colour detector.

``ColourDetector`` has the Detector interface the MCF loop uses (``detect``, ``save_bank``,
``load``) but finds only nuclei whose colour is close to a template's centre colour, so a
nucleus of another shade is missed until a template of that shade is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mcf_fast.io.templates import Template, TemplateSet, crop_template

BACKGROUND = (232, 196, 222)
PURPLE = (100, 40, 140)
#: a nucleus shade the purple templates miss (RGB distance > TOL from PURPLE)
BLUE = (70, 60, 170)
TOL = 30.0


def disk_image(
    h: int, w: int, centres, radius: int, colours, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with flat-coloured noisy disks on a pink background, and its labels."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float64)
    img[:] = BACKGROUND
    labels = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    for i, ((cy, cx), col) in enumerate(zip(centres, colours, strict=True), start=1):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        img[inside] = col
        labels[inside] = i
    img += rng.normal(0, 4, img.shape)
    img = ndimage.gaussian_filter(img, (0.7, 0.7, 0))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), labels


def grid_centres(h: int, w: int, step: int, margin: int) -> list[tuple[int, int]]:
    return [
        (y, x)
        for y in range(margin, h - margin + 1, step)
        for x in range(margin, w - margin + 1, step)
    ]


def make_templates(
    image: np.ndarray, points, *, size: int = 24, name: str = "image0"
) -> TemplateSet:
    return TemplateSet(
        [
            Template(image=name, y=y, x=x, size=size, crop=crop_template(image, y, x, size))
            for y, x in points
        ]
    )


@dataclass(frozen=True, eq=False)
class FakeDetection:
    centres: np.ndarray
    scores: np.ndarray
    response: np.ndarray
    gdbp: np.ndarray
    pseudo_mask: np.ndarray


class ColourDetector:
    """Detects blobs whose colour lies within TOL of a template's centre colour."""

    def __init__(self, templates: TemplateSet, config=None, *, device: str = "cpu") -> None:
        self.templates = templates
        self.config = config
        self.colours = np.array(
            [
                t.crop[t.size // 2 - 2 : t.size // 2 + 3, t.size // 2 - 2 : t.size // 2 + 3]
                .reshape(-1, 3)
                .mean(0)
                for t in templates
            ]
        )

    def detect(self, image: np.ndarray) -> FakeDetection:
        img = image.astype(np.float64)
        d = np.min(np.linalg.norm(img[:, :, None, :] - self.colours[None, None], axis=3), axis=2)
        response = np.clip(1.0 - d / (3 * TOL), 0, 1).astype(np.float32)
        hit = ndimage.binary_opening(d < TOL, iterations=1)
        lab, n = ndimage.label(hit)
        centres = np.array(ndimage.center_of_mass(hit, lab, range(1, n + 1))).reshape(-1, 2)
        centres = np.round(centres).astype(np.int64)
        core = ndimage.binary_erosion(hit, iterations=2)
        dark = img.mean(axis=2) < 180
        background = ~ndimage.binary_dilation(dark, iterations=3)
        pseudo = np.full(d.shape, -1, np.int8)
        pseudo[background] = 0
        pseudo[core] = 1
        return FakeDetection(
            centres=centres,
            scores=np.ones(len(centres), np.float32),
            response=response,
            gdbp=np.zeros(d.shape, np.float32),
            pseudo_mask=pseudo,
        )

    def with_templates(self, templates: TemplateSet) -> ColourDetector:
        return type(self)(templates, self.config)

    def save_bank(self, path) -> Path:
        np.savez(path, colours=self.colours)
        return Path(path)

    @classmethod
    def load(cls, templates: TemplateSet, bank_path, config=None, **_) -> ColourDetector:
        det = cls(templates, config)
        with np.load(bank_path) as z:
            det.colours = z["colours"]
        return det


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run the tiny fits on one thread: on a shared 2-core machine, two OpenMP threads
    spin against other processes and are many times slower on such small tensors."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
