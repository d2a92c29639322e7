"""Where `MCFModel.predict` spends its time on one tile, beside the zero-click watershed.

Not a pytest file: run it as a script with a fitted bundle.  Every row is timed in the same
process, interleaved round by round (so a loaded machine slows them alike); the script
prints the medians and their ratios to the watershed baseline as a Markdown table and
writes a JSON with ``--out``.

Rows:
- ``predict``: the whole `MCFModel.predict` (blank check, stain transform, U-Net, instance
  labels, per-nucleus table), as a user calls it;
- its stages: the U-Net maps (``predict_maps`` at the bundle's ``precision``, batch
  normalisation folded into the convolutions by ``UNet.for_inference``; beside it the same
  in float32, and unfolded), the instance labels (``instance_labels``; beside them the same
  split flooded by scikit-image's watershed) and the per-nucleus table (``nucleus_table``);
- ``detect``: the bundle's detector on the same tile, which ``predict`` skips unless the
  seeds need it (``instance_seeds="centres"``) or ``detect=True`` asks for it;
- the watershed baseline on the image (``watershed_nuclei``, zero clicks).

Example
-------
    python benchmarks/predict_times.py --model runs/protocol/monuseg/seed0/model.mcf --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a fitted model bundle (.mcf)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "monuseg"))
    ap.add_argument("--image", default="TCGA-2Z-A9J9-01A-01-TS1", help="a test image name")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    ap.add_argument("--out", default=None, help="write the medians here (JSON)")
    args = ap.parse_args()

    import torch

    from mcf_fast.evaluation.baselines import watershed_nuclei
    from mcf_fast.framework.model import MCFModel
    from mcf_fast.io.datasets import FolderDataset
    from mcf_fast.ops.instances import instance_labels, label_options, nucleus_table
    from mcf_fast.segmentation.precision import inference_dtype
    from mcf_fast.segmentation.train import predict_maps

    if args.threads:
        torch.set_num_threads(args.threads)
    model = MCFModel.load(args.model)
    seg = model.config.segmentation
    img = FolderDataset(Path(args.data) / "test").load_image(args.image)
    if model.stain is not None:
        from mcf_fast.io.images import as_rgb_uint8

        img = as_rgb_uint8(model.stain.transform(img))
    state: dict = {}

    def maps() -> None:
        state["maps"] = predict_maps(
            model.net, img, device=seg.device, tile=seg.tile, precision=seg.precision
        )

    def skimage_labels() -> None:  # the h-maxima split with scikit-image's flood
        from scipy import ndimage
        from skimage.segmentation import watershed

        from mcf_fast.ops.instances import _relabel, fill_holes, hmaxima_markers

        prob = state["maps"][0]
        comps = _relabel(ndimage.label(fill_holes(prob > seg.threshold))[0], seg.min_nucleus_area)
        mask = comps > 0
        dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask), 1.0)
        markers = hmaxima_markers(dist, comps, h=seg.instance_h)
        state["skimage"] = _relabel(
            watershed(-dist, markers, mask=mask).astype(np.int32), seg.min_nucleus_area
        )

    def labels() -> None:
        prob, energy = state["maps"]
        opts = label_options(seg, energy=energy is not None)
        state["labels"] = instance_labels(prob, centres=np.zeros((0, 2)), energy=energy, **opts)

    class Unfolded(torch.nn.Module):  # the same network without UNet.for_inference
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net, self.hparams = net, net.hparams
            self.multiple, self.reach = net.multiple, net.reach

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    unfolded = Unfolded(model.net)
    rows = {
        "`MCFModel.predict` (whole)": lambda: model.predict(img),
        f"- U-Net maps (`predict_maps`, {seg.precision})": maps,
        "  (the same in float32)": lambda: predict_maps(
            model.net, img, device=seg.device, tile=seg.tile, precision="float32"
        ),
        "  (float32, batch norm not folded)": lambda: predict_maps(
            unfolded, img, device=seg.device, tile=seg.tile, precision="float32"
        ),
        "- instance labels (`instance_labels`)": labels,
        "  (the same split, scikit-image's watershed)": skimage_labels,
        "- per-nucleus table (`nucleus_table`)": lambda: nucleus_table(state["labels"], img),
        "detector (`Detector.detect`, skipped by `predict`)": lambda: model.detector.detect(img),
        "watershed baseline (`watershed_nuclei`)": lambda: watershed_nuclei(img),
    }
    for fn in rows.values():  # warm: JIT, FFT plans, first-touch memory
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    load0 = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, fn in rows.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    same = bool(
        seg.instance_seeds == "hmaxima" and np.array_equal(state["labels"], state["skimage"])
    )
    ws = med["watershed baseline (`watershed_nuclei`)"]
    n_templates = len(model.templates)
    print(
        f"{args.image}, {img.shape[1]}x{img.shape[0]}, bundle {args.model} "
        f"({n_templates} templates), {args.rounds} rounds, torch threads "
        f"{torch.get_num_threads()}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
        f"precision {seg.precision} ({inference_dtype(seg.precision, seg.device)}); labels "
        f"equal to scikit-image's flood: {same}"
    )
    print("| computation | median (s) | min (s) | vs. watershed |")
    print("|---|---:|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {min(times[k]):.3f} | {v / ws:.2f}x |")
    if args.out:
        doc = {
            "image": args.image,
            "model": str(args.model),
            "templates": n_templates,
            "rounds": args.rounds,
            "torch_threads": torch.get_num_threads(),
            "precision": seg.precision,
            "dtype": str(inference_dtype(seg.precision, seg.device)),
            "labels_equal_skimage": same,
            "load_average": [load0, os.getloadavg()[0]],
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
            "medians_s": med,
            "times_s": times,
        }
        Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
