"""The mask residual, eq. (7), and the templates it adds (paper sec. 2.3, step 4).

The residual between the network's prediction (``p1 > t4``) and the detector's nucleus
pseudo mask holds the nuclei one branch found and the other missed; its large,
nucleus-shaped components that hold no detected centre become new templates.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["mask_residual", "missed_nuclei", "residual_templates"]


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


def residual_templates(probs, detections, imgs, names, templates, seg) -> list:
    """Residual components turned into templates (at most ``seg.templates_per_round``).

    `seg` is the fit's SegmentationConfig; `templates` the current set, whose nuclei are
    skipped and whose sizes bound the new ones.
    """
    from mcf_fast.io.templates import Template, crop_template

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
