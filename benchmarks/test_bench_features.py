"""Dense features (colour names + HOG) on a 1000 x 1000 MoNuSeg tile, beside numpy references.

The references (tests/naive.py) compute the same features with numpy fancy indexing and
numpy + scipy.ndimage.uniform_filter; skimage.feature.hog is timed for context only (it
computes a different, sparse descriptor).  Each test in a group records its median; the
reference tests print the ratio to the fast path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from naive import numpy_color_names, numpy_hog  # noqa: E402

from mcf_fast.config import DetectionConfig  # noqa: E402
from mcf_fast.io.images import read_image  # noqa: E402
from mcf_fast.ops.colornames import builtin_color_names  # noqa: E402
from mcf_fast.ops.features import (  # noqa: E402
    HOG_CLIP,
    HOG_EPS,
    color_name_features,
    extract_features,
    hog_features,
)

_MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def tile(monuseg: Path) -> np.ndarray:
    img = read_image(sorted((monuseg / "test" / "images").glob("*.png"))[0])
    assert img.shape == (1000, 1000, 3)
    return img


def _record(benchmark, key: str) -> float:
    med = benchmark.stats.stats.median
    _MEDIANS[key] = med
    return med


def _report(benchmark, key: str, fast_key: str, capsys) -> None:
    ref = _record(benchmark, key)
    fast = _MEDIANS.get(fast_key)
    if fast is None:
        return
    benchmark.extra_info["fast_median_ms"] = fast * 1e3
    benchmark.extra_info["ratio"] = ref / fast
    with capsys.disabled():
        print(
            f"\n{key}: reference {ref * 1e3:.1f} ms / fast {fast * 1e3:.1f} ms = {ref / fast:.1f}x"
        )


@pytest.mark.benchmark(group="features: CN + HOG, 1000x1000")
def test_extract_features_fast(benchmark, tile):
    cfg = DetectionConfig()
    table = builtin_color_names()
    extract_features(tile[:64, :64], cfg, table=table)  # JIT warm-up, outside the timing
    out = benchmark.pedantic(
        extract_features,
        args=(tile, cfg),
        kwargs={"table": table},
        rounds=20,
        warmup_rounds=2,
    )
    assert out.shape == (1000, 1000, 20)
    _record(benchmark, "cn+hog")


@pytest.mark.benchmark(group="features: CN + HOG, 1000x1000")
def test_extract_features_numpy_reference(benchmark, tile, capsys):
    table = builtin_color_names()

    def reference():
        return np.concatenate(
            [numpy_color_names(tile, table), numpy_hog(tile, eps=HOG_EPS, clip=HOG_CLIP)],
            axis=2,
        ).astype(np.float32)

    ref = benchmark.pedantic(reference, rounds=3, warmup_rounds=0)
    fast = extract_features(tile, table=table)
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=2e-6)
    _report(benchmark, "cn+hog numpy reference", "cn+hog", capsys)


@pytest.mark.benchmark(group="features: CN + HOG, 1000x1000")
def test_skimage_hog_context(benchmark, tile, capsys):
    from skimage.feature import hog

    benchmark.pedantic(
        hog,
        args=(tile,),
        kwargs={
            "orientations": 9,
            "pixels_per_cell": (4, 4),
            "cells_per_block": (2, 2),
            "channel_axis": -1,
            "feature_vector": False,
        },
        rounds=3,
        warmup_rounds=0,
    )
    _report(benchmark, "skimage.feature.hog (context)", "cn+hog", capsys)


@pytest.mark.benchmark(group="features: CN only, 1000x1000")
def test_color_names_fast(benchmark, tile):
    table = builtin_color_names()
    color_name_features(tile[:8, :8], table=table)
    benchmark.pedantic(
        color_name_features, args=(tile,), kwargs={"table": table}, rounds=20, warmup_rounds=2
    )
    _record(benchmark, "cn")


@pytest.mark.benchmark(group="features: CN only, 1000x1000")
def test_color_names_numpy_reference(benchmark, tile, capsys):
    table = builtin_color_names()
    benchmark.pedantic(numpy_color_names, args=(tile, table), rounds=5, warmup_rounds=1)
    _report(benchmark, "cn numpy reference", "cn", capsys)


@pytest.mark.benchmark(group="features: HOG only, 1000x1000")
def test_hog_fast(benchmark, tile):
    hog_features(tile[:64, :64])
    benchmark.pedantic(hog_features, args=(tile,), rounds=20, warmup_rounds=2)
    _record(benchmark, "hog")


@pytest.mark.benchmark(group="features: HOG only, 1000x1000")
def test_hog_numpy_reference(benchmark, tile, capsys):
    benchmark.pedantic(numpy_hog, args=(tile,), rounds=3, warmup_rounds=0)
    _report(benchmark, "hog numpy reference", "hog", capsys)
