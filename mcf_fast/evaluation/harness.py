"""The evaluation harness: the paper's protocol on a dataset with train and test splits.

Protocol (``ROOT/train`` and ``ROOT/test``, each ``images/`` + ``masks/``):

1. ``n`` templates are chosen from the train split by
   :func:`mcf_fast.io.templates.select_templates` (the only labels MCF sees);
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

import copy
import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import ConfigError, DataError
from mcf_fast.io.images import atomic_path, write_image

__all__ = [
    "METHODS",
    "STAIN_MODES",
    "DETECTION_ABLATIONS",
    "SEGMENTATION_ABLATIONS",
    "PAPER",
    "run_evaluation",
    "results_markdown",
    "machine_description",
]

METHODS = ("mcf", "watershed", "supervised")
STAIN_MODES = ("none", "auto", "macenko", "vahadane")

#: Table 3 detection switches -> DetectionConfig fields
DETECTION_ABLATIONS: dict[str, dict[str, Any]] = {
    "-CFF": {"use_cff": False},
    "-MFF": {"use_mff": False},
    "H=1": {"top_h": 1},
    "mean": {"fusion": "mean"},
    "-GDBP": {"use_gdbp": False},
}
#: Table 3 segmentation switches -> SegmentationConfig fields
SEGMENTATION_ABLATIONS: dict[str, dict[str, Any]] = {
    "-seg.": {"use_network": False},
    "-self.": {"use_self_finetune": False},
    "-syn.": {"use_synthetic": False},
    "CE": {"loss": "ce"},
    "+weig.": {"loss": "weighted"},
}

#: The paper's MICCAI18 (MoNuSeg) numbers, in percent, original test samples ("score 1").
PAPER: dict[str, Any] = {
    "source": "Feng et al., ICCV 2021, Tables 1-3 (MICCAI18 = MoNuSeg 2018, score 1)",
    "table1": {  # segmentation
        "Hou (unsupervised)": {
            "PA": 89.14,
            "MPA": 76.95,
            "IoU": 52.51,
            "FWIoU": 80.05,
            "Dice": 68.87,
        },
        "Mahmood (weakly sup.)": {
            "PA": 86.27,
            "MPA": 75.88,
            "IoU": 47.61,
            "FWIoU": 76.35,
            "Dice": 64.51,
        },
        "MedT": {"PA": 91.05, "MPA": 85.25, "IoU": 64.50, "FWIoU": 83.93, "Dice": 78.42},
        "FCN-based": {"PA": 85.41, "MPA": 81.83, "IoU": 52.87, "FWIoU": 76.12, "Dice": 69.17},
        "U-Net (supervised)": {
            "PA": 91.72,
            "MPA": 87.04,
            "IoU": 67.35,
            "FWIoU": 85.10,
            "Dice": 80.49,
        },
        "Mask R-CNN": {"PA": 89.78, "MPA": 80.85, "IoU": 57.98, "FWIoU": 81.57, "Dice": 73.40},
        "MCF": {"PA": 86.39, "MPA": 81.43, "IoU": 53.66, "FWIoU": 77.30, "Dice": 69.84},
        "Detection": {"PA": 72.50, "MPA": 76.70, "IoU": 41.05, "FWIoU": 60.33, "Dice": 58.21},
    },
    "table2": {  # detection; the matching radius is not stated in the paper
        "CAE": {"P": 43.71, "R": 64.14, "F": 51.99},
        "SSAE": {"P": 62.54, "R": 57.80, "F": 60.08},
        "Mask R-CNN": {"P": 82.73, "R": 79.31, "F": 80.98},
        "MCF": {"P": 65.40, "R": 78.99, "F": 71.56},
    },
    "table3_detection": {
        "-CFF": {"P": 59.92, "R": 79.57, "F": 68.36},
        "-MFF": {"P": 50.27, "R": 89.68, "F": 64.43},
        "H=1": {"P": 55.12, "R": 77.16, "F": 64.30},
        "mean": {"P": 53.84, "R": 76.33, "F": 63.14},
        "-GDBP": {"P": 64.36, "R": 71.82, "F": 67.89},
        "MCF": {"P": 65.40, "R": 78.99, "F": 71.56},
    },
    "table3_segmentation": {
        "-seg.": {"PA": 72.50, "MPA": 76.70, "IoU": 41.05, "FWIoU": 60.33, "Dice": 58.21},
        "-self.": {"PA": 85.56, "MPA": 78.71, "IoU": 50.01, "FWIoU": 75.95, "Dice": 66.68},
        "-syn.": {"PA": 84.38, "MPA": 79.62, "IoU": 49.71, "FWIoU": 74.63, "Dice": 66.41},
        "CE": {"PA": 86.32, "MPA": 69.47, "IoU": 38.63, "FWIoU": 61.39, "Dice": 55.73},
        "+weig.": {"PA": 73.69, "MPA": 77.52, "IoU": 40.99, "FWIoU": 61.98, "Dice": 58.14},
        "MCF": {"PA": 86.39, "MPA": 81.43, "IoU": 53.66, "FWIoU": 77.30, "Dice": 69.84},
    },
}

RESULTS_FORMAT = "mcf_fast.evaluation"
RESULTS_VERSION = 1


# ------------------------------------------------------------------------------- helpers
def machine_description(device: str = "cpu") -> dict[str, Any]:
    """The machine a run happened on: OS, CPU model and count, library versions, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "os": platform.platform(terse=True),
        "cpu": cpu,
        "cpu_cores": n_cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if "torch" in sys.modules or device != "cpu":
        import torch

        info["torch"] = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _source_version() -> str:
    """mcf_fast's version, plus the git commit (and '+dirty') when run from a checkout."""
    import subprocess

    from mcf_fast import __version__

    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "mcf_fast",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return __version__
    flag = "+dirty" if dirty.stdout.strip() else ""
    return f"{__version__} (git {commit.stdout.strip()}{flag})"


def _machine_line(m: dict[str, Any]) -> str:
    s = f"{m['cpu']} ({m['cpu_cores']} cores), {m['os']}, Python {m['python']}"
    if "gpu" in m:
        s += f", GPU {m['gpu']}"
    return s


def _csv_points(path: Path, centres: np.ndarray) -> None:
    """Centres (pixel-index) as a y,x CSV in pixel corners, the convention of every CSV."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write("y,x\n")
            for y, x in np.asarray(centres, dtype=np.float64).reshape(-1, 2) + 0.5:
                fh.write(f"{float(y)!r},{float(x)!r}\n")


def _write_prediction(
    folder: Path, name: str, labels: np.ndarray, centres: np.ndarray | None
) -> None:
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > np.iinfo(np.uint16).max:
        write_image(folder / f"{name}.tif", labels.astype(np.uint32))
    else:
        write_image(folder / f"{name}.png", labels.astype(np.uint16))
    if centres is not None:
        _csv_points(folder / f"{name}.csv", centres)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _strip_counts(result: dict[str, Any]) -> dict[str, Any]:
    agg = {k: v for k, v in result["aggregate"].items() if k != "counts"}
    per = [{k: v for k, v in r.items() if k != "counts"} for r in result["per_image"]]
    return {"aggregate": agg, "per_image": per}


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


class _Split:
    """One split of the dataset: names, images loaded once, masks on demand."""

    def __init__(self, root: Path, *, require_masks: bool, limit: int | None) -> None:
        from mcf_fast.io.datasets import FolderDataset

        if not root.is_dir():
            raise DataError(
                f"{root}: dataset split folder not found (expected images/ and masks/ inside)"
            )
        dataset = FolderDataset(root, require_masks=require_masks)
        if limit:
            # the same dataset restricted to its first `limit` images (it lists self.names)
            dataset = copy.copy(dataset)
            dataset.names = list(dataset.names[:limit])
        self.dataset = dataset
        self.names: list[str] = list(dataset.names)
        self._images: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}

    def image(self, name: str) -> np.ndarray:
        if name not in self._images:
            self._images[name] = self.dataset.load_image(name)
        return self._images[name]

    def mask(self, name: str) -> np.ndarray:
        if name not in self._masks:
            self._masks[name] = self.dataset.load_mask(name)
        return self._masks[name]

    def images(self) -> list[np.ndarray]:
        return [self.image(n) for n in self.names]

    def masks(self) -> list[np.ndarray]:
        return [self.mask(n) for n in self.names]


# ------------------------------------------------------------------------------ the runner
@dataclasses.dataclass
class _Context:
    out: Path
    train: _Split
    test: _Split
    config: Any
    device: str
    progress: bool
    report: dict[str, Any]
    resume: bool = False
    normalised: dict[tuple[str, str, str], np.ndarray] = dataclasses.field(default_factory=dict)

    def images(self, split: str, stain: str, normalizer: Any) -> list[np.ndarray]:
        s = self.train if split == "train" else self.test
        if normalizer is None:
            return s.images()
        out = []
        for n in s.names:
            key = (split, stain, n)
            if key not in self.normalised:
                self.normalised[key] = normalizer.transform(s.image(n))
            out.append(self.normalised[key])
        return out

    def save(self) -> None:
        self.report["wall_s"] = round(time.perf_counter() - self.report["_t0"], 1)
        public = {k: v for k, v in self.report.items() if not k.startswith("_")}
        text = json.dumps(public, indent=1, default=_json_default, allow_nan=True)
        with atomic_path(self.out / "results.json") as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        md = results_markdown(public)
        with atomic_path(self.out / "results.md") as tmp:
            tmp.write_text(md, encoding="utf-8")


Predictor = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def _score_and_write(
    ctx: _Context,
    *,
    folder: str,
    predict: Predictor,
    images: Sequence[np.ndarray],
    desc: str,
    detected: Callable[[], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Predict every test image, write it under OUT/folder, score against the test masks.

    `detected`, when given, returns the detector's own centres of the image just predicted
    (None when the detector did not run); they are scored separately as
    ``detector_centres`` (P/R/F1 at 6 and 12 px).
    """
    from tqdm.auto import tqdm

    from mcf_fast.metrics import instance_centres, match_centres, score_arrays

    pred_dir = ctx.out / folder
    pred_dir.mkdir(parents=True, exist_ok=True)
    items = []
    det_counts = {r: [0, 0, 0] for r in _RADII}
    seen = False
    for i, name in enumerate(
        tqdm(ctx.test.names, desc=desc, unit="image", disable=not ctx.progress, leave=False)
    ):
        labels, centres = predict(i, images[i])
        _write_prediction(pred_dir, name, labels, centres)
        gt = ctx.test.mask(name)
        items.append((name, labels, gt, centres))
        found = detected() if detected is not None else None
        if found is not None:
            seen = True
            gt_c = instance_centres(gt)
            for r in _RADII:
                tp, fp, fn = match_centres(found, gt_c, r)
                det_counts[r][0] += tp
                det_counts[r][1] += fp
                det_counts[r][2] += fn
    result = score_arrays(items)
    out = {"pred_dir": folder, **_strip_counts(result)}
    if seen:
        out["detector_centres"] = _prf(det_counts)
    return out


_RADII = (6, 12)


def _prf(counts: dict[int, list[int]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r, (tp, fp, fn) in counts.items():
        p = tp / (tp + fp) if tp + fp else float(tp + fp + fn == 0)
        rc = tp / (tp + fn) if tp + fn else float(tp + fp + fn == 0)
        out[f"P@{r}"] = p
        out[f"R@{r}"] = rc
        out[f"F1@{r}"] = 2 * p * rc / (p + rc) if p + rc else 0.0
    return out


def _with_runtime(config: Any, device: str, seed: int) -> Any:
    return dataclasses.replace(
        config, segmentation=dataclasses.replace(config.segmentation, device=device, seed=seed)
    )


def _fit_mcf(
    ctx: _Context, config: Any, templates: Any, stain: str, normalizer: Any, folder: str
) -> Any:
    from mcf_fast.framework.fit import MCF

    # MCF normalises the images (and template crops) itself when given a normaliser, and
    # records it in the model, so it gets the raw images here.  A checkpoint per fit lets
    # an interrupted evaluation resume.
    return MCF(config).fit(
        ctx.train.images(),
        templates,
        names=ctx.train.names,
        stain=normalizer,
        progress=ctx.progress,
        checkpoint_dir=ctx.out / "checkpoints" / folder,
        resume=ctx.resume,
    )


def _run_mcf(
    ctx: _Context,
    *,
    config: Any,
    templates: Any,
    stain: str,
    normalizer: Any,
    folder: str,
    desc: str,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = _fit_mcf(ctx, config, templates, stain, normalizer, folder)
    fit_s = time.perf_counter() - t0

    last: list[np.ndarray] = []

    def predict(i: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        pred = model.predict(image, detect=True)  # the detector's own centres are scored too
        last[:] = [np.asarray(pred.detected_centres, dtype=np.float64).reshape(-1, 2)]
        return pred.labels, np.asarray(pred.centres, dtype=np.float64).reshape(-1, 2)

    res = _score_and_write(
        ctx,
        folder=folder,
        predict=predict,
        images=ctx.test.images(),
        desc=desc,
        detected=lambda: last[0],
    )
    res["fit_s"] = round(fit_s, 1)
    n_final = _n_templates(model)
    if n_final is not None:
        res["n_templates_final"] = n_final
    return res


def _n_templates(model: Any) -> int | None:
    t = getattr(model, "templates", None)
    try:
        return len(t) if t is not None else None
    except TypeError:
        return None


def _run_watershed(
    ctx: _Context,
    *,
    stain: str,
    normalizer: Any,
    folder: str,
    params: Any | None,
    tune_crop: int | None,
) -> dict[str, Any]:
    from mcf_fast.evaluation.baselines import WatershedParams, tune_watershed, watershed_nuclei

    tuning = None
    if params is None:
        tuning = tune_watershed(
            ctx.images("train", stain, normalizer),
            ctx.train.masks(),
            crop=tune_crop,
            progress=ctx.progress,
        )
        params = tuning.params
    elif isinstance(params, dict):
        params = WatershedParams.from_dict(params)

    def predict(i: int, image: np.ndarray) -> tuple[np.ndarray, None]:
        return watershed_nuclei(image, params=params), None

    res = _score_and_write(
        ctx,
        folder=folder,
        predict=predict,
        images=ctx.images("test", stain, normalizer),
        desc=f"watershed [{stain}]",
    )
    res["params"] = params.to_dict()
    if tuning is not None:
        res["tuning"] = {
            "objective": "mean of Dice, AJI, F1@12 on the train split",
            "train_score": tuning.score,
            "crop": tune_crop,
            "n_evaluated": len(tuning.history),
        }
    return res


def _run_supervised(ctx: _Context, *, stain: str, normalizer: Any, folder: str) -> dict[str, Any]:
    from mcf_fast.ops.instances import instance_labels
    from mcf_fast.segmentation.train import predict_proba, train_unet

    seg = ctx.config.segmentation
    targets = [(m > 0).astype(np.int8) for m in ctx.train.masks()]
    t0 = time.perf_counter()
    net = train_unet(
        ctx.images("train", stain, normalizer),
        targets,
        seg,
        loss="ce",
        progress=ctx.progress,
        desc="train supervised U-Net",
    )
    fit_s = time.perf_counter() - t0

    def predict(i: int, image: np.ndarray) -> tuple[np.ndarray, None]:
        p1 = predict_proba(net, image, device=seg.device, tile=seg.tile, flips=seg.tta_flips)
        # 0.5: trained on full masks, its probability has no unknown-pixel bias to offset
        labels = instance_labels(
            p1,
            threshold=0.5,
            min_area=seg.min_nucleus_area,
            seeds=seg.instance_seeds,
            h=seg.instance_h,
        )
        return labels, None

    res = _score_and_write(
        ctx,
        folder=folder,
        predict=predict,
        images=ctx.images("test", stain, normalizer),
        desc=f"supervised [{stain}]",
    )
    res["fit_s"] = round(fit_s, 1)
    return res


def _restain_templates(ctx: _Context, templates: Any, stain: str, normalizer: Any) -> Any:
    """The same template set with its crops cut from the stain-normalised train images."""
    if normalizer is None:
        return templates
    from mcf_fast.io.templates import Template, TemplateSet, crop_template

    new = []
    for t in templates:
        if t.image in ctx.train.names:
            img = ctx.images("train", stain, normalizer)[ctx.train.names.index(t.image)]
            crop = crop_template(img, t.y, t.x, t.size)
        else:
            crop = normalizer.transform(t.crop)
        new.append(Template(t.image, t.y, t.x, t.size, crop))
    return TemplateSet(new, meta=templates.meta)


def _run_detector(
    ctx: _Context,
    *,
    det_config: Any,
    templates: Any,
    stain: str,
    normalizer: Any,
    folder: str,
    desc: str,
) -> dict[str, Any]:
    from scipy import ndimage as ndi

    from mcf_fast.detection.detector import Detector

    det = Detector(_restain_templates(ctx, templates, stain, normalizer), det_config)

    def predict(i: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = det.detect(image)
        labels, _ = ndi.label(np.asarray(d.pseudo_mask) == 1)
        return labels.astype(np.int32), np.asarray(d.centres, np.float64).reshape(-1, 2)

    return _score_and_write(
        ctx, folder=folder, predict=predict, images=ctx.images("test", stain, normalizer), desc=desc
    )


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

    train = _Split(root / "train", require_masks=True, limit=limit)
    test = _Split(root / "test", require_masks=True, limit=limit)
    out_dir.mkdir(parents=True, exist_ok=True)

    from mcf_fast.config import config_to_dict
    from mcf_fast.io.templates import select_templates

    templates = select_templates(train.dataset, n=n_templates, seed=seed, progress=progress)
    templates.save(out_dir / "templates.json")

    report: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "complete": False,
        "command": command if command is not None else " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(device),
        "mcf_fast": _source_version(),
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
    ctx = _Context(
        out=out_dir,
        train=train,
        test=test,
        config=config,
        device=device,
        progress=progress,
        report=report,
        resume=resume,
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


# ----------------------------------------------------------------------------- Markdown
_SEG_KEYS = ("PA", "MPA", "IoU", "FWIoU", "Dice")
_MAIN_KEYS = (
    "PA",
    "MPA",
    "IoU",
    "FWIoU",
    "Dice",
    "P@6",
    "R@6",
    "F1@6",
    "P@12",
    "R@12",
    "F1@12",
    "AJI",
    "PQ",
)
_LABELS = {
    "mcf": "MCF (ours)",
    "watershed": "watershed baseline (ours)",
    "supervised": "supervised U-Net (ours)",
    "detector": "detection branch (ours)",
}


def _pct(v: Any) -> str:
    return "" if v is None else f"{100.0 * float(v):.2f}"


def _paper(v: Any) -> str:
    return "" if v is None else f"*{float(v):.2f}*"


def results_markdown(report: dict[str, Any]) -> str:
    """The ``results.md`` text of a results dict (our numbers beside the paper's)."""
    lines = ["# mcf_fast evaluation", ""]
    n_test = report.get("n_test")
    lines += [
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}",
        f"- Machine: {_machine_line(report['machine'])}",
        f"- mcf_fast: {report.get('mcf_fast', '')}",
        f"- Wall time: {report.get('wall_s', 0):.0f} s"
        + ("" if report.get("complete") else " (incomplete: still running or interrupted)"),
        f"- Data: `{report['data']}` (train {report['n_train']} images, test {n_test} images"
        + (", LIMITED subset" if report.get("limited") else "")
        + ")",
        f"- Templates: {report['n_templates']} from the train split, seed {report['seed']} "
        f"(`{report['templates_file']}`); preset `{report['preset']}`, device "
        f"`{report['device']}`",
    ]
    for mode, d in report.get("stain", {}).items():
        lines.append(f"- Stain `{mode}`: {d['method']} fitted on train image `{d['reference']}`")
    lines += [
        "",
        "All numbers are percentages, aggregated over the test split (sums of counts, then the",
        "formulas of `mcf_fast.metrics`). Paper rows (*italic*) are MICCAI18 = MoNuSeg, "
        "Tables 1-2;",
        "the paper does not state its detection matching radius: its P/R/F sit under @12.",
        "",
    ]
    runs = report.get("runs", [])
    main = [r for r in runs if r["section"] == "main"]
    head = "| method | stain | " + " | ".join(_MAIN_KEYS) + " | fit s | wall s |"
    sep = "|---|---|" + "---:|" * (len(_MAIN_KEYS) + 2)
    lines += ["## Main results", "", head, sep]
    for r in main:
        a = r["aggregate"]
        vals = " | ".join(_pct(a.get(k)) for k in _MAIN_KEYS)
        lines.append(
            f"| {_LABELS.get(r['method'], r['method'])} | {r['stain']} | {vals} | "
            f"{r.get('fit_s', '')} | {r['wall_s']} |"
        )
    t1, t2 = PAPER["table1"], PAPER["table2"]
    for name, det in (("MCF", t2["MCF"]), ("U-Net (supervised)", None), ("Detection", None)):
        seg = t1[name]
        cells = [_paper(seg.get(k)) for k in _SEG_KEYS] + ["", "", ""]
        cells += [_paper(det["P"]), _paper(det["R"]), _paper(det["F"])] if det else ["", "", ""]
        cells += ["", ""]
        lines.append(f"| *paper: {name}* | Vahadane | " + " | ".join(cells) + " | | |")
    lines.append("")
    with_det = [r for r in runs if "detector_centres" in r]
    if with_det:
        keys = ("P@6", "R@6", "F1@6", "P@12", "R@12", "F1@12")
        lines += [
            "Detection scored on the detector's own centres (the rows above use the "
            "centroids of the predicted instances):",
            "",
            "| run | stain | " + " | ".join(keys) + " |",
            "|---|---|" + "---:|" * 6,
        ]
        for r in with_det:
            d = r["detector_centres"]
            name = " ".join(x for x in (_LABELS.get(r["method"], r["method"]), r["variant"]) if x)
            lines.append(
                f"| {name} | {r['stain']} | " + " | ".join(_pct(d.get(k)) for k in keys) + " |"
            )
        lines.append("")

    det_rows = [r for r in runs if r["section"] == "ablation-detection"]
    if det_rows:
        lines += [
            "## Ablation: detection branch (Table 3)",
            "",
            "Detection branch alone (initial templates, no loop); paper values in italics.",
            "",
            "| switch | P@6 | R@6 | F1@6 | P@12 | R@12 | F1@12 | paper P | paper R | "
            "paper F | wall s |",
            "|---|" + "---:|" * 10,
        ]
        for r in det_rows:
            a = r["aggregate"]
            p = PAPER["table3_detection"].get(r["variant"], {})
            vals = " | ".join(
                _pct(a.get(k)) for k in ("P@6", "R@6", "F1@6", "P@12", "R@12", "F1@12")
            )
            pv = " | ".join(_paper(p.get(k)) for k in ("P", "R", "F"))
            lines.append(f"| {r['variant']} | {vals} | {pv} | {r['wall_s']} |")
        lines.append("")
    seg_rows = [r for r in runs if r["section"] == "ablation-segmentation"]
    if seg_rows:
        ref = [r for r in main if r["method"] == "mcf" and r["stain"] == seg_rows[0]["stain"]]
        keys = _SEG_KEYS + ("AJI", "PQ", "F1@12")
        lines += [
            "## Ablation: segmentation branch (Table 3)",
            "",
            "| switch | " + " | ".join(keys) + " | paper PA | paper MPA | paper IoU | "
            "paper FWIoU | paper Dice | wall s |",
            "|---|" + "---:|" * (len(keys) + 6),
        ]
        for r in ref[:1] + seg_rows:
            variant = r["variant"] or "MCF"
            a = r["aggregate"]
            p = PAPER["table3_segmentation"].get(variant, {})
            vals = " | ".join(_pct(a.get(k)) for k in keys)
            pv = " | ".join(_paper(p.get(k)) for k in _SEG_KEYS)
            wall = "= MCF row" if r.get("same_as_main") else r["wall_s"]
            lines.append(f"| {variant} | {vals} | {pv} | {wall} |")
        if any(r.get("same_as_main") for r in seg_rows):
            lines += [
                "",
                "`= MCF row`: the switch is already off in this preset, so the "
                "run is the MCF row's (not fitted twice).",
            ]
        lines.append("")
    sweep = [r for r in runs if r["section"] == "sweep"]
    if sweep:
        keys = ("P@12", "R@12", "F1@12", "IoU", "Dice", "AJI", "PQ")
        lines += [
            "## Number of templates (Fig. 5)",
            "",
            "The paper shows this sweep only as a figure (no numbers in its text).",
            "",
            "| templates | final templates | " + " | ".join(keys) + " | wall s |",
            "|---:|---:|" + "---:|" * (len(keys) + 1),
        ]
        for r in sweep:
            a = r["aggregate"]
            vals = " | ".join(_pct(a.get(k)) for k in keys)
            wall = "= main run" if r.get("same_as_main") else r["wall_s"]
            lines.append(
                f"| {r['n_templates']} | {r.get('n_templates_final', '')} | {vals} | {wall} |"
            )
        lines.append("")
    ws = [r for r in main if r["method"] == "watershed"]
    if ws:
        lines += ["## Watershed parameters", ""]
        for r in ws:
            tun = r.get("tuning")
            how = (
                (
                    f"tuned on the train split ({tun['n_evaluated']} settings, objective "
                    f"{tun['objective']}, central {tun['crop']} px crops, score "
                    f"{tun['train_score']:.4f})"
                )
                if tun
                else "given"
            )
            lines.append(f"- stain `{r['stain']}`: `{json.dumps(r['params'])}`, {how}")
        lines.append("")
    lines += [
        "Predictions: `<folder>/<image>.png` (instance labels) and `<image>.csv` "
        "(centres), re-scorable with `mcf score --data ROOT/test --pred OUT/<folder>`:",
        "",
    ]
    for r in runs:
        lines.append(f"- `{r['pred_dir']}`: {r['method']} {r['variant']} [{r['stain']}]")
    lines.append("")
    return "\n".join(lines)
