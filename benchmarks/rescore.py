"""Rescore fitted models at other prediction-time settings, without refitting.

Each bundle is loaded, each ``--variant`` (``;``-separated ``part.field=JSON``, as in
``benchmarks/holdout.py``; an empty one keeps the bundle's settings) replaces fields of its
configuration, and the model predicts every image of a test split; the scorer pools them.
One JSON line per (model, variant, dataset): the settings, Dice, AJI, F1@12, PQ, the
seconds taken and, beside the first variant, the largest probability difference and the
share of pixels whose side of the 0.5 threshold changed.  Only prediction-time settings
(``segmentation.instance_h``, ``segmentation.precision``, ...) make sense here: the network
and templates stay as fitted.

    python benchmarks/rescore.py --data ../shared/data \
        --model runs/protocol/consep/seed0/model.mcf --on consep \
        --variant 'segmentation.precision="float32"' \
        --variant 'segmentation.precision="bfloat16"'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from mcf_fast.framework.model import MCFModel
    from mcf_fast.io.datasets import FolderDataset
    from mcf_fast.metrics import score_arrays

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder of datasets (each with test/)")
    ap.add_argument("--model", action="append", required=True, help="a bundle (repeatable)")
    ap.add_argument("--on", required=True, help="comma-separated datasets to score on")
    ap.add_argument("--variant", action="append", default=None, help="part.field=JSON;...")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from holdout import _override  # the same part.field=JSON assignments

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    variants = args.variant or [""]
    splits = {}
    for name in args.on.split(","):
        ds = FolderDataset(Path(args.data) / name / "test", require_masks=True)
        splits[name] = [(n, ds.load_image(n), ds.load_mask(n)) for n in ds.names]
    for path in args.model:
        model = MCFModel.load(path)
        fitted = model.config
        for name, items in splits.items():
            first = None
            for variant in variants:
                changes = [v for v in variant.split(";") if v.strip()]
                model.config = _override(fitted, changes)
                t0 = time.perf_counter()
                preds = [model.predict(img) for _, img, _ in items]
                seconds = time.perf_counter() - t0
                scored = [
                    (n, p.labels, gt, np.asarray(p.centres))
                    for (n, _, gt), p in zip(items, preds, strict=True)
                ]
                agg = score_arrays(scored)["aggregate"]
                row = {
                    "model": str(path),
                    "on": name,
                    "variant": variant,
                    "seconds": round(seconds, 1),
                    **{k: round(float(agg[k]), 4) for k in ("Dice", "AJI", "F1@12", "PQ")},
                }
                probs = [p.probability for p in preds]
                if first is None:
                    first = probs
                else:
                    pairs = list(zip(probs, first, strict=True))
                    diff = max(float(np.abs(a - b).max()) for a, b in pairs)
                    side = np.mean([np.mean((a > 0.5) != (b > 0.5)) for a, b in pairs])
                    row["max_abs_prob_diff"] = round(diff, 5)
                    row["pixels_changed_side"] = round(float(side), 6)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
