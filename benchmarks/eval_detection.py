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
    python benchmarks/eval_detection.py --split train --sweep centres --cache /tmp/resp
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
        "nuc": int(nuc.sum()),
        "nuc_ok": int((nuc & fg).sum()),
        "bg": int(bg.sum()),
        "bg_ok": int((bg & ~fg).sum()),
        "fg": int(fg.sum()),
        "px": int(pm.size),
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
    ap.add_argument(
        "--templates",
        default=None,
        help="template-set JSON (default: select_templates(train, n, seed))",
    )
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--color-names", default="builtin")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="DetectionConfig override (repeatable)",
    )
    ap.add_argument(
        "--sweep",
        choices=("centres", "pseudo"),
        default=None,
        help="sweep the centre thresholds (min_score x peak_distance) or the "
        "gated pseudo-mask thresholds (tuning: use on train only)",
    )
    ap.add_argument(
        "--min-scores",
        default=None,
        help="with --sweep centres: only these min_score values (comma-separated), "
        "other fields as configured",
    )
    ap.add_argument(
        "--cache",
        default=None,
        help="folder to keep the responses in, keyed by the filter settings",
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)

    from mcf_fast.config import DetectionConfig
    from mcf_fast.detection.detector import Detector, postprocess
    from mcf_fast.detection.selection import select_templates
    from mcf_fast.io.datasets import FolderDataset
    from mcf_fast.io.templates import TemplateSet
    from mcf_fast.metrics import score_arrays

    overrides = dict(s.split("=", 1) for s in args.set)
    cfg = DetectionConfig(
        color_names=args.color_names, **{k: _parse_value(v) for k, v in overrides.items()}
    )
    if args.templates:
        tset = TemplateSet.load(args.templates)
    else:
        tset = select_templates(Path(args.data) / "train", n=args.n, seed=args.seed)
    det = Detector(tset, cfg)
    ds = FolderDataset(Path(args.data) / args.split, require_masks=True)
    names = ds.names[: args.limit] if args.limit else ds.names
    cache = []
    t0 = time.perf_counter()
    key = None
    if args.cache:
        import hashlib

        skip = {
            "min_score",
            "peak_distance",
            "t1",
            "pseudo_rule",
            "pseudo_ratio",
            "centre_gate",
            "pseudo_radius",
            "pseudo_fg",
            "pseudo_bg",
            "pseudo_fg_free",
            "pseudo_smooth",
            "use_gdbp",
        }
        fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
        blob = json.dumps([fields, [(t.image, t.y, t.x, t.size) for t in tset]], default=str)
        key = hashlib.sha1(blob.encode()).hexdigest()[:12]
        Path(args.cache).mkdir(parents=True, exist_ok=True)
    for name in names:
        img, gt = ds.load_image(name), ds.load_mask(name)
        f = Path(args.cache) / f"{key}_{name}.npz" if key else None
        if f is not None and f.is_file():
            with np.load(f) as z:
                resp, dmap = z["response"], z["gdbp"]
        else:
            r = det.detect(img)
            resp, dmap = r.response, r.gdbp
            if f is not None:
                np.savez(f, response=resp, gdbp=dmap)
        cache.append((name, img, gt, resp, dmap))
        print(f"{name}", file=sys.stderr)
    seconds = (time.perf_counter() - t0) / max(len(names), 1)

    def evaluate(c: DetectionConfig) -> dict:
        items, q = [], dict.fromkeys(("nuc", "nuc_ok", "bg", "bg_ok", "fg", "px"), 0)
        for name, img, gt, resp, dmap in cache:
            centres, _, pm = postprocess(img, resp, dmap, c, window=det._window)
            items.append((name, (pm == 1).astype(np.uint8), gt, centres))
            for k, v in pseudo_quality(pm, gt).items():
                q[k] += v
        agg = score_arrays(items)["aggregate"]
        keep = {k: agg[k] for k in agg if k.startswith(("P@", "R@", "F1@", "Dice"))}
        return {**keep, **summarise_quality(q)}

    result = {
        "split": args.split,
        "n_images": len(names),
        "templates": len(tset),
        "config": dataclasses.asdict(cfg),
        "seconds_per_image": seconds,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/eval_detection.py", *(argv or sys.argv[1:])]),
    }
    if args.sweep:
        rows = []
        if args.sweep == "centres" and args.min_scores:
            grid = [dict(min_score=float(v)) for v in args.min_scores.split(",")]
        elif args.sweep == "centres":
            grid = [
                dict(min_score=a, peak_distance=b, centre_gate=g)
                for a, b, g in itertools.product(
                    (0.2, 0.3, 0.4, 0.5, 0.6), (4, 6), (0.0, 0.3, 0.5, 0.7)
                )
            ]
        else:
            grid = [
                dict(pseudo_radius=a, pseudo_fg=b, pseudo_fg_free=c)
                for a, b, c in itertools.product((0.25, 0.35), (0.5, 0.8), (1.0, 0.95, 0.8))
            ]
        for params in grid:
            c = dataclasses.replace(cfg, **params)
            row = {**params, **evaluate(c)}
            rows.append(row)
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                file=sys.stderr,
            )
        if args.sweep == "centres":
            best = max(rows, key=lambda r: r["F1@12"])
        else:  # the targets: precise labels on both sides, then as much nucleus as possible
            ok = [
                r
                for r in rows
                if r["nucleus_label_precision"] >= 0.8 and r["background_label_precision"] >= 0.95
            ]
            best = max(
                ok or rows, key=lambda r: r["nucleus_label_coverage"] + 0.5 * r["confident_share"]
            )
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
