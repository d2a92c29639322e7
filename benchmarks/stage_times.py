"""Where `Detector.detect` and the instance labels spend their time, beside their references.

Not a pytest file: run it as a script.  Every variant is timed in the same process,
interleaved round by round (so a loaded machine slows them alike); the script prints the
medians and their ratios as a Markdown table and writes a JSON with ``--out``.

Rows:
- ``detect``: the whole `Detector.detect` on one 1000 x 1000 MoNuSeg test tile, exact
  bank and with each ``--ranks`` channel projection, split into features, forward FFTs,
  channel sum, inverse FFTs, fusion and the tail (normalisation, GDBP, centres, pseudo mask);
- ``instances``: `instance_labels(seeds="hmaxima")` on the tile's blurred true mask, beside
  the scikit-image formulation (``skimage.morphology.h_maxima`` per component and
  ``scipy.ndimage.binary_fill_holes``, tests/naive.py) and beside the watershed baseline
  on the image (`watershed_nuclei`, zero clicks).

Example
-------
    python benchmarks/stage_times.py --templates 10 --ranks 12,8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


class _Timed:
    """Wraps a callable and adds its wall seconds to a counter."""

    def __init__(self, fn, counter: dict, key: str) -> None:
        self.fn, self.counter, self.key = fn, counter, key

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.counter[self.key] = self.counter.get(self.key, 0.0) + time.perf_counter() - t


def detect_split(det, img) -> dict[str, float]:
    """One `detect` call with its stages timed (the same calls `detect` makes)."""
    import mcf_fast.ops.correlation as corr
    from mcf_fast.detection.detector import postprocess
    from mcf_fast.kernels.fusion import scale_template_kernel
    from mcf_fast.ops.fusion import normalise_response
    from mcf_fast.ops.gdbp import gdbp

    t: dict[str, float] = {}
    fft = det._engine._fft
    fft.rfft2, fft.irfft2 = _Timed(fft.rfft2, t, "forward FFTs"), _Timed(fft.irfft2, t, "inv")
    mac = corr.spectral_mac_kernel
    corr.spectral_mac_kernel = _Timed(mac, t, "channel sum")
    try:
        t0 = time.perf_counter()
        feats = det.features(img)
        if det._projection is not None:
            feats = feats @ det._projection
        t["features"] = time.perf_counter() - t0
        n_t, n_k, _ = det._layout
        cfg = det.config
        out = np.empty(img.shape[:2], np.float32)
        fusion = 0.0
        for offsets, r in corr.iter_correlate_batches(feats, det._engine):
            a = time.perf_counter()
            scale_template_kernel(r, n_t, n_k, cfg.top_t, cfg.top_h, False, out, offsets)
            fusion += time.perf_counter() - a
        t["fusion"] = fusion
        a = time.perf_counter()
        sn = normalise_response(out)
        d = gdbp(sn, p=cfg.gdbp_p, q=cfg.gdbp_q)
        postprocess(img, sn, d, cfg, window=det.window)
        t["tail"] = time.perf_counter() - a
        t["total"] = time.perf_counter() - t0
    finally:
        del fft.rfft2, fft.irfft2
        corr.spectral_mac_kernel = mac
    t["inverse FFTs"] = t.pop("inv", 0.0)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "monuseg"))
    ap.add_argument("--templates", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ranks", default="12,8", help="channel_rank values beside the exact bank")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from naive import skimage_hmaxima_markers
    from scipy import ndimage

    import mcf_fast.ops.instances as inst
    from mcf_fast.config import DetectionConfig
    from mcf_fast.detection.detector import Detector
    from mcf_fast.detection.selection import select_templates
    from mcf_fast.evaluation.baselines import watershed_nuclei
    from mcf_fast.io.datasets import FolderDataset

    data = Path(args.data)
    tset = select_templates(data / "train", n=args.templates, seed=args.seed)
    ds = FolderDataset(data / "test", require_masks=True)
    name = ds.names[0]
    img, gt = ds.load_image(name), ds.load_mask(name)
    ranks = [0] + [int(r) for r in args.ranks.split(",") if r.strip()]
    dets = {r: Detector(tset, DetectionConfig(channel_rank=r)) for r in ranks}
    prob = ndimage.gaussian_filter((gt > 0).astype(np.float64), 1.5)

    def reference_labels():
        fast_markers, fast_fill = inst.hmaxima_markers, inst.fill_holes
        inst.hmaxima_markers, inst.fill_holes = skimage_hmaxima_markers, ndimage.binary_fill_holes
        try:
            return inst.instance_labels(prob, seeds="hmaxima", min_area=50)
        finally:
            inst.hmaxima_markers, inst.fill_holes = fast_markers, fast_fill

    label_fns = {
        "instance_labels (union-find kernel)": lambda: inst.instance_labels(
            prob, seeds="hmaxima", min_area=50
        ),
        "instance_labels (skimage h_maxima reference)": reference_labels,
        "watershed baseline on the image": lambda: watershed_nuclei(img),
    }
    for det in dets.values():  # JIT, plans and spectra outside the timing
        det.detect(img)
    for fn in label_fns.values():
        fn()
    same = bool(np.array_equal(label_fns[next(iter(label_fns))](), reference_labels()))
    times: dict[str, list[dict[str, float]]] = {f"rank {r}": [] for r in ranks}
    lab_times: dict[str, list[float]] = {k: [] for k in label_fns}
    for _ in range(args.rounds):
        for r, det in dets.items():
            times[f"rank {r}"].append(detect_split(det, img))
        for k, fn in label_fns.items():
            t = time.perf_counter()
            fn()
            lab_times[k].append(time.perf_counter() - t)
    load = os.getloadavg()[0]
    med = {
        k: {s: float(np.median([row[s] for row in rows])) for s in rows[0]}
        for k, rows in times.items()
    }
    stages = ["features", "forward FFTs", "channel sum", "inverse FFTs", "fusion", "tail", "total"]
    print(f"tile {name}, {args.templates} templates, {args.rounds} rounds, load {load:.1f}")
    print("| variant | filters x channels | " + " | ".join(stages) + " | speed-up |")
    print("|---" * (len(stages) + 3) + "|")
    base = med["rank 0"]["total"]
    for r, det in dets.items():
        m = med[f"rank {r}"]
        cells = " | ".join(f"{m.get(s, 0.0):.3f}" for s in stages)
        fc = f"{det._engine.n_filters} x {det._engine.n_channels}"
        label = "exact" if r == 0 else f"channel_rank={r}"
        print(f"| {label} | {fc} | {cells} | {base / m['total']:.2f}x |")
    lm = {k: float(np.median(v)) for k, v in lab_times.items()}
    first = next(iter(lm))
    print(f"\ninstances equal to the reference: {same}")
    print("| computation | median (s) | ratio to the kernel |")
    print("|---|---|---|")
    for k, v in lm.items():
        print(f"| {k} | {v:.3f} | {v / lm[first]:.2f} |")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "detect_medians": med,
                    "instances_medians": lm,
                    "instances_equal": same,
                    "load_average": load,
                    "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
