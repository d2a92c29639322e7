"""Compare instance-labelling settings on the probability maps of one fitted model.

The network's probability map and the detector's centres are computed once per image (and
cached with ``--cache``); every labelling setting then reuses them, so a sweep costs the
labelling and scoring only.  Choose settings on the train split (``--split train``, whose
masks MCF itself never sees) and only confirm them on the test split.

Example (the model of an ``mcf evaluate`` run, or any ``mcf fit`` bundle)::

    python benchmarks/eval_instances.py --model model.mcf --data ../shared/data/monuseg \\
        --split train --cache /tmp/inst-cache \\
        --variant seeds=hmaxima,min_area=50 --variant seeds=distance,min_distance=8

Each ``--variant`` is a comma-separated list of :func:`mcf_fast.ops.instances.
instance_labels` keyword arguments (``seeds``, ``min_distance``, ``h``, ``threshold``,
``min_area``); without any, a small default grid runs.  Prints one line per variant
(Dice, IoU, F1@12, AJI, PQ and the instance count) and, with ``--json``, writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_VARIANTS = [
    "seeds=centres,min_area=30",
    "seeds=distance,min_distance=8,min_area=30",
    "seeds=hmaxima,h=1,min_area=30",
    "seeds=hmaxima,h=1,min_area=50",
    "seeds=hmaxima,h=2,min_area=50",
]
_FLOATS = {"h", "threshold"}
_INTS = {"min_distance", "min_area"}


def parse_variant(text: str) -> dict:
    """``"seeds=hmaxima,h=1"`` -> ``{"seeds": "hmaxima", "h": 1.0}``."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: expected key=value pairs, got {part!r}")
        if key in _FLOATS:
            out[key] = float(value)
        elif key in _INTS:
            out[key] = int(value)
        elif key == "seeds":
            out[key] = value
        else:
            raise SystemExit(
                f"--variant {text!r}: unknown key {key!r}; expected seeds, "
                f"{', '.join(sorted(_FLOATS | _INTS))}"
            )
    return out


def cached_maps(model, images: list[Path], cache: Path | None):
    """(probability, detected centres) per image, from the cache when present."""
    from tqdm.auto import tqdm

    from mcf_fast.io.images import as_rgb_uint8, read_image
    from mcf_fast.segmentation.train import predict_proba

    seg = model.config.segmentation
    for path in tqdm(images, desc="probability maps", unit="image"):
        f = None if cache is None else cache / f"{path.stem}.npz"
        if f is not None and f.is_file():
            z = np.load(f)
            yield path.stem, z["prob"].astype(np.float32), z["centres"]
            continue
        img = read_image(path)
        if model.stain is not None:
            img = as_rgb_uint8(model.stain.transform(img))
        centres = np.asarray(model.detector.detect(img).centres, np.int64).reshape(-1, 2)
        prob = predict_proba(model.net, img, device=seg.device, tile=seg.tile, flips=seg.tta_flips)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f.stem + ".part.npz")
            np.savez_compressed(tmp, prob=prob.astype(np.float16), centres=centres)
            os.replace(tmp, f)
        yield path.stem, prob, centres


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a model bundle written by mcf fit")
    ap.add_argument("--data", required=True, help="dataset root with <split>/images, masks")
    ap.add_argument("--split", default="train", choices=["train", "test"])
    ap.add_argument("--cache", type=Path, default=None, help="folder for the cached maps")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--variant", action="append", default=[], help="key=value,... (repeat)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    from mcf_fast.framework.model import MCFModel
    from mcf_fast.io.images import read_labels
    from mcf_fast.metrics import score_arrays
    from mcf_fast.ops.instances import instance_labels

    root = Path(args.data) / args.split
    images = sorted(p for p in (root / "images").iterdir() if not p.name.startswith("."))
    if args.limit:
        images = images[: args.limit]
    if not images:
        raise SystemExit(f"{root / 'images'}: no images")
    model = MCFModel.load(args.model)
    if model.net is None:
        raise SystemExit(f"{args.model}: a model without a network has no probability map")
    maps = list(cached_maps(model, images, args.cache))
    truth = {name: read_labels(root / "masks" / f"{name}.png") for name, _, _ in maps}
    rows = []
    for text in args.variant or DEFAULT_VARIANTS:
        kw = parse_variant(text)
        t0 = time.perf_counter()
        items = [
            (name, instance_labels(prob, centres=c, **kw), truth[name], None)
            for name, prob, c in maps
        ]
        a = score_arrays(items)["aggregate"]
        row = {
            "variant": text,
            "seconds": round(time.perf_counter() - t0, 1),
            **{k: a[k] for k in ("Dice", "IoU", "F1@12", "AJI", "PQ", "n_pred", "n_gt")},
        }
        rows.append(row)
        print(
            f"{text:45s} Dice {a['Dice']:.4f} IoU {a['IoU']:.4f} F1@12 {a['F1@12']:.4f} "
            f"AJI {a['AJI']:.4f} PQ {a['PQ']:.4f} instances {a['n_pred']} "
            f"(truth {a['n_gt']})",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"split": args.split, "model": str(args.model), "rows": rows}, indent=1),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
