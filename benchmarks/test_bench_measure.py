"""Nucleus outlines and measurements of a 1000 x 1000 MoNuSeg label map, beside the reference.

The labels are a test tile's ground-truth instances (renumbered 1..n).  The reference
(tests/naive.py) draws each outline with scikit-image's marching squares on the nucleus'
padded mask and its hull with Qhull, one nucleus at a time, as the slide measurements did
before the compiled tracer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from naive import skimage_outlines  # noqa: E402

from mcf_fast.io.datasets import FolderDataset  # noqa: E402
from mcf_fast.ops.measure import _outlines, measure_nuclei  # noqa: E402

_MEDIANS: dict[str, float] = {}
GROUP = "nucleus outlines, 1000x1000 MoNuSeg ground truth"


@pytest.fixture(scope="module")
def tile(monuseg: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from scipy import ndimage
    from skimage.segmentation import relabel_sequential

    ds = FolderDataset(monuseg / "test", require_masks=True)
    name = ds.names[0]
    lab = relabel_sequential(ds.load_mask(name).astype(np.int32))[0].astype(np.int32)
    n = int(lab.max())
    centres = np.array(ndimage.center_of_mass(lab > 0, lab, range(1, n + 1)))
    return lab, ds.load_image(name), centres


@pytest.mark.benchmark(group=GROUP)
def test_outlines_fast(benchmark, tile):
    lab, _, centres = tile
    n = len(centres)
    _outlines(lab[:64, :64], int(lab[:64, :64].max()), centres)  # JIT warm-up
    xy, offsets, _, _, _ = benchmark.pedantic(
        _outlines, args=(lab, n, centres), rounds=20, warmup_rounds=2
    )
    assert len(offsets) == n + 1
    _MEDIANS["outlines"] = benchmark.stats.stats.median


@pytest.mark.benchmark(group=GROUP)
def test_outlines_reference(benchmark, tile, capsys):
    lab, _, centres = tile
    n = len(centres)
    ref = benchmark.pedantic(skimage_outlines, args=(lab, n), rounds=3, warmup_rounds=0)
    _, _, perimeter, _, _ = _outlines(lab, n, centres)
    both = [j for j, r in enumerate(ref) if r is not None]
    np.testing.assert_allclose(perimeter[both], [ref[j][1] for j in both], rtol=1e-12)
    med = benchmark.stats.stats.median
    fast = _MEDIANS.get("outlines")
    if fast is not None:
        benchmark.extra_info["ratio"] = med / fast
        with capsys.disabled():
            print(
                f"\noutlines of {n} nuclei: reference {med * 1e3:.0f} ms / fast "
                f"{fast * 1e3:.1f} ms = {med / fast:.1f}x"
            )


@pytest.mark.benchmark(group=GROUP)
def test_measure_nuclei(benchmark, tile):
    lab, rgb, centres = tile
    n = len(centres)
    ids = np.arange(1, n + 1)
    t = benchmark.pedantic(
        measure_nuclei,
        args=(lab, rgb),
        kwargs={"ids": ids, "centres": centres, "origin": (0, 0)},
        rounds=10,
        warmup_rounds=1,
    )
    assert len(t["id"]) == n
