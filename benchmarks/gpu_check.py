"""GPU checks: CPU vs CUDA parity of the U-Net probability and per-step training timings.

Usage: ``python benchmarks/gpu_check.py cuda`` (or ``cpu``); ``STEPS=N`` sets the number of
timed training steps; with ``OUT`` set, the results also go to ``$OUT/gpu_check.json``.
Random 1000x1000 images and pseudo masks: this times the machinery, not accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

from mcf_fast.presets import PRESETS
from mcf_fast.segmentation.train import predict_proba, train_unet


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def main(dev: str = "cuda") -> dict:
    out = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
    }
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8) for _ in range(4)]
    targets = [rng.integers(-1, 2, (1000, 1000)).astype(np.int8) for _ in range(4)]
    steps = int(os.environ.get("STEPS", "40"))
    for name in ("quick", "paper"):
        seg = dataclasses.replace(PRESETS[name].segmentation, device=dev)
        train_unet(imgs, targets, seg, steps=3, progress=False, seed=0)  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        net = train_unet(imgs, targets, seg, steps=steps, progress=False, seed=0)
        _sync(dev)
        per_step = (time.perf_counter() - t0) / steps
        times = []
        for _ in range(5):
            t1 = time.perf_counter()
            p_dev = predict_proba(net, imgs[0], device=dev, tile=seg.tile)
            times.append(time.perf_counter() - t1)
        p_cpu = predict_proba(net.to("cpu"), imgs[0], device="cpu", tile=seg.tile)
        total = seg.max_rounds * (seg.steps + (seg.self_steps if seg.use_self_finetune else 0))
        out[name] = {
            "s_per_step": round(per_step, 4),
            "steps_per_fit": total,
            "training_s_per_fit": round(per_step * total, 1),
            "predict_1000px_s_median": round(sorted(times)[2], 4),
            "cpu_vs_device_max_abs_diff": float(np.abs(p_dev - p_cpu).max()),
        }
        print(name, out[name], flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "cuda")))
