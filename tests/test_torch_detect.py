"""The torch correlation + fusion path against the numba/FFTW path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from naive import correlate as naive_correlate  # noqa: E402
from naive import fuse as naive_fuse  # noqa: E402

from mcf_fast.config import DetectionConfig  # noqa: E402
from mcf_fast.detection.detector import Detector  # noqa: E402
from mcf_fast.detection.torch_engine import TorchCorrelator, torch_fuse  # noqa: E402
from mcf_fast.errors import InputError  # noqa: E402
from mcf_fast.io.templates import TemplateSet  # noqa: E402
from tests.test_detector import CENTRES, SMALL, synthetic  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    image = synthetic(70, 66)
    tset = TemplateSet.from_points(image, [CENTRES[0], CENTRES[2]], size=17, image_name="s")
    return image, tset


def test_correlate_matches_direct(rng):
    z = rng.random((13, 11, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 5, 5)).astype(np.float32)
    got = TorchCorrelator(w, device="cpu").correlate(z, margin=2).numpy()
    np.testing.assert_allclose(got, naive_correlate(z, w, margin=2), atol=1e-4)


@pytest.mark.parametrize("mode", ["topk", "mean"])
def test_torch_fuse_matches_loops(rng, mode):
    r = rng.standard_normal((3, 4, 2, 5, 6)).astype(np.float32)
    got = torch_fuse(torch.as_tensor(r), top_t=2, top_h=2, mode=mode).numpy()
    np.testing.assert_allclose(got, naive_fuse(r, top_t=2, top_h=2, mode=mode), atol=1e-5)


@pytest.mark.parametrize(
    "extra", [{}, {"g_level": "both", "fold_crops": False}, {"top_t": 2}, {"fusion": "mean"}]
)
def test_parity_with_numba_path(setup, extra):
    image, tset = setup
    det = Detector(tset, DetectionConfig(**{**SMALL, **extra}))
    feats = det._features(image)
    ref = det.fused_response(feats)
    got = TorchCorrelator(det._filters, device="cpu").fused(feats, det.fusion_layout)
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def test_bad_device_and_filters():
    with pytest.raises(InputError, match="odd"):
        TorchCorrelator(np.zeros((1, 2, 4, 4), np.float32), device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            TorchCorrelator(np.zeros((1, 2, 3, 3), np.float32), device="cuda")


@pytest.mark.gpu
def test_cuda_detector_matches_cpu(setup):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    image, tset = setup
    cpu = Detector(tset, DetectionConfig(**SMALL)).detect(image)
    gpu = Detector(tset, DetectionConfig(**SMALL), device="cuda").detect(image)
    np.testing.assert_allclose(gpu.response, cpu.response, atol=1e-3)
