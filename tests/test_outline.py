"""The compiled outlines (mcf_fast.kernels.outline) against scikit-image's marching squares."""

from __future__ import annotations

import numpy as np
import pytest
from naive import skimage_outlines
from scipy import ndimage

from mcf_fast.ops.measure import _outlines


def _canonical(closed: np.ndarray) -> np.ndarray:
    """A ring from its lowest (y, x) vertex on, walking direction kept."""
    ring = closed[:-1]
    return np.roll(ring, -int(np.lexsort((ring[:, 1], ring[:, 0]))[0]), axis=0)


def _check(lab: np.ndarray) -> int:
    n = int(lab.max())
    xy, offsets, perimeter, solidity, _ = _outlines(lab, n, np.zeros((n, 2)))
    checked = 0
    for j, ref in enumerate(skimage_outlines(lab, n)):
        if ref is None:
            continue
        ring = xy[offsets[j] : offsets[j + 1]]
        assert np.array_equal(ring[0], ring[-1])
        np.testing.assert_array_equal(_canonical(ring), _canonical(ref[0]))
        assert perimeter[j] == pytest.approx(ref[1], rel=1e-12)
        assert solidity[j] == pytest.approx(ref[2], rel=1e-12)
        checked += 1
    return checked


def test_outlines_equal_marching_squares_on_random_labels():
    rng = np.random.default_rng(7)
    checked = 0
    for t in range(200):
        h, w = rng.integers(1, 40, 2)
        blobs = ndimage.gaussian_filter(rng.random((h, w)), 1.5) > 0.5
        if t % 2:  # touching labels of several values
            lab = blobs * rng.integers(1, 5, (h, w))
        else:  # 4-connected pieces, some with holes
            lab = ndimage.label(blobs)[0]
        checked += _check(lab.astype(np.int32))
    assert checked > 400


@pytest.mark.parametrize(
    "rows",
    [
        ["1"],  # one pixel: a diamond through the edge midpoints
        ["10", "01"],  # diagonal neighbours: two pieces of equal length (skipped) ...
        ["110", "011"],  # ... and of unequal length: the longer piece
        ["111", "101", "111"],  # a hole: the outer ring
        ["1111", "1001", "1111", "0011"],
        ["0110", "1111", "0110"],
    ],
)
def test_outlines_of_hand_made_shapes(rows):
    lab = np.array([[int(c) for c in r] for r in rows], np.int32)
    _check(lab)


def test_outline_of_one_pixel_and_empty_label():
    lab = np.zeros((3, 3), np.int32)
    lab[1, 1] = 1
    xy, offsets, perimeter, solidity, box = _outlines(lab, 2, np.array([[1.0, 1.0], [0.2, 1.7]]))
    ring = xy[offsets[0] : offsets[1]]
    assert ring.tolist() == [[1, 1.5], [1.5, 2], [2, 1.5], [1.5, 1], [1, 1.5]]
    assert perimeter[0] == pytest.approx(4 * np.sqrt(0.5)) and solidity[0] == 1
    assert box[0].tolist() == [1, 1, 2, 2] and box[1].tolist() == [0, 0, 0, 0]
    # a label with no pixels is drawn as the pixel at its centre
    empty = xy[offsets[1] : offsets[2]]
    assert empty.tolist() == [[0, 2], [0, 3], [1, 3], [1, 2], [0, 2]] and perimeter[1] == 4
