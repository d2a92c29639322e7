"""The per-round checkpoint of :meth:`~mcf_fast.framework.fit.MCF.fit`.

A checkpoint is a folder: ``state.json`` (format, version, the fit's fingerprint, round,
history, member names), the round's template set and the U-Net's weights.  Every file is
written atomically; the fingerprint ties a checkpoint to its images, templates and settings
(fields that act only at prediction time excluded), so ``resume`` never mixes two fits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast._validate import check_version
from mcf_fast.config import MCFConfig, config_to_dict
from mcf_fast.errors import FormatError, InputError
from mcf_fast.io.images import atomic_path

__all__ = [
    "CHECKPOINT_VERSION",
    "INFERENCE_ONLY",
    "fingerprint",
    "load_checkpoint",
    "save_checkpoint",
]

#: version of the per-round checkpoint written by :meth:`MCF.fit`
CHECKPOINT_VERSION = 1

#: SegmentationConfig fields that act only at prediction time: a checkpoint stays valid
#: when they change, so ``resume`` can re-predict with new values without refitting
INFERENCE_ONLY = (
    "device",
    "threshold",
    "min_nucleus_area",
    "instance_seeds",
    "instance_h",
    "shape_h",
    "tta_flips",
    # not a prediction setting, but a finished fit may be resumed with more rounds
    "max_rounds",
)


def fingerprint(
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


def save_checkpoint(
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


def load_checkpoint(folder: Path, fingerprint: str):
    import torch

    from mcf_fast.io.templates import TemplateSet

    path = folder / "state.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != "mcf_fast.checkpoint":
        raise FormatError(f"{path}: not an mcf_fast checkpoint")
    check_version(doc.get("version"), CHECKPOINT_VERSION, f"{path}: checkpoint version")
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
