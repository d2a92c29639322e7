"""The Mutual-Complementing Framework: detection and segmentation that improve each other.

One round of :meth:`MCF.fit` (paper sec. 2.3):

1. the detector (a filter bank built from the current template set) runs on every training
   image and yields pseudo masks (nucleus / background / unknown);
2. the U-Net is trained on them with the confidence loss, eq. (5), plus synthetic samples
   (sec. 2.2.2) with plain cross-entropy;
3. it is self-finetuned on its own confident predictions, eq. (6);
4. the mask residual, eq. (7), between its prediction (``p1 > t4``) and the nucleus pseudo
   mask is taken; its large, nucleus-shaped components that hold no detected centre are
   nuclei the detector missed, and become new templates;
5. the detector is rebuilt with the enlarged template set.

Rounds repeat until a round adds no template or ``max_rounds`` is reached.  The model then
predicts a probability map, a mask, instance labels (a watershed seeded by the detected
centres) and a per-nucleus table.

A checkpoint is written after every round (atomically); ``resume=True`` continues from the
last one and ends where an uninterrupted run ends: every round draws its random numbers from
its own seed, so nothing but the round's inputs needs saving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from mcf_fast.config import MCFConfig, config_to_dict
from mcf_fast.errors import DataError, FormatError, InputError
from mcf_fast.io.images import as_rgb_uint8, atomic_path, read_image
from mcf_fast.ops.instances import TABLE_DTYPE, instance_labels, nucleus_table
from mcf_fast.ops.tissue import is_blank

__all__ = [
    "CHECKPOINT_VERSION",
    "MCF",
    "MCFModel",
    "Prediction",
    "mask_residual",
    "missed_nuclei",
]

#: version of the per-round checkpoint written by :meth:`MCF.fit`
CHECKPOINT_VERSION = 1


def _detector_cls():
    """The detector class (a function, so tests can substitute a stand-in)."""
    from mcf_fast.detection.detector import Detector

    return Detector


# ---------------------------------------------------------------------------- prediction
@dataclass(frozen=True, eq=False)
class Prediction:
    """What :meth:`MCFModel.predict` returns for one image.

    Attributes
    ----------
    probability : ndarray, shape (H, W), float32
        Nucleus probability p1 (the detection response when the model has no network).
    mask : ndarray, shape (H, W), bool
        Nucleus pixels (``labels > 0``).
    labels : ndarray, shape (H, W), int32
        0 background, 1..M one id per nucleus.
    centres : ndarray, shape (M, 2), float64
        Centroid (y, x) of each instance, in label order.
    table : structured ndarray of :data:`~mcf_fast.ops.instances.TABLE_DTYPE`, (M,)
        label, y, x, area and mean grey intensity of each nucleus.
    detected_centres : ndarray, shape (N, 2), int64
        The detector's centres (y, x), before segmentation; empty when the detector did
        not run (see ``MCFModel.predict(detect=...)``).
    """

    probability: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    table: np.ndarray
    detected_centres: np.ndarray


# ---------------------------------------------------------------------------- residual
def mask_residual(p1: np.ndarray, pseudo_mask: np.ndarray, *, t4: float) -> np.ndarray:
    """Eq. (7): ``|T(p1 > t4) - I_nc|`` as a bool map.

    Parameters
    ----------
    p1 : ndarray, shape (H, W)
        The network's nucleus probability.
    pseudo_mask : ndarray, shape (H, W), int8
        The detector's pseudo mask; ``I_nc`` is its nucleus part (== 1).
    t4 : float
    """
    return (np.asarray(p1) > t4) ^ (np.asarray(pseudo_mask) == 1)


def missed_nuclei(
    p1: np.ndarray,
    pseudo_mask: np.ndarray,
    centres: np.ndarray,
    *,
    t4: float,
    min_area: int,
    max_area: float,
    min_solidity: float = 0.8,
    min_axis_ratio: float = 0.3,
) -> list[dict[str, float]]:
    """Nuclei the network finds and the detector missed: large components of the residual.

    A component of ``p1 > t4`` counts when it lies wholly inside the residual of eq. (7)
    (no pixel of the nucleus pseudo mask in it), holds no detected centre, does not touch the
    image border, has ``min_area <= area <= max_area`` pixels and is convex enough to be one
    nucleus (solidity ``area / convex area >= min_solidity``, minor / major axis of the
    fitted ellipse ``>= min_axis_ratio``).

    Returns
    -------
    list of dict
        ``y``, ``x`` (rounded centroid), ``area``, ``diameter`` (equivalent), ``score`` (mean
        p1 inside), sorted by decreasing score.
    """
    from skimage.measure import regionprops

    pred = np.asarray(p1) > t4
    nuc = np.asarray(pseudo_mask) == 1
    lab, n = ndimage.label(pred)
    if n == 0:
        return []
    h, w = lab.shape
    bad = np.zeros(n + 1, bool)
    bad[np.unique(lab[nuc])] = True
    c = np.asarray(centres).reshape(-1, 2).astype(np.int64)
    if c.size:
        inside = (c[:, 0] >= 0) & (c[:, 0] < h) & (c[:, 1] >= 0) & (c[:, 1] < w)
        c = c[inside]
        bad[lab[c[:, 0], c[:, 1]]] = True
    bad[np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))] = True
    bad[0] = True
    out = []
    for r in regionprops(lab, intensity_image=np.asarray(p1, np.float32)):
        if bad[r.label] or not (min_area <= r.area <= max_area):
            continue
        if r.solidity < min_solidity:
            continue
        if r.axis_minor_length < min_axis_ratio * r.axis_major_length:
            continue
        cy, cx = r.centroid
        out.append(
            {
                "y": int(math.floor(cy + 0.5)),
                "x": int(math.floor(cx + 0.5)),
                "area": int(r.area),
                "diameter": float(r.equivalent_diameter_area),
                "score": float(r.intensity_mean),
            }
        )
    out.sort(key=lambda d: (-d["score"], -d["area"], d["y"], d["x"]))
    return out


# ---------------------------------------------------------------------------- helpers
def _load_images(
    images: Sequence[Any], names: Sequence[str] | None
) -> tuple[list[np.ndarray], list[str]]:
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        raise InputError("images: expected a sequence of images or paths, not a single one")
    arrays, out_names = [], []
    for i, im in enumerate(images):
        if isinstance(im, (str, os.PathLike)):
            arrays.append(read_image(im))
            out_names.append(Path(im).stem)
        else:
            arrays.append(as_rgb_uint8(im, name=f"images[{i}]"))
            out_names.append(f"image{i}")
    if not arrays:
        raise InputError("images: no training images")
    if names is not None:
        if len(names) != len(arrays):
            raise InputError(f"names: {len(names)} names for {len(arrays)} images")
        out_names = [str(n) for n in names]
    return arrays, out_names


def _restain_templates(templates, stain, images: list[np.ndarray], names: list[str]):
    """Templates in the normalised colour space: re-cropped where their image is known."""
    from mcf_fast.io.templates import Template, TemplateSet, crop_template

    by_name = dict(zip(names, images, strict=True))
    out = []
    for t in templates:
        img = by_name.get(Path(t.image).stem)
        if img is not None and 0 <= t.y < img.shape[0] and 0 <= t.x < img.shape[1]:
            crop = crop_template(img, t.y, t.x, t.size)
        else:
            crop = as_rgb_uint8(stain.transform(t.crop))
        out.append(Template(image=t.image, y=t.y, x=t.x, size=t.size, crop=crop))
    return TemplateSet(out, meta=templates.meta)


#: SegmentationConfig fields that act only at prediction time: a checkpoint stays valid
#: when they change, so ``resume`` can re-predict with new values without refitting
INFERENCE_ONLY = (
    "device",
    "threshold",
    "min_nucleus_area",
    "instance_seeds",
    "instance_h",
    "tta_flips",
)


def _fingerprint(
    config: MCFConfig, images: list[np.ndarray], names: list[str], templates, stain
) -> str:
    cfg = config_to_dict(config)
    for name in INFERENCE_ONLY:
        cfg["segmentation"].pop(name, None)
    h = hashlib.sha256()
    h.update(json.dumps(cfg, sort_keys=True).encode())
    h.update(json.dumps(templates.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(stain.to_dict() if stain is not None else None, sort_keys=True).encode())
    for name, im in zip(names, images, strict=True):
        h.update(name.encode())
        h.update(str(im.shape).encode())
        h.update(hashlib.sha256(im.tobytes()).digest())
    return h.hexdigest()


def _pseudo_fractions(pseudo: list[np.ndarray]) -> dict[str, float]:
    """Shares of unknown, background and nucleus pixels; an error when a class is absent."""
    counts = sum(np.bincount(pm.ravel().astype(np.int64) + 1, minlength=3) for pm in pseudo)
    total = max(int(counts.sum()), 1)
    frac = {
        "unknown": counts[0] / total,
        "background": counts[1] / total,
        "nucleus": counts[2] / total,
    }
    for name in ("background", "nucleus"):
        if frac[name] == 0:
            raise DataError(
                f"the detector's pseudo masks hold no confident {name} pixel on any training "
                "image; the network has nothing to learn from (check the templates and "
                "DetectionConfig.t1 / pseudo_rule)"
            )
    return {k: round(float(v), 5) for k, v in frac.items()}


def _round_summary(losses: list[float]) -> dict[str, float] | None:
    if not losses:
        return None
    k = max(1, len(losses) // 10)
    return {
        "first": float(np.mean(losses[:k])),
        "last": float(np.mean(losses[-k:])),
        "steps": len(losses),
    }


# ---------------------------------------------------------------------------- the loop
class MCF:
    """Fits the framework: ``MCF(config).fit(images, templates)`` returns an :class:`MCFModel`.

    Parameters
    ----------
    config : MCFConfig, optional
        The paper's defaults when None; see also :data:`mcf_fast.presets.PRESETS`.

    Examples
    --------
    >>> from mcf_fast.presets import PRESETS                           # doctest: +SKIP
    >>> model = MCF(PRESETS["quick"]).fit(paths, TemplateSet.load("t.json"))  # doctest: +SKIP
    >>> pred = model.predict("test.png")                               # doctest: +SKIP
    """

    def __init__(self, config: MCFConfig | None = None) -> None:
        self.config = config if config is not None else MCFConfig()
        if not isinstance(self.config, MCFConfig):
            raise InputError(f"config: expected an MCFConfig, got {type(config).__name__}")

    def fit(
        self,
        images: Sequence[np.ndarray | str | os.PathLike],
        templates,
        *,
        names: Sequence[str] | None = None,
        stain=None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        progress: bool = True,
        on_round: Callable[[int, dict[str, Any]], None] | None = None,
        on_pseudo: Callable[[int, list[str], list[np.ndarray]], None] | None = None,
    ) -> MCFModel:
        """Run the rounds of detection, training and residual templates.

        Parameters
        ----------
        images : sequence of arrays (H, W, 3) or image paths
            The training images (their masks are never used).
        templates : TemplateSet
            The few-shot supervision.
        names : sequence of str, optional
            Image names (recorded in new templates); file stems or ``image<i>`` by default.
        stain : stain normaliser, optional
            An object with ``transform(image)`` and ``to_dict()``, applied to every image (and
            template crop) before detection and segmentation, and stored in the model.
        checkpoint_dir : path, optional
            Folder for the per-round checkpoint.
        resume : bool
            Continue from the checkpoint in ``checkpoint_dir`` when there is one.
        progress : bool
            tqdm bars on stderr.
        on_round : callable, optional
            Called as ``on_round(round_index, history_entry)`` after each round's checkpoint.
        on_pseudo : callable, optional
            Called as ``on_pseudo(round_index, names, pseudo_masks)`` once the round's pseudo
            masks exist (e.g. to score them against masks the fit never sees).

        Returns
        -------
        MCFModel

        Raises
        ------
        InputError
            For unreadable images, or a checkpoint written for other images, templates or
            settings.
        FormatError
            For a checkpoint of an unknown version.
        """
        from mcf_fast.io.templates import TemplateSet
        from mcf_fast.segmentation.train import (
            SyntheticSampler,
            build_unet,
            deterministic,
            predict_proba,
            self_targets,
            train_unet,
        )

        if not isinstance(templates, TemplateSet):
            raise InputError(f"templates: expected a TemplateSet, got {type(templates).__name__}")
        cfg = self.config
        seg = cfg.segmentation
        imgs, names = _load_images(images, names)
        if stain is not None:
            imgs = [
                as_rgb_uint8(stain.transform(im), name=n) for im, n in zip(imgs, names, strict=True)
            ]
            templates = _restain_templates(templates, stain, imgs, names)
        fingerprint = _fingerprint(cfg, imgs, names, templates, stain)
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None

        state: dict[str, Any] = {"round": 0, "done": False, "history": []}
        net = None
        if resume and ckpt is not None and (ckpt / "state.json").is_file():
            state, templates, weights = _load_checkpoint(ckpt, fingerprint)
            if weights is not None:
                net = build_unet(seg)
                net.load_state_dict(weights)
        Detector = _detector_cls()
        rounds = seg.max_rounds if seg.use_network else 1
        detector = detector_set = None
        with deterministic(seg.device == "cpu"):
            while state["round"] < rounds and not state["done"]:
                r = state["round"]
                t0 = time.perf_counter()
                base = seg.seed + 1009 * r
                if detector is None:
                    detector = Detector(templates, cfg.detection, device=seg.device)
                elif detector_set is not templates:  # reuse the filters already built
                    detector = detector.with_templates(templates)
                detector_set = templates
                entry: dict[str, Any] = {"round": r + 1, "n_templates": len(templates), "added": []}
                if not seg.use_network:  # "-seg.": nothing to train, the detector is the model
                    state["done"] = True
                else:
                    detections = [
                        detector.detect(im)
                        for im in tqdm(
                            imgs,
                            desc=f"round {r + 1}: detect",
                            unit="image",
                            disable=not progress,
                            leave=False,
                        )
                    ]
                    entry["detect_seconds"] = round(time.perf_counter() - t0, 3)
                    entry["detected"] = int(sum(len(d.centres) for d in detections))
                    pseudo = [np.asarray(d.pseudo_mask, np.int8) for d in detections]
                    entry["pseudo_fractions"] = _pseudo_fractions(pseudo)
                    if on_pseudo is not None:
                        on_pseudo(r, list(names), pseudo)
                    if seg.loss == "weighted":
                        targets = [
                            np.clip(np.asarray(d.response, np.float32), 0, 1) for d in detections
                        ]
                    else:
                        targets = pseudo
                    synthetic = None
                    if seg.use_synthetic:
                        synthetic = SyntheticSampler.from_pseudo_masks(
                            imgs,
                            pseudo,
                            rng=np.random.default_rng(base + 2),
                            grow=seg.synthetic_grow,
                            scale=seg.synthetic_scale,
                        )
                    entry["synthetic"] = synthetic is not None
                    start = net if (seg.warm_start and net is not None) else None
                    t1 = time.perf_counter()
                    losses: list[float] = []
                    net = train_unet(
                        imgs,
                        targets,
                        seg,
                        net=start,
                        synthetic=synthetic,
                        progress=progress,
                        seed=base,
                        log=losses,
                        desc=f"round {r + 1}: train",
                    )
                    entry["seg_loss"] = _round_summary(losses)
                    entry["seg_losses"] = losses
                    entry["train_seconds"] = round(time.perf_counter() - t1, 3)
                    predict = {"device": seg.device, "tile": seg.tile}
                    if seg.use_self_finetune and seg.self_steps > 0:
                        probs = [
                            predict_proba(net, im, **predict)
                            for im in tqdm(
                                imgs,
                                desc=f"round {r + 1}: predict",
                                unit="image",
                                disable=not progress,
                                leave=False,
                            )
                        ]
                        self_t = [self_targets(p, t2=seg.t2, t3=seg.t3) for p in probs]
                        losses = []
                        # eq. (6) ignores the uncertain pixels (no unknown_weight here)
                        self_cfg = dataclasses.replace(seg, lr=seg.lr * seg.self_lr_scale)
                        net = train_unet(
                            imgs,
                            self_t,
                            self_cfg,
                            net=net,
                            steps=seg.self_steps,
                            loss="confidence",
                            progress=progress,
                            seed=base + 1,
                            log=losses,
                            desc=f"round {r + 1}: self-finetune",
                            unknown_weight=0.0,
                        )
                        entry["self_loss"] = _round_summary(losses)
                        entry["self_losses"] = losses
                    probs = [
                        predict_proba(net, im, **predict)
                        for im in tqdm(
                            imgs,
                            desc=f"round {r + 1}: residual",
                            unit="image",
                            disable=not progress,
                            leave=False,
                        )
                    ]
                    new = self._new_templates(probs, detections, imgs, names, templates)
                    if new:
                        templates = templates.add(new)
                        entry["added"] = [
                            {"image": t.image, "y": t.y, "x": t.x, "size": t.size} for t in new
                        ]
                    else:
                        state["done"] = True
                entry["seconds"] = round(time.perf_counter() - t0, 3)
                state["history"].append(entry)
                state["round"] = r + 1
                if ckpt is not None:
                    _save_checkpoint(
                        ckpt,
                        state,
                        fingerprint,
                        templates,
                        net.state_dict() if net is not None else None,
                    )
                if on_round is not None:
                    on_round(r, entry)
        if detector is None:
            detector = Detector(templates, cfg.detection, device=seg.device)
        elif detector_set is not templates:
            detector = detector.with_templates(templates)
        if net is not None:
            net.eval()
        return MCFModel(cfg, templates, detector, net, stain=stain, history=state["history"])

    def _new_templates(self, probs, detections, imgs, names, templates) -> list:
        """Residual components turned into templates (at most ``templates_per_round``)."""
        from mcf_fast.io.templates import Template, crop_template

        seg = self.config.segmentation
        sizes = [t.size for t in templates]
        max_area = math.pi * (max(sizes) / 2.0) ** 2
        found = []
        for i, (p, d) in enumerate(zip(probs, detections, strict=True)):
            for c in missed_nuclei(
                p,
                d.pseudo_mask,
                d.centres,
                t4=seg.t4,
                min_area=seg.residual_min_area,
                max_area=max_area,
            ):
                found.append((i, c))
        # the best candidate of each image first, then the second best of each, ...
        found.sort(key=lambda ic: -ic[1]["score"])
        per_image: dict[int, int] = {}
        ranked = []
        for order, (i, c) in enumerate(found):
            k = per_image.get(i, 0)
            per_image[i] = k + 1
            ranked.append((k, order, i, c))
        ranked.sort(key=lambda item: (item[0], item[1]))
        taken = [(Path(t.image).stem, t.y, t.x, t.size) for t in templates]
        new = []
        lo, hi = min(sizes), max(sizes)
        for _, _, i, c in ranked:
            if len(new) >= seg.templates_per_round:
                break
            # a nucleus that already has a template (the detector still misses it) is skipped
            if any(
                n == names[i] and abs(y - c["y"]) <= s // 2 and abs(x - c["x"]) <= s // 2
                for n, y, x, s in taken
            ):
                continue
            size = int(np.clip(round(seg.residual_template_scale * c["diameter"]), lo, hi))
            crop = crop_template(imgs[i], c["y"], c["x"], size)
            new.append(Template(image=names[i], y=c["y"], x=c["x"], size=size, crop=crop))
            taken.append((names[i], c["y"], c["x"], size))
        return new


# ---------------------------------------------------------------------------- checkpoints
def _save_checkpoint(
    folder: Path, state: dict[str, Any], fingerprint: str, templates, weights: dict | None
) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    r = state["round"]
    tname, wname = f"templates_r{r}.json", (f"unet_r{r}.pt" if weights is not None else None)
    templates.save(folder / tname)
    if wname is not None:
        with atomic_path(folder / wname) as tmp:
            torch.save(weights, tmp)
    doc = {
        "format": "mcf_fast.checkpoint",
        "version": CHECKPOINT_VERSION,
        "fingerprint": fingerprint,
        "round": r,
        "done": state["done"],
        "history": state["history"],
        "templates": tname,
        "weights": wname,
    }
    with atomic_path(folder / "state.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    for old in folder.glob("*_r*.*"):
        if old.name not in (tname, wname):
            old.unlink(missing_ok=True)


def _load_checkpoint(folder: Path, fingerprint: str):
    import torch

    from mcf_fast.io.templates import TemplateSet

    path = folder / "state.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != "mcf_fast.checkpoint":
        raise FormatError(f"{path}: not an mcf_fast checkpoint")
    if doc.get("version") != CHECKPOINT_VERSION:
        raise FormatError(
            f"{path}: checkpoint version {doc.get('version')!r} is not supported "
            f"(this mcf_fast reads version {CHECKPOINT_VERSION})"
        )
    if doc.get("fingerprint") != fingerprint:
        raise InputError(
            f"{path}: this checkpoint belongs to a fit with other images, "
            "templates or settings; remove it or drop --resume"
        )
    templates = TemplateSet.load(folder / doc["templates"])
    weights = None
    if doc.get("weights"):
        weights = torch.load(folder / doc["weights"], map_location="cpu", weights_only=True)
    state = {"round": int(doc["round"]), "done": bool(doc["done"]), "history": doc["history"]}
    return state, templates, weights


def _empty_prediction(shape: tuple[int, int]) -> Prediction:
    """The prediction for an image without tissue: no nuclei."""
    labels = np.zeros(shape, np.int32)
    return Prediction(
        probability=np.zeros(shape, np.float32),
        mask=labels > 0,
        labels=labels,
        centres=np.zeros((0, 2)),
        table=np.zeros(0, TABLE_DTYPE),
        detected_centres=np.zeros((0, 2), np.int64),
    )


# ---------------------------------------------------------------------------- the model
class MCFModel:
    """A fitted framework: detector, U-Net, templates, stain normaliser and history.

    Attributes
    ----------
    config : MCFConfig
    templates : TemplateSet
        The final template set (the user's plus those the residual added).
    detector : Detector
    net : torch.nn.Module or None
        None for the "-seg." ablation (predictions from the detection alone).
    stain : stain normaliser or None
    history : list of dict
        Per round: templates before it, templates added, detections, losses, seconds.
    """

    def __init__(
        self,
        config: MCFConfig,
        templates,
        detector,
        net,
        *,
        stain=None,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.templates = templates
        self.detector = detector
        self.net = net
        self.stain = stain
        self.history = list(history or [])

    def __repr__(self) -> str:
        rounds = len(self.history)
        return (
            f"MCFModel({len(self.templates)} templates, {rounds} round(s), "
            f"network={'yes' if self.net is not None else 'no'})"
        )

    @property
    def device(self) -> str:
        return self.config.segmentation.device

    def predict(
        self, image: np.ndarray | str | os.PathLike, *, detect: bool | None = None
    ) -> Prediction:
        """Segment one image.

        Parameters
        ----------
        image : ndarray (H, W, 3) or path
        detect : bool, optional
            Run the detector too, to fill ``Prediction.detected_centres``.  By default
            it runs only when the labels need it: without a network, or with
            ``instance_seeds="centres"``; otherwise ``detected_centres`` is empty.

        Returns
        -------
        Prediction
        """
        from mcf_fast.segmentation.train import predict_proba

        seg = self.config.segmentation
        if isinstance(image, (str, os.PathLike)):
            img = read_image(image)
        else:
            img = as_rgb_uint8(image)
        if is_blank(img):  # no tissue, no nuclei (see mcf_fast.ops.tissue)
            return _empty_prediction(img.shape[:2])
        if self.stain is not None:
            img = as_rgb_uint8(self.stain.transform(img))
        needed = self.net is None or seg.instance_seeds == "centres"
        det = self.detector.detect(img) if (needed or detect) else None
        centres = (
            np.asarray(det.centres, np.int64).reshape(-1, 2)
            if det is not None
            else np.zeros((0, 2), np.int64)
        )
        if self.net is not None:
            prob = predict_proba(
                self.net, img, device=seg.device, tile=seg.tile, flips=seg.tta_flips
            )
            fg = prob
        else:
            prob = np.asarray(det.response, np.float32)
            fg = (np.asarray(det.pseudo_mask) == 1).astype(np.float32)
        labels = instance_labels(
            fg,
            centres=centres,
            threshold=seg.threshold,
            min_area=seg.min_nucleus_area,
            seeds=seg.instance_seeds,
            h=seg.instance_h,
        )
        table = nucleus_table(labels, img)
        return Prediction(
            probability=prob.astype(np.float32, copy=False),
            mask=labels > 0,
            labels=labels,
            centres=np.stack([table["y"], table["x"]], axis=1) if len(table) else np.zeros((0, 2)),
            table=table if len(table) else np.zeros(0, TABLE_DTYPE),
            detected_centres=centres,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model bundle (see :mod:`mcf_fast.framework.model`)."""
        from mcf_fast.framework.model import save_bundle

        return save_bundle(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "cpu") -> MCFModel:
        """Read a bundle written by :meth:`save`.

        Raises
        ------
        FormatError
            If the file is not a bundle or has an unknown format version.
        """
        from mcf_fast.framework.model import load_bundle

        return load_bundle(path, device=device)
