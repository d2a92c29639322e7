"""The multi-dataset protocol: every dataset, several template seeds, two baselines, transfer.

``run_protocol(ROOT, out=OUT)`` runs, for every dataset folder under ``ROOT`` that has
instance masks and for every template seed:

1. ``n`` templates from the dataset's train split
   (:func:`~mcf_fast.detection.selection.select_templates`);
2. MCF fitted on the train images (masks unused); its round-1 pseudo masks are scored
   against the train masks (:func:`~mcf_fast.evaluation.quality.pseudo_label_quality`); the model
   bundle is kept as ``OUT/<dataset>/seed<k>/model.mcf``;
3. predictions on the test split, scored (:func:`~mcf_fast.metrics.score_arrays`);
4. the *template watershed*: a watershed whose parameters come from the same templates
   alone (:func:`~mcf_fast.evaluation.baselines.watershed_params_from_templates`);

and once per dataset the *reference watershed*, whose parameters were tuned on the train
split of the reference dataset only (MoNuSeg by default): what a user gets with zero clicks
on a new dataset.  Finally every model is applied to the test split of every other dataset
(*transfer*).

Splits: a dataset with ``train/`` and ``test/`` folders uses them; a dataset with only
``images/`` + ``masks/`` is split deterministically by :func:`deterministic_split` (the
images sorted by the SHA-1 of their names, every third one to test).

Every (dataset, seed) result is written as soon as it exists (``result.json`` beside its
predictions), so an interrupted run resumes (``resume=True``) and several processes can
share one output folder (each with its own ``datasets``); ``OUT/protocol.md`` and
``OUT/protocol.json`` are rebuilt from all results found under ``OUT``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import ConfigError, DataError
from mcf_fast.io.images import atomic_path

__all__ = [
    "REFERENCES",
    "deterministic_split",
    "find_datasets",
    "run_protocol",
    "protocol_markdown",
]

#: published fully supervised results on the same test splits, in percent (HoVer-Net,
#: Graham et al., Medical Image Analysis 2019, Table 3: Kumar = MoNuSeg, CoNSeP), and the
#: MCF paper's own MoNuSeg numbers (Feng et al., ICCV 2021, Table 1)
REFERENCES: dict[str, dict[str, dict[str, float]]] = {
    "monuseg": {
        "HoVer-Net, fully supervised (reported)": {"Dice": 82.6, "AJI": 61.8, "PQ": 59.7},
        "MCF paper, 10 templates (reported)": {"Dice": 69.84},
    },
    "consep": {
        "HoVer-Net, fully supervised (reported)": {"Dice": 85.3, "AJI": 57.1, "PQ": 54.7},
    },
}

_KEYS = ("Dice", "AJI", "F1@12", "PQ")
_QUALITY = (
    "nucleus_precision",
    "nucleus_coverage",
    "background_precision",
    "tissue_background_precision",
    "tissue_background_coverage",
    "confident",
)


def deterministic_split(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train, test) names of a dataset without a split: every third name in SHA-1 order is test.

    Examples
    --------
    >>> deterministic_split(["a", "b", "c", "d"])
    (['c', 'a'], ['d', 'b'])
    """
    order = sorted(names, key=lambda n: hashlib.sha1(n.encode("utf-8")).hexdigest())
    test = order[::3]
    return [n for n in order if n not in test], test


def _dataset(root: Path, names: list[str] | None = None):
    from mcf_fast.io.datasets import FolderDataset

    ds = FolderDataset(root, require_masks=True)
    if names is not None:
        ds = copy.copy(ds)
        ds.names = list(names)
    return ds


def find_datasets(root: str | os.PathLike) -> dict[str, tuple[Any, Any, str]]:
    """Datasets under ``root``: name -> (train dataset, test dataset, how it is split).

    A folder counts when it has ``train/`` and ``test/`` (each ``images/`` + ``masks/``),
    or ``images/`` + ``masks/`` (split by :func:`deterministic_split`).

    Raises
    ------
    DataError
        When no folder under ``root`` is a dataset with masks.
    """
    base = Path(root)
    out: dict[str, tuple[Any, Any, str]] = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        if (d / "train" / "masks").is_dir() and (d / "test" / "masks").is_dir():
            out[d.name] = (_dataset(d / "train"), _dataset(d / "test"), "official train/test")
        elif (d / "images").is_dir() and (d / "masks").is_dir():
            whole = _dataset(d)
            train, test = deterministic_split(whole.names)
            out[d.name] = (
                _dataset(d, train),
                _dataset(d, test),
                "deterministic (every third image by SHA-1 of its name is test)",
            )
    if not out:
        raise DataError(
            f"{base}: no dataset found (expected folders with train/ and test/, or images/ "
            "and masks/, each holding instance masks)"
        )
    return out


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _score(items: list) -> dict[str, float]:
    from mcf_fast.metrics import score_arrays

    agg = score_arrays(items)["aggregate"]
    return {k: float(v) for k, v in agg.items() if isinstance(v, (int, float))}


def _predict_and_score(test, predict, folder: Path | None, progress: bool, desc: str):
    from tqdm.auto import tqdm

    from mcf_fast.evaluation.methods import write_prediction as _write_prediction

    items = []
    for name in tqdm(test.names, desc=desc, unit="image", disable=not progress, leave=False):
        labels, centres = predict(test.load_image(name))
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            _write_prediction(folder, name, labels, centres)
        items.append((name, labels, test.load_mask(name), centres))
    return _score(items)


def _mcf_predictor(model):
    def predict(image: np.ndarray):
        pred = model.predict(image)
        return pred.labels, np.asarray(pred.centres, np.float64).reshape(-1, 2)

    return predict


def _watershed_predictor(params):
    from mcf_fast.evaluation.baselines import watershed_nuclei

    return lambda image: (watershed_nuclei(image, params=params), None)


def _with_seed(config, seed: int, device: str):
    seg = dataclasses.replace(config.segmentation, seed=seed, device=device)
    return dataclasses.replace(config, segmentation=seg)


def run_protocol(
    data: str | os.PathLike,
    *,
    out: str | os.PathLike,
    seeds: Sequence[int] = (0, 1, 2),
    n_templates: int = 10,
    preset: str = "quick",
    config: Any | None = None,
    datasets: Sequence[str] | None = None,
    reference: str = "monuseg",
    transfer: bool = True,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = True,
    command: str | None = None,
    watershed_grid: dict[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Run the protocol (module docstring) and write ``OUT/protocol.{md,json}``.

    Parameters
    ----------
    data : path
        Folder holding the datasets (e.g. ``../shared/data``).
    out : path
        Output folder (shared by processes that run different ``datasets``).
    seeds : sequence of int
        Template seeds (each also seeds the U-Net training).
    n_templates : int
    preset, config
        The MCF configuration: a preset name, or an ``MCFConfig`` (``preset`` ignored).
    datasets : sequence of str, optional
        Only these datasets are fitted (all are used for transfer); all by default.
    reference : str
        The dataset whose train split tunes the reference watershed.
    transfer : bool
        Apply every finished model to the other datasets' test splits.
    device : str
    progress : bool
    resume : bool
        Keep the (dataset, seed) results already under ``OUT`` (default); False refits.
    command : str, optional
        The command line recorded in the report.
    watershed_grid : dict, optional
        Search space of the reference watershed's tuning (default:
        :data:`mcf_fast.evaluation.baselines.DEFAULT_GRID`).

    Returns
    -------
    dict
        The ``protocol.json`` document.
    """
    from mcf_fast.detection.selection import select_templates
    from mcf_fast.evaluation.baselines import (
        WatershedParams,
        tune_watershed,
        watershed_params_from_templates,
    )
    from mcf_fast.evaluation.provenance import machine_description
    from mcf_fast.evaluation.provenance import source_version as _source_version
    from mcf_fast.evaluation.quality import pseudo_label_quality
    from mcf_fast.framework.fit import MCF
    from mcf_fast.framework.model import MCFModel
    from mcf_fast.presets import get_preset

    out_dir = Path(out)
    found = find_datasets(data)
    chosen = list(found) if datasets is None else list(datasets)
    unknown = [d for d in chosen if d not in found]
    if unknown:
        raise ConfigError(f"datasets: {unknown} not found under {data} (found {sorted(found)})")
    if not seeds:
        raise ConfigError("seeds: expected at least one template seed")
    base_config = config if config is not None else get_preset(preset)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_info = {
        "command": command if command is not None else " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(device),
        "mcf_fast": _source_version(),
        "preset": preset if config is None else "custom",
        "n_templates": n_templates,
    }

    # the reference watershed: tuned once, on the reference dataset's train split only
    ref_path = out_dir / "watershed_reference.json"
    ref = _read_json(ref_path) if resume else None
    if ref is None:
        if reference not in found:
            raise ConfigError(f"reference = {reference!r}: not a dataset under {data}")
        train = found[reference][0]
        t0 = time.perf_counter()
        tuning = tune_watershed(
            [train.load_image(n) for n in train.names],
            [train.load_mask(n) for n in train.names],
            crop=512,
            progress=progress,
            **({} if watershed_grid is None else {"grid": watershed_grid}),
        )
        ref = {
            "reference": reference,
            "params": tuning.params.to_dict(),
            "train_score": tuning.score,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        _write_json(ref_path, ref)
    ref_params = WatershedParams.from_dict(ref["params"])

    for name in chosen:
        train, test, split = found[name]
        ds_dir = out_dir / name
        ws_path = ds_dir / "watershed_reference" / "result.json"
        if not (resume and ws_path.is_file()):
            t0 = time.perf_counter()
            scores = _predict_and_score(
                test,
                _watershed_predictor(ref_params),
                ws_path.parent,
                progress,
                f"{name}: reference watershed",
            )
            _write_json(
                ws_path,
                {"dataset": name, "method": "watershed_reference", "split": split,
                 "scores": scores, "seconds": round(time.perf_counter() - t0, 1)},
            )  # fmt: skip
        for seed in seeds:
            run_dir = ds_dir / f"seed{seed}"
            res_path = run_dir / "result.json"
            if resume and res_path.is_file() and (run_dir / "model.mcf").exists():
                continue
            templates = select_templates(train, n=n_templates, seed=seed)
            run_dir.mkdir(parents=True, exist_ok=True)
            templates.save(run_dir / "templates.json")
            t0 = time.perf_counter()
            tw = watershed_params_from_templates(templates)
            tw_scores = _predict_and_score(
                test,
                _watershed_predictor(tw),
                run_dir / "watershed_templates",
                progress,
                f"{name} seed {seed}: template watershed",
            )
            tw_s = time.perf_counter() - t0
            quality: dict[str, Any] = {}

            def on_pseudo(r: int, names: list[str], pseudo: list[np.ndarray], _t=train, _q=quality):
                images = [_t.load_image(n) for n in names]
                masks = [_t.load_mask(n) for n in names]
                _q[f"round{r + 1}"] = pseudo_label_quality(pseudo, masks, images)

            cfg = _with_seed(base_config, seed, device)
            t0 = time.perf_counter()
            model = MCF(cfg).fit(
                [train.load_image(n) for n in train.names],
                templates,
                names=list(train.names),
                progress=progress,
                checkpoint_dir=run_dir / "checkpoint",
                resume=resume,
                on_pseudo=on_pseudo,
            )
            fit_s = time.perf_counter() - t0
            model.save(run_dir / "model.mcf")
            t0 = time.perf_counter()
            mcf_scores = _predict_and_score(
                test, _mcf_predictor(model), run_dir / "mcf", progress, f"{name} seed {seed}: mcf"
            )
            _write_json(
                res_path,
                {
                    "dataset": name,
                    "seed": seed,
                    "split": split,
                    "n_train": len(train.names),
                    "n_test": len(test.names),
                    "mcf": mcf_scores,
                    "watershed_templates": tw_scores,
                    "watershed_templates_params": tw.to_dict(),
                    "pseudo_quality": quality,
                    "rounds": [
                        {k: e.get(k) for k in ("round", "n_templates", "pseudo_fractions")}
                        for e in model.history
                    ],
                    "n_templates_final": len(model.templates),
                    "fit_s": round(fit_s, 1),
                    "predict_s_per_image": round((time.perf_counter() - t0) / len(test.names), 2),
                    "watershed_templates_s": round(tw_s, 1),
                    **run_info,
                },
            )
            del model

    if transfer:
        for src in sorted(p.parent for p in out_dir.glob("*/seed*/model.mcf")):
            model = None
            for target, (_, test, _) in found.items():
                if target == src.parent.name:
                    continue
                path = src / "transfer" / f"{target}.json"
                if resume and path.is_file():
                    continue
                if model is None:
                    model = MCFModel.load(src / "model.mcf", device=device)
                scores = _predict_and_score(
                    test, _mcf_predictor(model), None, progress, f"{src.parent.name}->{target}"
                )
                _write_json(path, {"from": src.parent.name, "to": target, "scores": scores})
    doc = collect(out_dir)
    doc["run"] = run_info
    doc["watershed_reference"] = ref
    _write_json(out_dir / "protocol.json", doc)
    with atomic_path(out_dir / "protocol.md") as tmp:
        tmp.write_text(protocol_markdown(doc), encoding="utf-8")
    return doc


def collect(out: str | os.PathLike) -> dict[str, Any]:
    """All results under ``out``: per dataset its seeds, reference watershed and transfers."""
    out_dir = Path(out)
    per: dict[str, Any] = {}
    for path in sorted(out_dir.glob("*/watershed_reference/result.json")):
        r = _read_json(path)
        if r:
            per.setdefault(r["dataset"], {"seeds": {}, "transfer": {}})["reference"] = r
    for path in sorted(out_dir.glob("*/seed*/result.json")):
        r = _read_json(path)
        if r:
            per.setdefault(r["dataset"], {"seeds": {}, "transfer": {}})["seeds"][r["seed"]] = r
    for path in sorted(out_dir.glob("*/seed*/transfer/*.json")):
        r = _read_json(path)
        if r:
            seed = int(path.parent.parent.name[4:])
            d = per.setdefault(r["from"], {"seeds": {}, "transfer": {}})
            d["transfer"].setdefault(r["to"], {})[seed] = r["scores"]
    return {"datasets": per}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    m, s = _mean_sd([100.0 * x for x in values])
    return f"{m:.1f} ± {s:.1f}" if len(values) > 1 else f"{m:.1f}"


def protocol_markdown(doc: dict[str, Any]) -> str:
    """The ``protocol.md`` text: one table of all datasets, then quality and transfer."""
    run = doc.get("run", {})
    ref = doc.get("watershed_reference", {})
    lines = ["# mcf_fast multi-dataset protocol", ""]
    if run:
        m = run["machine"]
        lines += [
            f"- Command: `{run['command']}`",
            f"- Date: {run['date']}; machine: {m['cpu']} ({m['cpu_cores']} cores), "
            f"{m['os']}, Python {m['python']}",
            f"- mcf_fast: {run['mcf_fast']}; preset `{run['preset']}`, "
            f"{run['n_templates']} templates per seed",
        ]
    if ref:
        lines.append(
            f"- Reference watershed: tuned on `{ref['reference']}` train only, "
            f"`{json.dumps(ref['params'])}`"
        )
    lines += [
        "",
        "Scores in percent, pooled over each test split; mean ± standard deviation over the "
        "template seeds (n).",
        "",
        "| dataset | method | n | Dice | AJI | F1@12 | PQ |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    datasets = doc.get("datasets", {})
    for name, d in datasets.items():
        seeds = [d["seeds"][k] for k in sorted(d["seeds"])]
        rows = [
            ("MCF", [s["mcf"] for s in seeds]),
            ("watershed from the templates", [s["watershed_templates"] for s in seeds]),
        ]
        if "reference" in d:
            rows.append(("watershed tuned on the reference", [d["reference"]["scores"]]))
        for label, scores in rows:
            cells = " | ".join(_cell([sc[k] for sc in scores]) for k in _KEYS)
            lines.append(f"| {name} | {label} | {len(scores)} | {cells} |")
        for label, vals in REFERENCES.get(name, {}).items():
            cells = " | ".join(
                f"*{vals[k]:.1f}*" if k in vals else "" for k in _KEYS
            )  # fmt: skip
            lines.append(f"| {name} | *{label}* | | {cells} |")
    lines += [
        "",
        "## Pseudo labels of round 1 against the train masks",
        "",
        "Precision and coverage of the detector's pseudo masks (nucleus / background); "
        "*tissue* excludes white space. Mean over seeds.",
        "",
        "| dataset | " + " | ".join(_QUALITY) + " |",
        "|---|" + "---:|" * len(_QUALITY),
    ]
    for name, d in datasets.items():
        qs = [s["pseudo_quality"].get("round1") for s in d["seeds"].values()]
        qs = [q for q in qs if q]
        if qs:
            cells = " | ".join(f"{np.mean([q[k] for q in qs]):.3f}" for k in _QUALITY)
            lines.append(f"| {name} | {cells} |")
    lines += [
        "",
        "## Transfer: a model fitted on one dataset, scored on another's test split",
        "",
        "| fitted on | scored on | n | Dice | AJI | F1@12 | kept vs own | kept vs target's |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def mean_dice(name: str) -> float | None:
        d = datasets.get(name)
        if not d or not d["seeds"]:
            return None
        return float(np.mean([s["mcf"]["Dice"] for s in d["seeds"].values()]))

    for name, d in datasets.items():
        for target, by_seed in d.get("transfer", {}).items():
            sc = [by_seed[k] for k in sorted(by_seed)]
            dice = float(np.mean([s["Dice"] for s in sc]))
            own, tgt = mean_dice(name), mean_dice(target)
            kept = [f"{dice / v:.0%}" if v else "" for v in (own, tgt)]
            cells = " | ".join(_cell([s[k] for s in sc]) for k in ("Dice", "AJI", "F1@12"))
            lines.append(f"| {name} | {target} | {len(sc)} | {cells} | {kept[0]} | {kept[1]} |")
    lines += [
        "",
        "Kept vs own: the transferred Dice over the same models' Dice on their own dataset's "
        "test split; kept vs target's: over the Dice of the models fitted on the scored "
        "dataset itself.",
        "",
    ]
    return "\n".join(lines)
