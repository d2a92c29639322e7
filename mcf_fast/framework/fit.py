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
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mcf_fast.config import MCFConfig
from mcf_fast.errors import DataError, InputError
from mcf_fast.framework.checkpoint import fingerprint as _fingerprint
from mcf_fast.framework.checkpoint import load_checkpoint as _load_checkpoint
from mcf_fast.framework.checkpoint import save_checkpoint as _save_checkpoint
from mcf_fast.framework.model import MCFModel, detector_class
from mcf_fast.framework.residual import residual_templates
from mcf_fast.io.images import as_rgb_uint8, read_image
from mcf_fast.ops.instances import pseudo_instances
from mcf_fast.ops.shape import distance_target

__all__ = ["MCF"]


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
    detector_cls : class, optional
        The detector the rounds build, ``detector_cls(templates, config.detection,
        device=...)``; :class:`~mcf_fast.detection.detector.Detector` by default (see
        :func:`~mcf_fast.framework.model.detector_class`).

    Examples
    --------
    >>> from mcf_fast.presets import PRESETS                           # doctest: +SKIP
    >>> model = MCF(PRESETS["quick"]).fit(paths, TemplateSet.load("t.json"))  # doctest: +SKIP
    >>> pred = model.predict("test.png")                               # doctest: +SKIP
    """

    def __init__(
        self, config: MCFConfig | None = None, *, detector_cls: type | None = None
    ) -> None:
        self.config = config if config is not None else MCFConfig()
        self.detector_cls = detector_cls
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
        from mcf_fast.io.templates import TemplateSet, restain_templates
        from mcf_fast.segmentation.train import build_unet, deterministic

        if not isinstance(templates, TemplateSet):
            raise InputError(f"templates: expected a TemplateSet, got {type(templates).__name__}")
        cfg = self.config
        seg = cfg.segmentation
        imgs, names = _load_images(images, names)
        if stain is not None:
            imgs = [
                as_rgb_uint8(stain.transform(im), name=n) for im, n in zip(imgs, names, strict=True)
            ]
            templates = restain_templates(
                templates, stain.transform, dict(zip(names, imgs, strict=True))
            )
        fingerprint = _fingerprint(cfg, imgs, names, templates, stain)
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None

        state: dict[str, Any] = {"round": 0, "done": False, "history": []}
        net = None
        if resume and ckpt is not None and (ckpt / "state.json").is_file():
            state, templates, weights = _load_checkpoint(ckpt, fingerprint)
            if weights is not None:
                net = build_unet(seg)
                net.load_state_dict(weights)
        Detector = detector_class(self.detector_cls)
        rounds = seg.max_rounds if seg.use_network else 1
        detector = detector_set = None
        with deterministic(seg.device == "cpu"):
            while state["round"] < rounds and not state["done"]:
                r = state["round"]
                t0 = time.perf_counter()
                if detector is None:
                    detector = Detector(templates, cfg.detection, device=seg.device)
                elif detector_set is not templates:  # reuse the filters already built
                    detector = detector.with_templates(templates)
                detector_set = templates
                entry: dict[str, Any] = {"round": r + 1, "n_templates": len(templates), "added": []}
                if not seg.use_network:  # "-seg.": nothing to train, the detector is the model
                    state["done"] = True
                else:
                    net, new = self._round(
                        r,
                        detector,
                        imgs,
                        names,
                        templates,
                        net,
                        entry,
                        t0=t0,
                        progress=progress,
                        on_pseudo=on_pseudo,
                    )
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

    def _round(
        self,
        r: int,
        detector: Any,
        imgs: list[np.ndarray],
        names: list[str],
        templates: Any,
        net: Any,
        entry: dict[str, Any],
        *,
        t0: float,
        progress: bool,
        on_pseudo: Callable[[int, list[str], list[np.ndarray]], None] | None,
    ) -> tuple[Any, list]:
        """Round `r` with the network (sec. 2.3, steps 1-4): detect every image, train the
        U-Net on the pseudo masks, self-finetune it, and find the templates the mask
        residual adds.  Fills `entry`; returns the trained network and the new templates.
        """
        from mcf_fast.segmentation.train import (
            SyntheticSampler,
            predict_proba,
            self_targets,
            train_unet,
        )

        seg = self.config.segmentation
        base = seg.seed + 1009 * r
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
            targets = [np.clip(np.asarray(d.response, np.float32), 0, 1) for d in detections]
        else:
            targets = pseudo
        distances = None
        if seg.target == "distance":
            distances = [
                distance_target(pseudo_instances(pm, d.centres), pm >= 0)
                for pm, d in zip(pseudo, detections, strict=True)
            ]
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
            distances=distances,
        )
        entry["seg_loss"] = _round_summary(losses)
        entry["seg_losses"] = losses
        entry["train_seconds"] = round(time.perf_counter() - t1, 3)

        def predict_all(stage: str) -> list[np.ndarray]:
            """p1 of every image by the current ``net`` (read when called)."""
            desc = f"round {r + 1}: {stage}"
            bar = tqdm(imgs, desc=desc, unit="image", disable=not progress, leave=False)
            return [predict_proba(net, im, device=seg.device, tile=seg.tile) for im in bar]

        if seg.use_self_finetune and seg.self_steps > 0:
            probs = predict_all("predict")
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
        probs = predict_all("residual")
        return net, residual_templates(probs, detections, imgs, names, templates, seg)
