"""Correlation and fusion of the detection branch in torch, for GPUs.

The same computation as :meth:`mcf_fast.detection.detector.Detector.fused_response`, laid out
for an accelerator with memory to spare: the mirrored features are transformed once at full
size, the filter spectra are computed on the fly at that size, a chunk of filters at a time,
and the fusion of eqs. (2)-(3) uses ``torch.topk``.  On a CPU it runs too (that is how the
tests check it against the numba path); it is meant for ``device="cuda"``.
"""

from __future__ import annotations

import numpy as np
import torch

from mcf_fast._validate import cuda_missing
from mcf_fast.errors import InputError
from mcf_fast.ops.correlation import pad_features
from mcf_fast.ops.fusion import FusionLayout

__all__ = ["TorchCorrelator", "torch_fuse"]


def _device(device: str) -> torch.device:
    if cuda_missing(device):
        raise InputError(f"device = {device!r}: torch finds no CUDA device on this machine")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"device = {device!r}: {exc}") from exc


def torch_fuse(
    responses: torch.Tensor,
    *,
    top_t: int,
    top_h: int,
    mode: str = "topk",
    scale_weights: list[list[np.ndarray]] | None = None,
    margin: int = 0,
) -> torch.Tensor:
    """Eqs. (2)-(3) on a (N, K, U, H', W') tensor; returns (H' - 2 margin, W' - 2 margin).

    ``scale_weights`` (``G_k`` per template and scale) are correlated with the crop-fused
    maps over the ``margin`` they carry beyond the image ("valid" correlation).
    """

    def agg(x: torch.Tensor, t: int, dim: int) -> torch.Tensor:
        if mode == "mean":
            return x.mean(dim)
        if t >= x.shape[dim]:
            return x.sum(dim)
        return torch.topk(x, t, dim=dim).values.sum(dim)

    n, k = responses.shape[:2]
    sk = agg(responses, top_t, 2)  # (N, K, H', W')
    if scale_weights is not None:
        h, w = sk.shape[-2] - 2 * margin, sk.shape[-1] - 2 * margin
        out = torch.empty((n, k, h, w), dtype=sk.dtype, device=sk.device)
        for a in range(n):
            for b in range(k):
                g = torch.as_tensor(
                    np.ascontiguousarray(scale_weights[a][b]), dtype=torch.float64, device=sk.device
                )
                e = g.shape[0] // 2
                src = sk[a, b, margin - e : margin + e + h, margin - e : margin + e + w]
                out[a, b] = torch.nn.functional.conv2d(
                    src.to(torch.float64)[None, None], g[None, None]
                )[0, 0].to(sk.dtype)
        sk = out
    elif margin:
        sk = sk[..., margin:-margin, margin:-margin]
    sn = agg(sk, top_t, 1)  # (N, H, W)
    return agg(sn, top_h, 0)


class TorchCorrelator:
    """Filter-bank correlation plus fusion on a torch device.

    Parameters
    ----------
    filters : ndarray, shape (F, C, f, f)
        Centre-anchored filters (odd ``f``), as built by
        :func:`mcf_fast.ops.filters.correlation_filters`.
    device : str
        ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
    chunk_bytes : int
        Memory for the filter spectra computed at once.
    """

    def __init__(
        self, filters: np.ndarray, *, device: str = "cuda", chunk_bytes: int = 1 << 30
    ) -> None:
        w = np.asarray(filters, dtype=np.float32)
        if w.ndim != 4 or w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0:
            raise InputError(f"filters: expected (F, C, f, f) with odd f, got {w.shape}")
        self.device = _device(device)
        self.filters = torch.as_tensor(np.ascontiguousarray(w), device=self.device)
        self.chunk_bytes = int(chunk_bytes)

    def correlate(self, features: np.ndarray, *, margin: int = 0) -> torch.Tensor:
        """(F, H + 2 margin, W + 2 margin) float32 responses on the device."""
        n_f, n_c, f, _ = self.filters.shape
        z = np.asarray(features, dtype=np.float32)
        if z.ndim != 3 or z.shape[2] != n_c:
            raise InputError(f"features: expected an (H, W, {n_c}) array, got {z.shape}")
        if not np.all(np.isfinite(z)):
            raise InputError("features: contain NaN or infinite values")
        h, w = z.shape[0] + 2 * margin, z.shape[1] + 2 * margin
        p = torch.as_tensor(pad_features(z, f // 2 + margin), device=self.device)
        ph, pw = p.shape[1:]
        zh = torch.fft.rfft2(p)  # (C, ph, pw // 2 + 1)
        per_filter = n_c * ph * (pw // 2 + 1) * 8 * 2
        q = max(1, min(n_f, self.chunk_bytes // max(per_filter, 1)))
        out = torch.empty((n_f, h, w), dtype=torch.float32, device=self.device)
        for i in range(0, n_f, q):
            chunk = self.filters[i : i + q]
            buf = torch.zeros(
                (chunk.shape[0], n_c, ph, pw), dtype=torch.float32, device=self.device
            )
            buf[:, :, :f, :f] = chunk
            fh = torch.fft.rfft2(buf)
            prod = (zh[None] * fh.conj()).sum(1)
            out[i : i + q] = torch.fft.irfft2(prod, s=(ph, pw))[:, :h, :w]
        return out

    def fused(self, features: np.ndarray, layout: FusionLayout) -> np.ndarray:
        """The fused response S (eqs. 2-3) of these filters' responses, arranged as
        `layout` says (:attr:`Detector.fusion_layout`), as (H, W) float32 numpy."""
        e = layout.margin
        h, w = features.shape[:2]
        with torch.no_grad():
            r = self.correlate(features, margin=e).reshape(
                layout.n_templates, layout.n_scales, layout.n_crops, h + 2 * e, w + 2 * e
            )
            weights = None
            if layout.scale_weights is not None:
                weights = [list(row) for row in layout.scale_weights]
            s = torch_fuse(
                r,
                top_t=layout.top_t,
                top_h=layout.top_h,
                mode=layout.mode,
                scale_weights=weights,
                margin=e,
            )
        return s.to("cpu", torch.float32).numpy()
