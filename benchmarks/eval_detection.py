"""Accuracy of the detection branch on MoNuSeg (not a pytest file: run it as a script).

Protocol: 10 templates from ``select_templates(train, n=10, seed=0)``; detection on every
image of a split; centres and the pseudo mask's nucleus label scored with
:func:`mcf_fast.metrics.score_arrays` (P/R/F1 at 6 and 12 px, Dice); pseudo-label quality:
the share of nucleus-labelled pixels that are nucleus in the ground truth, the share of
background-labelled pixels that are background, the share of true nucleus pixels labelled
nucleus, and the share of all pixels with a confident label.

Thresholds are tuned on the train split only (``--sweep``: the fused responses are computed
once, then the centre thresholds are swept); the test split is for scoring only.

Examples
--------
    python benchmarks/eval_detection.py --split train --sweep
    python benchmarks/eval_detection.py --split test --color-names ../shared/data/colornames/w2c.npy
    python benchmarks/eval_detection.py --split test --set pseudo_rule=paper --set g_level=both
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _parse_value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    if "," in text:
        return tuple(_parse_value(t) for t in text.split(","))
    return text


def pseudo_quality(pm: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    fg = gt > 0
    nuc, bg = pm == 1, pm == 0
    return {
        "nuc": int(nuc.sum()), "nuc_ok": int((nuc & fg).sum()),
        "bg": int(bg.sum()), "bg_ok": int((bg & ~fg).sum()),
        "fg": int(fg.sum()), "px": int(pm.size),
    }


def summarise_quality(q: dict[str, int]) -> dict[str, float]:
    return {
        "nucleus_label_precision": q["nuc_ok"] / max(q["nuc"], 1),
        "nucleus_label_coverage": q["nuc_ok"] / max(q["fg"], 1),
        "background_label_precision": q["bg_ok"] / max(q["bg"], 1),
        "confident_share": (q["nuc"] + q["bg"]) / max(q["px"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "monuseg"))
    ap.add_argument("--split", default="test", choices=("train", "test"))
    ap.add_argument("--templates", default=None,
                    help="template-set JSON (default: select_templates(train, n, seed))")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--color-names", default="builtin")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="DetectionConfig override (repeatable)")
    ap.add_argument("--sweep", action="store_true",
                    help="sweep min_score x peak_distance (tuning: use on train only)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)

    from mcf_fast.config import DetectionConfig
    from mcf_fast.io.datasets import FolderDataset
    from mcf_fast.io.templates import TemplateSet, select_templates
    from mcf_fast.metrics import score_arrays
    from mcf_fast.ops.pseudo import find_centres, pseudo_mask
    from mcf_fast.pipeline.detector import Detector

    overrides = dict(s.split("=", 1) for s in args.set)
    cfg = DetectionConfig(color_names=args.color_names,
                          **{k: _parse_value(v) for k, v in overrides.items()})
    if args.templates:
        tset = TemplateSet.load(args.templates)
    else:
        tset = select_templates(Path(args.data) / "train", n=args.n, seed=args.seed)
    det = Detector(tset, cfg)
    ds = FolderDataset(Path(args.data) / args.split, require_masks=True)
    names = ds.names[: args.limit] if args.limit else ds.names
    cache = []
    t0 = time.perf_counter()
    for name in names:
        img, gt = ds.load_image(name), ds.load_mask(name)
        r = det.detect(img)
        cache.append((name, img, gt, r))
        print(f"{name}: {len(r.centres)} centres", file=sys.stderr)
    seconds = (time.perf_counter() - t0) / max(len(names), 1)

    def evaluate(c: DetectionConfig) -> dict:
        items, q = [], dict.fromkeys(("nuc", "nuc_ok", "bg", "bg_ok", "fg", "px"), 0)
        for name, img, gt, r in cache:
            centres, _ = find_centres(r.response, gdbp=r.gdbp if c.use_gdbp else None,
                                      min_distance=c.peak_distance, min_score=c.min_score)
            pm = pseudo_mask(img, r.response, centres, window=det._window,
                             rule=c.pseudo_rule, t1=c.t1, ratio=c.pseudo_ratio)
            items.append((name, (pm == 1).astype(np.uint8), gt, centres))
            for k, v in pseudo_quality(pm, gt).items():
                q[k] += v
        agg = score_arrays(items)["aggregate"]
        keep = {k: agg[k] for k in agg if k.startswith(("P@", "R@", "F1@", "Dice"))}
        return {**keep, **summarise_quality(q)}

    result = {
        "split": args.split, "n_images": len(names), "templates": len(tset),
        "config": dataclasses.asdict(cfg), "seconds_per_image": seconds,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "date": time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/eval_detection.py", *(argv or sys.argv[1:])]),
    }
    if args.sweep:
        rows = []
        for ms, pd in itertools.product((0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5), (3, 4, 5, 6, 8)):
            c = dataclasses.replace(cfg, min_score=ms, peak_distance=pd)
            row = {"min_score": ms, "peak_distance": pd, **evaluate(c)}
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in row.items()}), file=sys.stderr)
        best = max(rows, key=lambda r: r["F1@12"])
        result["sweep"] = rows
        result["best"] = best
    else:
        result["metrics"] = evaluate(cfg)
    text = json.dumps(result, indent=1, default=str)
    print(json.dumps(result.get("best", result.get("metrics")), indent=1))
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
