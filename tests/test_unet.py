"""U-Net, losses, synthetic samples, training and tiled inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from seg_fakes import PURPLE, disk_image, grid_centres, one_torch_thread  # noqa: F401

from mcf_fast.config import SegmentationConfig
from mcf_fast.errors import ConfigError, InputError
from mcf_fast.segmentation.precision import inference_dtype
from mcf_fast.segmentation.train import (
    SyntheticSampler,
    build_unet,
    dihedral,
    predict_proba,
    segmentation_loss,
    self_targets,
    train_unet,
)
from mcf_fast.segmentation.unet import UNet

TINY = SegmentationConfig(
    width=8, depth=2, crop_size=32, batch_size=4, steps=40, lr=1e-2, self_steps=0
)


def _pseudo(labels: np.ndarray) -> np.ndarray:
    """Nucleus cores 1, far background 0, a ring of unknown pixels between."""
    from scipy import ndimage

    fg = labels > 0
    out = np.full(labels.shape, -1, np.int8)
    out[~ndimage.binary_dilation(fg, iterations=2)] = 0
    out[ndimage.binary_erosion(fg, iterations=2)] = 1
    return out


@pytest.fixture(scope="module")
def disks():
    img, lab = disk_image(64, 64, grid_centres(64, 64, 20, 12), 6, [PURPLE] * 9, seed=1)
    return img, lab


def test_unet_shapes():
    net = UNet(width=4, depth=3)
    assert net.multiple == 8
    out = net(torch.rand(2, 3, 24, 40))
    assert out.shape == (2, 2, 24, 40)
    with pytest.raises(ValueError):
        UNet(width=0)


def test_loss_matches_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 7, generator=g)
    hard = torch.randint(-1, 2, (2, 5, 7), generator=g)
    target = hard.float()
    target[hard < 0] = float("nan")
    ours = segmentation_loss(logits, target, loss="confidence")
    ref = F.cross_entropy(logits, hard, ignore_index=-1)
    assert torch.allclose(ours, ref, atol=1e-6)
    # "ce": unknown pixels count as background
    ours_ce = segmentation_loss(logits, target, loss="ce")
    ref_ce = F.cross_entropy(logits, hard.clamp(min=0))
    assert torch.allclose(ours_ce, ref_ce, atol=1e-6)
    # soft targets: explicit float64 formula
    soft = torch.rand(2, 5, 7, generator=g)
    p = torch.softmax(logits.double(), dim=1)
    ref_w = -(soft * p[:, 1].log() + (1 - soft) * p[:, 0].log()).mean()
    assert torch.allclose(
        segmentation_loss(logits, soft, loss="weighted").double(), ref_w, atol=1e-6
    )
    with pytest.raises(ConfigError):
        segmentation_loss(logits, target, loss="dice")
    # unknown pixels as down-weighted background
    w = 0.25
    logp = torch.log_softmax(logits.double(), dim=1)
    known = hard >= 0
    ce_known = -torch.where(hard == 1, logp[:, 1], logp[:, 0])[known].sum()
    ce_unknown = -logp[:, 0][~known].sum()
    ref_u = (ce_known + w * ce_unknown) / (known.sum() + w * (~known).sum())
    ours_u = segmentation_loss(logits, target, loss="confidence", unknown_weight=w)
    assert torch.allclose(ours_u.double(), ref_u, atol=1e-6)
    ours_1 = segmentation_loss(logits, target, loss="confidence", unknown_weight=1.0)
    assert torch.allclose(ours_1, ref_ce, atol=1e-6)


def test_loss_all_unknown_is_zero_with_gradient():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), float("nan"))
    value = segmentation_loss(logits, target, loss="confidence")
    value.backward()
    assert float(value.detach()) == 0.0
    assert torch.all(logits.grad == 0)


def test_self_targets():
    p = np.array([[0.1, 0.39, 0.4, 0.5], [0.6, 0.61, 0.9, 0.0]], np.float32)
    t = self_targets(p, t2=0.6, t3=0.4)
    assert t.tolist() == [[0, 0, -1, -1], [-1, 1, 1, 0]]


def test_dihedral_gives_eight_distinct_views():
    a = np.arange(12).reshape(3, 4)
    views = {dihedral(a, k).tobytes() + bytes(dihedral(a, k).shape) for k in range(8)}
    assert len(views) == 8


def test_tiny_fit_loss_falls_and_segments(disks):
    img, lab = disks
    log: list[float] = []
    net = train_unet([img], [_pseudo(lab)], TINY, steps=60, progress=False, log=log)
    assert len(log) == 60
    assert np.mean(log[-10:]) < 0.5 * np.mean(log[:10])
    p = predict_proba(net, img)
    assert p.shape == lab.shape and p.dtype == np.float32
    fg = p > 0.5
    dice = 2 * np.sum(fg & (lab > 0)) / (fg.sum() + (lab > 0).sum())
    assert dice > 0.8


def test_bfloat16_training_learns_and_keeps_float32_weights(disks):
    import dataclasses

    img, lab = disks
    cfg = dataclasses.replace(TINY, train_precision="bfloat16")
    log: list[float] = []
    net = train_unet([img], [_pseudo(lab)], cfg, steps=60, progress=False, log=log)
    assert np.mean(log[-10:]) < 0.5 * np.mean(log[:10])
    assert all(p.dtype == torch.float32 for p in net.parameters())
    fg = predict_proba(net, img) > 0.5
    assert 2 * np.sum(fg & (lab > 0)) / (fg.sum() + (lab > 0).sum()) > 0.8
    # not the float32 steps: the same seed gives other weights
    ref = train_unet([img], [_pseudo(lab)], TINY, steps=2, progress=False)
    other = train_unet([img], [_pseudo(lab)], cfg, steps=2, progress=False)
    assert not torch.equal(next(ref.parameters()), next(other.parameters()))


def test_training_is_repeatable(disks):
    img, lab = disks
    a = train_unet([img], [_pseudo(lab)], TINY, steps=5, progress=False, seed=3)
    b = train_unet([img], [_pseudo(lab)], TINY, steps=5, progress=False, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_train_rejects_bad_input(disks):
    img, lab = disks
    with pytest.raises(InputError, match="targets\\[0\\]"):
        train_unet([img], [lab[:10]], TINY, steps=1, progress=False)
    with pytest.raises(InputError, match="-1"):
        train_unet([img], [np.full(lab.shape, 3, np.int8)], TINY, steps=1, progress=False)
    with pytest.raises(InputError, match="2 targets"):
        train_unet([img], [lab, lab], TINY, steps=1, progress=False)
    with pytest.raises(ConfigError, match="crop_size"):
        train_unet(
            [img],
            [_pseudo(lab)],
            SegmentationConfig(width=4, depth=3, crop_size=36),
            steps=1,
            progress=False,
        )


def test_small_images_are_padded_and_ignored():
    img, lab = disk_image(20, 25, [(10, 12)], 5, [PURPLE])
    net = train_unet([img], [_pseudo(lab)], TINY, steps=2, progress=False)
    assert predict_proba(net, img).shape == (20, 25)


def test_synthetic_sampler(disks):
    img, lab = disks
    rng = np.random.default_rng(0)
    sampler = SyntheticSampler.from_pseudo_masks([img], [_pseudo(lab)], rng=rng, patch=8)
    assert sampler is not None
    assert sampler.density == pytest.approx(9 / 64**2)
    x, t = sampler.sample(rng, 64)
    assert x.shape == (64, 64, 3) and x.dtype == np.uint8
    assert t.dtype == np.int8 and set(np.unique(t)) <= {0, 1}
    xs, ts = zip(*(sampler.sample(rng, 64) for _ in range(20)), strict=True)
    xs, ts = np.stack(xs), np.stack(ts)
    assert ts.sum() > 0
    grey = xs.mean(axis=3)
    # pasted pixels are nucleus pixels (dark), the rest confident background (bright)
    assert grey[ts == 1].mean() < 150 < grey[ts == 0].mean()
    # enlarged: pasted regions are larger than the confident cores they come from
    core_area = np.sum(_pseudo(lab) == 1) / 9
    n_pasted = sum(int(np.max(__import__("scipy").ndimage.label(t)[0])) for t in ts)
    assert ts.sum() / max(n_pasted, 1) > core_area
    # no confident background anywhere: nothing to quilt from
    none = SyntheticSampler.from_pseudo_masks([img], [np.ones(lab.shape, np.int8)], rng=rng)
    assert none is None


def test_tiled_inference_equals_whole_image():
    net = build_unet(SegmentationConfig(width=4, depth=2), seed=0)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    whole = predict_proba(net, img, tile=512)
    tiled = predict_proba(net, img, tile=32, halo=24)
    assert np.allclose(whole, tiled, atol=1e-5)
    # a halo too small for the receptive field shows seams
    seams = predict_proba(net, img, tile=32, halo=0)
    assert not np.allclose(whole, seams, atol=1e-3)
    # the default halo is the network's reach on its pooling grid (23 -> 24 at depth 2)
    assert np.allclose(whole, predict_proba(net, img, tile=32), atol=1e-5)


def test_bfloat16_inference_is_close_and_checked(monkeypatch):
    net = build_unet(SegmentationConfig(width=4, depth=2), seed=0)
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = predict_proba(net, img)
    half = predict_proba(net, img, precision="bfloat16")
    assert half.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: close to float32, but not the same numbers
    assert np.abs(half - full).max() < 0.05
    assert not np.array_equal(half, full)
    assert inference_dtype("float32") == torch.float32
    assert inference_dtype("bfloat16") == torch.bfloat16
    # "auto" follows what the CPU computes natively
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n)
        assert inference_dtype("auto", "cpu") == want
    with pytest.raises(ConfigError, match="precision = 'half'"):
        predict_proba(net, img, precision="half")
    with pytest.raises(ConfigError, match="precision"):
        SegmentationConfig(precision="float16")


def test_flips_are_equivariant():
    net = build_unet(SegmentationConfig(width=4, depth=2), seed=0)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    a = predict_proba(net, img, flips=True)
    b = predict_proba(net, img[:, ::-1], flips=True)[:, ::-1]
    c = predict_proba(net, img[::-1], flips=True)[::-1]
    assert np.allclose(a, b, atol=1e-5) and np.allclose(a, c, atol=1e-5)
    assert not np.allclose(a, predict_proba(net, img), atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(h=st.integers(1, 23), w=st.integers(1, 23), value=st.integers(0, 255))
def test_predict_any_size_constant_image(h, w, value):
    net = _NET
    p = predict_proba(net, np.full((h, w, 3), value, np.uint8), tile=8, halo=4)
    assert p.shape == (h, w)
    assert np.all((p >= 0) & (p <= 1))
    # constant input, no border effects only far inside; all finite
    assert np.all(np.isfinite(p))


_NET = build_unet(SegmentationConfig(width=4, depth=2), seed=0)


def test_colour_augmentation(disks):
    from mcf_fast.segmentation.train import _jitter_colour

    rng = np.random.default_rng(0)
    batch = np.full((4, 8, 8, 3), 128, np.uint8)
    out = _jitter_colour(batch, 0.1, rng)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    # each sample and channel gets its own gain/offset, within 128 * 1.1 + 6.4 of the input
    assert len(np.unique(out[:, 0, 0, :])) > 1
    assert np.all(np.abs(out.astype(int) - 128) <= 128 * 0.1 + 6.4 + 1)
    img, lab = disks
    cfg = SegmentationConfig(
        width=8, depth=2, crop_size=32, batch_size=4, lr=1e-2, augment_colour=0.1
    )
    log: list[float] = []
    train_unet([img], [_pseudo(lab)], cfg, steps=30, progress=False, log=log)
    assert np.mean(log[-5:]) < np.mean(log[:5])


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_reach_bounds_the_receptive_field(depth):
    """``reach`` is the input-gradient support of an output pixel, to within one pixel."""
    torch.manual_seed(0)
    net = UNet(width=4, depth=depth).double().eval()
    m = net.multiple
    side = (2 * net.reach // m + 8) * m
    x = torch.rand(1, 3, side, side, dtype=torch.float64, requires_grad=True)
    c = (net.reach // m + 1) * m
    radius = 0
    for k in range(2 * m):  # every phase of the pooling grid, twice
        x.grad = None
        net(x)[0, 1, c + k, c + k].backward()
        ys, xs = torch.nonzero(x.grad.abs().sum((0, 1)), as_tuple=True)
        if len(ys):  # (a pixel whose ReLUs are all off has no gradient)
            radius = max(radius, int((ys - c - k).abs().max()), int((xs - c - k).abs().max()))
    assert net.reach - 1 <= radius <= net.reach


def test_folded_inference_copy_matches_and_follows_training():
    torch.manual_seed(0)
    net = UNet(width=4, depth=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(2, 3, 32, 32)

    def step() -> None:
        net.train()
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()

    step()  # non-trivial running statistics and weights
    net.eval()
    folded = net.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-4)
    assert net.for_inference() is folded  # cached while nothing changed
    step()
    net.eval()
    refolded = net.for_inference()
    assert refolded is not folded  # a training step invalidates the copy
    with torch.inference_mode():
        torch.testing.assert_close(refolded(x), net(x), atol=1e-5, rtol=1e-4)
    assert "_folded" not in dict(net.named_modules())  # not a submodule
    assert all(not k.startswith("_folded") for k in net.state_dict())
