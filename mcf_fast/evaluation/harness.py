"""The evaluation harness: the paper's protocol on a dataset with train and test splits.

Protocol (``ROOT/train`` and ``ROOT/test``, each ``images/`` + ``masks/``):

1. ``n`` templates are chosen from the train split by
   :func:`mcf_fast.detection.selection.select_templates` (the only labels MCF sees);
2. MCF is fitted on the train images (their masks unused) and predicts the test images;
3. every method's predictions are scored against the test masks with
   :func:`mcf_fast.metrics.score_arrays` and written under ``OUT/<method>/`` (instance labels
   ``<name>.png`` and, when the method detects centres, ``<name>.csv``), so that
   ``mcf score --data ROOT/test --pred OUT/<method>`` re-scores them.

Methods: ``mcf`` (the framework), ``watershed`` (the classical baseline of
:mod:`mcf_fast.evaluation.baselines`, its parameters tuned on the train masks only) and
``supervised`` (the same U-Net trained on the train masks: the upper bound).  Options add
the paper's Table 3 switches (``ablation``), the template-count sweep of its Fig. 5
(``templates_sweep``) and stain normalisation (``stain``: every run repeated per mode).

Results go to ``OUT/results.json`` (rewritten after each run, atomically) and
``OUT/results.md`` (our numbers beside the paper's, with the machine, date, command and wall
time).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mcf_fast.errors import ConfigError
from mcf_fast.evaluation.methods import (
    Context,
    Split,
    _run_detector,
    _run_mcf,
    _run_supervised,
    _run_watershed,
    _with_runtime,
    fit_mcf,
)
from mcf_fast.evaluation.paper import DETECTION_ABLATIONS, PAPER, SEGMENTATION_ABLATIONS
from mcf_fast.evaluation.provenance import machine_description, source_version

__all__ = [
    "METHODS",
    "STAIN_MODES",
    "run_evaluation",
]

METHODS = ("mcf", "watershed", "supervised")
STAIN_MODES = ("none", "auto", "macenko", "vahadane")


RESULTS_FORMAT = "mcf_fast.evaluation"
RESULTS_VERSION = 1


def _parse_list(value: str | Sequence[Any], *, name: str, kind: type = str) -> tuple:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for it in items:
        it = it.strip() if isinstance(it, str) else it
        if it == "":
            continue
        try:
            out.append(kind(it))
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {it!r} is not a valid {kind.__name__}") from None
    return tuple(out)


def run_evaluation(
    data: str | os.PathLike,
    *,
    out: str | os.PathLike,
    n_templates: int = 10,
    seed: int = 0,
    preset: str = "quick",
    methods: str | Sequence[str] = ("mcf", "watershed"),
    supervised: bool = False,
    ablation: bool = False,
    templates_sweep: str | Sequence[int] = (),
    stain: str | Sequence[str] = ("none",),
    device: str = "cpu",
    config: Any | None = None,
    limit: int | None = None,
    watershed_params: Any | None = None,
    tune_crop: int | None = 512,
    progress: bool = True,
    resume: bool = False,
    command: str | None = None,
    fit: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run the evaluation protocol and write ``OUT/results.{json,md}`` and predictions.

    Parameters
    ----------
    data : str or PathLike
        Dataset root holding ``train/`` and ``test/`` (``images/`` + ``masks/`` each).
    out : str or PathLike
        Output folder (created).
    n_templates, seed : int
        Template selection on the train split; `seed` also seeds the U-Net training.
    preset : str
        A name of :data:`mcf_fast.presets.PRESETS`; ignored when `config` is given.
    methods : str or sequence of str
        Any of ``mcf``, ``watershed``, ``supervised`` (comma-separated string or sequence).
    supervised : bool
        Also run the supervised upper bound (same as adding ``supervised`` to `methods`).
    ablation : bool
        Run the Table 3 switches: the detection ones on the detection branch alone, the
        segmentation ones as full MCF fits.  Only for the first stain mode.
    templates_sweep : str or sequence of int
        Template counts for the Fig. 5 sweep (full MCF fits).  Only for the first stain
        mode.
    stain : str or sequence of str
        Stain modes, each of ``none``, ``auto``, ``macenko``, ``vahadane``; every method
        runs once per mode.  The normaliser is fitted on the first train image.
    device : str
        ``cpu`` or ``cuda[:N]`` for the U-Net.
    config : MCFConfig, optional
        Overrides the preset (e.g. a tiny config in tests).
    limit : int, optional
        Use only the first `limit` images of each split (quick checks; marked in the
        results).
    watershed_params : WatershedParams or dict, optional
        Skip tuning and use these parameters.
    tune_crop : int or None
        Side of the central crop the watershed is tuned on (None: whole images).
    progress : bool
        Show tqdm bars on stderr.
    resume : bool
        Continue each MCF fit from its checkpoint under ``OUT/checkpoints/`` (written
        after every round) when one matches the same images, templates and settings.
    command : str, optional
        The command line to record (defaults to ``sys.argv``).
    fit : callable, optional
        Fits MCF for one run, as ``fit(ctx, config, templates, stain, normalizer, folder)``
        returning a model with ``predict``; default
        :func:`~mcf_fast.evaluation.methods.fit_mcf`.

    Returns
    -------
    dict
        The content of ``results.json``.

    Raises
    ------
    DataError
        If ``ROOT/train`` or ``ROOT/test`` is missing or lacks masks.
    ConfigError
        For an unknown method, stain mode or preset, or a bad template count.
    """
    t_start = time.perf_counter()
    root = Path(data)
    out_dir = Path(out)
    methods_t = _parse_list(methods, name="methods")
    for m in methods_t:
        if m not in METHODS:
            raise ConfigError(f"methods: unknown method {m!r}; expected some of {METHODS}")
    if supervised and "supervised" not in methods_t:
        methods_t = (*methods_t, "supervised")
    stains = _parse_list(stain, name="stain")
    for s in stains:
        if s not in STAIN_MODES:
            raise ConfigError(f"stain: unknown mode {s!r}; expected some of {STAIN_MODES}")
    if not stains:
        stains = ("none",)
    sweep = _parse_list(templates_sweep, name="templates_sweep", kind=int)
    for k in (n_templates, *sweep):
        if k < 1:
            raise ConfigError(f"template count {k}: expected a positive integer")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit = {limit}: expected a positive integer")
    if config is None:
        from mcf_fast.presets import PRESETS

        if preset not in PRESETS:
            raise ConfigError(f"preset {preset!r}: expected one of {sorted(PRESETS)}")
        config = PRESETS[preset]
        preset_name = preset
    else:
        preset_name = "custom"
    config = _with_runtime(config, device, seed)

    train = Split(root / "train", require_masks=True, limit=limit)
    test = Split(root / "test", require_masks=True, limit=limit)
    out_dir.mkdir(parents=True, exist_ok=True)

    from mcf_fast.config import config_to_dict
    from mcf_fast.detection.selection import select_templates

    templates = select_templates(train.dataset, n=n_templates, seed=seed, progress=progress)
    templates.save(out_dir / "templates.json")

    report: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "complete": False,
        "command": command if command is not None else " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(device),
        "mcf_fast": source_version(),
        "data": str(root),
        "n_train": len(train.names),
        "n_test": len(test.names),
        "limited": limit is not None,
        "n_templates": n_templates,
        "seed": seed,
        "templates_file": "templates.json",
        "preset": preset_name,
        "device": device,
        "config": config_to_dict(config),
        "stain": {},
        "runs": [],
        "paper": PAPER,
        "_t0": t_start,
    }
    ctx = Context(
        out=out_dir,
        train=train,
        test=test,
        config=config,
        device=device,
        progress=progress,
        report=report,
        resume=resume,
        fit=fit if fit is not None else fit_mcf,
    )
    ctx.save()

    def record(row: dict[str, Any], t0: float) -> None:
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        report["runs"].append(row)
        ctx.save()

    for si, mode in enumerate(stains):
        normalizer = None
        if mode != "none":
            from mcf_fast.ops.stain import StainNormalizer

            reference = train.names[0]
            normalizer = StainNormalizer(mode).fit(train.image(reference))
            report["stain"][mode] = {"reference": reference, **normalizer.to_dict()}
        suffix = "" if mode == "none" else f"-{mode}"
        for method in methods_t:
            t0 = time.perf_counter()
            row: dict[str, Any] = {
                "section": "main",
                "method": method,
                "variant": "",
                "stain": mode,
            }
            if method == "mcf":
                row.update(
                    _run_mcf(
                        ctx,
                        config=config,
                        templates=templates,
                        stain=mode,
                        normalizer=normalizer,
                        folder=f"mcf{suffix}",
                        desc=f"mcf [{mode}]",
                    )
                )
            elif method == "watershed":
                row.update(
                    _run_watershed(
                        ctx,
                        stain=mode,
                        normalizer=normalizer,
                        folder=f"watershed{suffix}",
                        params=watershed_params,
                        tune_crop=tune_crop,
                    )
                )
            else:
                row.update(
                    _run_supervised(
                        ctx, stain=mode, normalizer=normalizer, folder=f"supervised{suffix}"
                    )
                )
            record(row, t0)
        if si > 0:
            continue
        if ablation:
            t0 = time.perf_counter()
            row = {
                "section": "ablation-detection",
                "method": "detector",
                "variant": "MCF",
                "stain": mode,
            }
            row.update(
                _run_detector(
                    ctx,
                    det_config=config.detection,
                    templates=templates,
                    stain=mode,
                    normalizer=normalizer,
                    folder="ablation/detector-full",
                    desc="detector",
                )
            )
            record(row, t0)
            for name, fields in DETECTION_ABLATIONS.items():
                t0 = time.perf_counter()
                det_cfg = dataclasses.replace(config.detection, **fields)
                row = {
                    "section": "ablation-detection",
                    "method": "detector",
                    "variant": name,
                    "stain": mode,
                    "switch": fields,
                }
                row.update(
                    _run_detector(
                        ctx,
                        det_config=det_cfg,
                        templates=templates,
                        stain=mode,
                        normalizer=normalizer,
                        folder=f"ablation/detector{_slug(name)}",
                        desc=f"detector {name}",
                    )
                )
                record(row, t0)
            for name, fields in SEGMENTATION_ABLATIONS.items():
                t0 = time.perf_counter()
                cfg = dataclasses.replace(
                    config, segmentation=dataclasses.replace(config.segmentation, **fields)
                )
                row = {
                    "section": "ablation-segmentation",
                    "method": "mcf",
                    "variant": name,
                    "stain": mode,
                    "switch": fields,
                }
                same = _main_mcf_row(report, mode) if cfg == config else None
                if same is not None:  # the switch is already off in this preset: same fit
                    row.update(_reused(same))
                else:
                    row.update(
                        _run_mcf(
                            ctx,
                            config=cfg,
                            templates=templates,
                            stain=mode,
                            normalizer=normalizer,
                            folder=f"ablation/mcf{_slug(name)}",
                            desc=f"mcf {name}",
                        )
                    )
                record(row, t0)
        for k in sweep:
            t0 = time.perf_counter()
            row = {
                "section": "sweep",
                "method": "mcf",
                "variant": f"n={k}",
                "stain": mode,
                "n_templates": k,
            }
            same = _main_mcf_row(report, mode) if k == n_templates else None
            if same is not None:  # the main run already fitted this template set
                row.update(_reused(same))
            else:
                tset = select_templates(train.dataset, n=k, seed=seed)
                row.update(
                    _run_mcf(
                        ctx,
                        config=config,
                        templates=tset,
                        stain=mode,
                        normalizer=normalizer,
                        folder=f"sweep/mcf-n{k}",
                        desc=f"mcf n={k}",
                    )
                )
            record(row, t0)

    report["complete"] = True
    ctx.save()
    return {k: v for k, v in report.items() if not k.startswith("_")}


def _main_mcf_row(report: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """The main-section MCF run of stain `mode`, if this evaluation made one."""
    for r in report["runs"]:
        if r["section"] == "main" and r["method"] == "mcf" and r["stain"] == mode:
            return r
    return None


def _reused(main_row: dict[str, Any]) -> dict[str, Any]:
    """A row whose settings equal the main MCF run's: its results, marked as such."""
    keep = {
        k: v
        for k, v in main_row.items()
        if k not in ("section", "method", "variant", "stain", "wall_s")
    }
    return {**keep, "same_as_main": True}


def _slug(name: str) -> str:
    """A folder-safe form of an ablation name: '-CFF' -> '-no-cff', 'H=1' -> '-h1'."""
    s = name.lower().replace(".", "").replace("=", "")
    if s.startswith("-"):
        return "-no-" + s[1:]
    if s.startswith("+"):
        return "-plus-" + s[1:]
    return "-" + s
