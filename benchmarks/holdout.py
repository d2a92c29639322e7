"""Compare MCF settings on a hold-out inside a dataset's train split (test splits untouched).

The hold-out: the train images sorted by the SHA-1 of their names; every third one (from the
first) is held out, the rest are the fitting images.  Templates are selected from the fitting
images only (``select_templates``, seed ``--seed``); MCF is fitted on them (masks unused) and
its predictions on the held-out images are scored against their masks.  Preset choices are
made with this script, never with a test split.

    python benchmarks/holdout.py --data ../shared/data/consep --seed 0 \
        --set segmentation.max_rounds=1 --set detection.pseudo_background='"colour"'

Prints one JSON line: the settings, Dice, AJI, F1@12, PQ and the seconds taken.  Each
``--variant`` (prediction-time settings only, ``;``-separated ``part.field=JSON``) rescores
the same fitted model, one more line each, so that labelling rules are compared without the
run-to-run noise of a fit:

    python benchmarks/holdout.py --data ../shared/data/consep \
        --set segmentation.target='"distance"' --set segmentation.instance_seeds='"shape"' \
        --variant 'segmentation.instance_seeds="hmaxima"' --variant 'segmentation.shape_h=0.3'

``--save DIR`` keeps each scored model; ``--model FILE`` (with the same ``--data`` and
``--seed``) scores a kept model and its variants again without fitting.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def holdout_split(names: list[str]) -> tuple[list[str], list[str]]:
    """(fitting, held-out) names: the protocol's deterministic split applied to a train split."""
    from mcf_fast.evaluation.protocol import deterministic_split

    return deterministic_split(names)


def _override(config, assignments: list[str]):
    for item in assignments:
        key, _, value = item.partition("=")
        part, _, field = key.partition(".")
        sub = getattr(config, part)
        sub = dataclasses.replace(sub, **{field: json.loads(value)})
        config = dataclasses.replace(config, **{part: sub})
    return config


def main() -> None:
    from mcf_fast.detection.selection import select_templates
    from mcf_fast.framework.fit import MCF
    from mcf_fast.io.datasets import FolderDataset
    from mcf_fast.presets import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset root (with train/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--n-templates", type=int, default=10)
    ap.add_argument("--max-fit", type=int, default=0, help="use at most this many fit images")
    ap.add_argument("--max-held", type=int, default=0, help="score at most this many")
    ap.add_argument("--set", action="append", default=[], help="part.field=JSON value")
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--per-round",
        action="store_true",
        help="score after every round: fit 1 round, then resume the checkpoint for the next",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="prediction-time settings to rescore with, ';'-separated part.field=JSON",
    )
    ap.add_argument(
        "--save",
        default=None,
        help="folder to save each scored model in (DATA-seedS-TAG-roundR.mcf), so that later "
        "prediction-time variants need no refit (--model)",
    )
    ap.add_argument(
        "--model",
        default=None,
        help="a model saved by --save: score it (and its --variant lines) without fitting",
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    ds = FolderDataset(Path(args.data) / "train", require_masks=True)
    fit_names, held = holdout_split(list(ds.names))
    if args.max_fit:
        fit_names = fit_names[: args.max_fit]
    if args.max_held:
        held = held[: args.max_held]
    if args.model is not None:
        from mcf_fast.framework.model import MCFModel

        model = MCFModel.load(args.model)
        images = {n: ds.load_image(n) for n in held}
        _score(args, model.config, model, ds, fit_names, held, images, 0.0)
        return
    fit_ds = copy.copy(ds)
    fit_ds.names = list(fit_names)
    templates = select_templates(fit_ds, n=args.n_templates, seed=args.seed, progress=False)
    config = _override(PRESETS[args.preset], args.set)
    config = dataclasses.replace(
        config, segmentation=dataclasses.replace(config.segmentation, seed=args.seed)
    )
    fit_images = [ds.load_image(n) for n in fit_names]
    images = {n: ds.load_image(n) for n in held}
    rounds = config.segmentation.max_rounds
    with tempfile.TemporaryDirectory() as ckpt:
        for r in range(1, rounds + 1) if args.per_round else [rounds]:
            cfg = dataclasses.replace(
                config, segmentation=dataclasses.replace(config.segmentation, max_rounds=r)
            )
            model = MCF(cfg).fit(
                fit_images,
                templates,
                names=fit_names,
                progress=False,
                checkpoint_dir=Path(ckpt),
                resume=True,
            )
            if len(model.history) < r:  # the loop stopped early: no later round to score
                break
            seconds = time.perf_counter() - t0
            if args.save is not None:
                name = f"{Path(args.data).name}-seed{args.seed}-{args.tag or 'fit'}-round{r}.mcf"
                model.save(Path(args.save) / name)
            _score(args, cfg, model, ds, fit_names, held, images, seconds)


def _score(args, config, model, ds, fit_names, held, images, seconds) -> None:
    from mcf_fast.metrics import score_arrays

    for variant in ["", *args.variant]:
        assignments = [a for a in variant.split(";") if a.strip()]
        model.config = _override(config, assignments)
        items = []
        for n in held:
            pred = model.predict(images[n])
            items.append((n, pred.labels, ds.load_mask(n), np.asarray(pred.centres)))
        agg = score_arrays(items)["aggregate"]
        print(
            json.dumps(
                {
                    "data": Path(args.data).name,
                    "seed": args.seed,
                    "set": args.set,
                    "variant": assignments,
                    "tag": args.tag,
                    **({"model": Path(args.model).name} if args.model else {}),
                    "n_fit": len(fit_names),
                    "n_held": len(held),
                    "round": len(model.history),
                    **{k: round(float(agg[k]), 4) for k in ("Dice", "AJI", "F1@12", "PQ")},
                    "seconds": round(seconds, 1),
                    "rounds": [
                        {k: e.get(k) for k in ("n_templates", "pseudo_fractions")}
                        for e in model.history
                    ],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
