"""U-Net inference on a 1000 x 1000 MoNuSeg tile (the ``quick`` preset's network).

- ``tiled``: :func:`~mcf_fast.segmentation.train.predict_proba` as the pipeline runs it (float32,
  ``torch.inference_mode``, 512-pixel tiles with a 64-pixel halo);
- ``whole``: the same call with one tile covering the image;
- ``flips``: tiled with test-time flips (4 passes);
- ``reference``: the plain way, the whole image through the network in float64 with
  autograd recording, as a user would first write it.

Weights are a seeded initialisation: timing does not depend on them.  The reference and the
fast path must agree to 1e-4 away from the tile seams.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mcf_fast.io.images import read_image
from mcf_fast.presets import PRESETS
from mcf_fast.segmentation.train import build_unet, predict_proba

_MEDIANS: dict[str, float] = {}
GROUP = "U-Net inference, 1000x1000, quick preset network"


@pytest.fixture(scope="module")
def tile(monuseg: Path) -> np.ndarray:
    img = read_image(sorted((monuseg / "test" / "images").glob("*.png"))[0])
    assert img.shape == (1000, 1000, 3)
    return img


@pytest.fixture(scope="module")
def net():
    return build_unet(PRESETS["quick"].segmentation, seed=0).eval()


def _reference(net, image: np.ndarray) -> np.ndarray:
    ref = net.double()
    try:
        m = ref.multiple
        h, w = image.shape[:2]
        padded = np.pad(image, ((0, (-h) % m), (0, (-w) % m), (0, 0)), mode="reflect")
        x = torch.from_numpy(padded.astype(np.float64) / 255.0).permute(2, 0, 1)[None]
        p = torch.softmax(ref(x), dim=1)[0, 1, :h, :w]
        return p.detach().numpy()
    finally:
        net.float()


def _report(benchmark, name: str, capsys) -> None:
    med = benchmark.stats.stats.median
    _MEDIANS[name] = med
    benchmark.extra_info["ms_per_megapixel"] = med * 1e3
    with capsys.disabled():
        print(
            f"\nU-Net {name}: {med * 1e3:.0f} ms per 1000x1000 tile "
            f"({1.0 / med:.2f} MP/s, {torch.get_num_threads()} threads)"
        )


@pytest.mark.benchmark(group=GROUP)
def test_unet_tiled(benchmark, net, tile, capsys):
    predict_proba(net, tile[:256, :256])  # warm-up
    p = benchmark.pedantic(predict_proba, args=(net, tile), rounds=5, warmup_rounds=1)
    assert p.shape == (1000, 1000)
    _report(benchmark, "tiled", capsys)


@pytest.mark.benchmark(group=GROUP)
def test_unet_whole(benchmark, net, tile, capsys):
    p = benchmark.pedantic(
        predict_proba, args=(net, tile), kwargs={"tile": 1024}, rounds=5, warmup_rounds=1
    )
    assert p.shape == (1000, 1000)
    _report(benchmark, "whole", capsys)


@pytest.mark.benchmark(group=GROUP)
def test_unet_tiled_flips(benchmark, net, tile, capsys):
    p = benchmark.pedantic(
        predict_proba, args=(net, tile), kwargs={"flips": True}, rounds=3, warmup_rounds=0
    )
    assert p.shape == (1000, 1000)
    _report(benchmark, "tiled + flips", capsys)


@pytest.mark.benchmark(group=GROUP)
def test_unet_reference(benchmark, net, tile, capsys):
    ref = benchmark.pedantic(_reference, args=(net, tile), rounds=2, warmup_rounds=0)
    whole = predict_proba(net, tile, tile=1024)
    assert np.allclose(whole, ref, atol=1e-4)
    tiled = predict_proba(net, tile)
    # the tiles see the image through a 64-pixel halo: equal except for a thin band at seams
    assert np.mean(np.abs(tiled - ref) < 1e-2) > 0.99
    med = benchmark.stats.stats.median
    with capsys.disabled():
        print(f"\nU-Net reference (float64, autograd, whole image): {med * 1e3:.0f} ms")
        fast = _MEDIANS.get("tiled")
        if fast is not None:
            benchmark.extra_info["ratio_vs_tiled"] = med / fast
            print(f"U-Net reference / tiled = {med / fast:.1f}x")
