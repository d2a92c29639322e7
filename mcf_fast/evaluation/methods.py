"""The methods an evaluation runs and scores: MCF, the detector alone, the watershed
baseline and the supervised U-Net, each predicting the test split into ``OUT/<folder>/``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import DataError
from mcf_fast.evaluation.report import results_markdown
from mcf_fast.io.images import atomic_path, write_labels

__all__ = ["Context", "Split", "fit_mcf", "write_prediction"]


def _csv_points(path: Path, centres: np.ndarray) -> None:
    """Centres (pixel-index) as a y,x CSV in pixel corners, the convention of every CSV."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write("y,x\n")
            for y, x in np.asarray(centres, dtype=np.float64).reshape(-1, 2) + 0.5:
                fh.write(f"{float(y)!r},{float(x)!r}\n")


def write_prediction(
    folder: Path, name: str, labels: np.ndarray, centres: np.ndarray | None
) -> None:
    write_labels(folder / name, labels)
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


class Split:
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
class Context:
    out: Path
    train: Split
    test: Split
    config: Any
    device: str
    progress: bool
    report: dict[str, Any]
    resume: bool = False
    #: fits MCF for a run: ``fit(ctx, config, templates, stain, normalizer, folder)``
    fit: Callable[..., Any] | None = None
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
    ctx: Context,
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
        write_prediction(pred_dir, name, labels, centres)
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


def fit_mcf(
    ctx: Context, config: Any, templates: Any, stain: str, normalizer: Any, folder: str
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
    ctx: Context,
    *,
    config: Any,
    templates: Any,
    stain: str,
    normalizer: Any,
    folder: str,
    desc: str,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = ctx.fit(ctx, config, templates, stain, normalizer, folder)
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
    ctx: Context,
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


def _run_supervised(ctx: Context, *, stain: str, normalizer: Any, folder: str) -> dict[str, Any]:
    from mcf_fast.ops.instances import instance_labels, label_options
    from mcf_fast.ops.shape import distance_target
    from mcf_fast.segmentation.train import predict_maps, train_unet

    seg = ctx.config.segmentation
    masks = ctx.train.masks()
    targets = [(m > 0).astype(np.int8) for m in masks]
    distances = None
    if seg.target == "distance":
        distances = [distance_target(m, np.ones(m.shape, bool)) for m in masks]
    t0 = time.perf_counter()
    net = train_unet(
        ctx.images("train", stain, normalizer),
        targets,
        seg,
        loss="ce",
        progress=ctx.progress,
        desc="train supervised U-Net",
        distances=distances,
    )
    fit_s = time.perf_counter() - t0

    def predict(i: int, image: np.ndarray) -> tuple[np.ndarray, None]:
        p1, energy = predict_maps(
            net,
            image,
            device=seg.device,
            tile=seg.tile,
            flips=seg.tta_flips,
            precision=seg.precision,
        )
        # 0.5: trained on full masks, its probability has no unknown-pixel bias to offset
        options = {**label_options(seg, energy=energy is not None), "threshold": 0.5}
        labels = instance_labels(p1, energy=energy, **options)
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


def _restain_templates(ctx: Context, templates: Any, stain: str, normalizer: Any) -> Any:
    """The same template set with its crops cut from the stain-normalised train images."""
    if normalizer is None:
        return templates
    from mcf_fast.io.templates import restain_templates

    images = ctx.images("train", stain, normalizer)
    return restain_templates(
        templates, normalizer.transform, dict(zip(ctx.train.names, images, strict=True))
    )


def _run_detector(
    ctx: Context,
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
