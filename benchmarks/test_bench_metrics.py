"""Timing of scoring one MoNuSeg test image (1000x1000, ~500 nuclei) and of XML rasterising."""

from __future__ import annotations

import numpy as np
import pytest

from mcf_fast.io.datasets import FolderDataset
from mcf_fast.io.monuseg_xml import xml_to_labels
from mcf_fast.metrics import score_image


@pytest.fixture(scope="module")
def gt_and_shifted(monuseg):
    ds = FolderDataset(monuseg / "test", require_masks=True)
    gt = ds.load_mask(ds.names[0])
    shifted = np.zeros_like(gt)
    shifted[:, 3:] = gt[:, :-3]
    return ds.names[0], gt, shifted


def test_bench_score_image(benchmark, gt_and_shifted):
    _, gt, shifted = gt_and_shifted
    row = benchmark(score_image, shifted, gt)
    assert row["F1@6"] == 1.0


def test_bench_xml_to_labels(benchmark, monuseg, gt_and_shifted):
    name, gt, _ = gt_and_shifted
    path = monuseg / "test" / "annotations_xml" / f"{name}.xml"
    lab = benchmark.pedantic(xml_to_labels, args=(path, gt.shape), rounds=3, iterations=1)
    assert ((lab > 0) == (gt > 0)).mean() > 0.999
