"""Pseudo-label quality of the detector's rules on train splits, one row per rule and dataset.

Each train image is detected once (features, correlation, fusion, GDBP); the pseudo-mask
rules then run on the same response, so the rows differ only by the rule.  Scores are those
of :func:`mcf_fast.evaluation.quality.pseudo_label_quality` against the train masks (never a
test split).

    python benchmarks/pseudo_quality.py --data ../shared/data --seed 0 --every 3

Rules compared: ``colour`` (background only where the colour posterior is low: mostly
white space), ``tissue`` (also non-nuclear tissue, ``ops.pseudo.tissue_background``),
``tissue+fill`` (also the pale interiors of vesicular nuclei), all three with nucleus labels
from the learnt colour posterior, and ``stain``, the default: ``tissue+fill`` with nucleus
labels from the hematoxylin channel (``pseudo_nucleus="hematoxylin"``).  Extra rules
(``--rule``) change fields of the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

_POSTERIOR = {"pseudo_nucleus": "posterior"}
RULES = {
    "colour": {"pseudo_background": "colour", "pseudo_fill_holes": False, **_POSTERIOR},
    "tissue": {"pseudo_background": "tissue", "pseudo_fill_holes": False, **_POSTERIOR},
    "tissue+fill": {"pseudo_background": "tissue", "pseudo_fill_holes": True, **_POSTERIOR},
    "stain": {},
}


def main() -> None:
    from mcf_fast.config import DetectionConfig
    from mcf_fast.detection.detector import Detector, postprocess
    from mcf_fast.detection.selection import select_templates
    from mcf_fast.evaluation.protocol import find_datasets
    from mcf_fast.evaluation.quality import pseudo_label_quality
    from mcf_fast.ops.fusion import normalise_response
    from mcf_fast.ops.gdbp import gdbp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder of datasets")
    ap.add_argument("--seed", type=int, default=0, help="template seed")
    ap.add_argument("--every", type=int, default=1, help="use every k-th train image")
    ap.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="NAME:FIELD=JSON,...",
        help="an extra rule: the default one with these DetectionConfig fields changed",
    )
    ap.add_argument("--datasets", default="", help="comma-separated dataset names (default all)")
    args = ap.parse_args()
    rules = dict(RULES)
    for spec in args.rule:
        name, _, fields = spec.partition(":")
        changes = dict(RULES["stain"])
        for item in filter(None, fields.split(",")):
            key, _, value = item.partition("=")
            changes[key] = json.loads(value)
        rules[name] = changes
    wanted = set(filter(None, args.datasets.split(",")))

    for name, (train, _, _) in find_datasets(args.data).items():
        if wanted and name not in wanted:
            continue
        templates = select_templates(train, n=10, seed=args.seed)
        det = Detector(templates)
        names = train.names[:: args.every]
        per_rule: dict[str, list] = {r: [] for r in rules}
        images, masks = [], []
        for n in names:
            img = train.load_image(n)
            sn = normalise_response(det.fused_response(det.features(img)))
            d = gdbp(sn, p=det.config.gdbp_p, q=det.config.gdbp_q)
            for rule, fields in rules.items():
                cfg = dataclasses.replace(DetectionConfig(), **fields)
                per_rule[rule].append(postprocess(img, sn, d, cfg, window=det.window)[2])
            images.append(img)
            masks.append(train.load_mask(n))
        for rule, pseudo in per_rule.items():
            q = pseudo_label_quality(pseudo, masks, images)
            row = {"dataset": name, "seed": args.seed, "images": len(names), "rule": rule}
            print(json.dumps({**row, **{k: round(v, 4) for k, v in q.items()}}), flush=True)


if __name__ == "__main__":
    main()
