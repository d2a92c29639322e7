"""The few-shot template selection protocol: :func:`select_templates`.

Templates are chosen deterministically from a dataset with masks: the ground-truth nuclei
are clustered by size and colour (k-means, seeded), and one nucleus near each cluster's
centre becomes a template; the masks are used for that choice only.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mcf_fast._validate import as_int
from mcf_fast.errors import DataError, InputError
from mcf_fast.io.templates import MIN_SELECT_SIZE, Template, TemplateSet, crop_template

__all__ = ["select_templates"]

#: a template is drawn from the 1 / TYPICAL_SHARE of its cluster nearest the centre
TYPICAL_SHARE = 4


def _nucleus_table(labels: np.ndarray, image: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label area, centroid, mean RGB and border flag, for labels 1..max."""
    lab = labels.ravel()
    n = int(lab.max()) + 1 if lab.size else 1
    h, w = labels.shape
    area = np.bincount(lab, minlength=n).astype(np.float64)
    rr, cc = np.divmod(np.arange(lab.size, dtype=np.int64), w)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(lab, weights=rr, minlength=n) / area
        cx = np.bincount(lab, weights=cc, minlength=n) / area
        rgb = np.stack(
            [
                np.bincount(lab, weights=image[..., c].ravel().astype(np.float64), minlength=n)
                / area
                for c in range(3)
            ],
            axis=1,
        )
    border = np.zeros(n, dtype=bool)
    border[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    ids = np.arange(n)
    keep = (ids > 0) & (area > 0)
    return {
        "label": ids[keep],
        "area": area[keep],
        "cy": cy[keep],
        "cx": cx[keep],
        "rgb": rgb[keep],
        "border": border[keep],
    }


def _kmeans(
    data: np.ndarray, k: int, rng: np.random.Generator, *, n_init: int = 4, max_iter: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding; the best of ``n_init`` runs by inertia.

    Deterministic for a given generator state: distances are computed elementwise (no BLAS),
    and ties go to the lowest index.
    """
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    n = len(data)
    for _ in range(n_init):
        centres = np.empty((k, data.shape[1]))
        centres[0] = data[rng.integers(n)]
        d2 = ((data - centres[0]) ** 2).sum(axis=1)
        for j in range(1, k):
            total = d2.sum()
            if total <= 0:
                idx = int(rng.integers(n))
            else:
                idx = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right"))
                idx = min(idx, n - 1)
            centres[j] = data[idx]
            d2 = np.minimum(d2, ((data - centres[j]) ** 2).sum(axis=1))
        assign = np.full(n, -1)
        for _it in range(max_iter):
            dist = ((data[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
            new = dist.argmin(axis=1)
            if np.array_equal(new, assign):
                break
            assign = new
            for j in range(k):
                members = data[assign == j]
                if len(members):
                    centres[j] = members.mean(axis=0)
                else:  # empty cluster: move it to the point farthest from its centre
                    far = int(dist[np.arange(n), assign].argmax())
                    centres[j] = data[far]
                    assign[far] = j
        inertia = float(((data - centres[assign]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centres.copy(), assign.copy())
    assert best is not None
    return best[1], best[2]


def select_templates(
    data: str | os.PathLike | Any,
    *,
    n: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> TemplateSet:
    """Choose ``n`` template nuclei from a dataset with masks, deterministically.

    Protocol (version ``kmeans-lab-logarea-v2``):

    1. Every nucleus (instance label) of every image with a mask is a candidate, except
       those touching the image border and those whose square crop (step 4) would not fit
       inside the image.
    2. Descriptor per nucleus: CIE Lab of its mean RGB colour (3 values) and the natural log
       of its area in pixels; each of the 4 columns standardised to zero mean, unit variance
       over the candidates.
    3. k-means with ``n`` clusters: k-means++ seeding and Lloyd iterations, 4 restarts, the
       run with the lowest inertia kept; all randomness from
       ``numpy.random.default_rng(seed)``.
    4. Per cluster, one of its typical members becomes a template: the members are ordered
       by distance to the cluster's centre (ties: first in image-name, label order) and one
       of the nearest quarter (at least one) is drawn uniformly, with the same generator.
       Like a user's clicks, different seeds thus give different nuclei of the same kinds,
       even where the clustering itself does not change with the seed.  Its centre = its
       centroid rounded half up, side = ``max(16, round(2 * sqrt(4 * area / pi)))``
       (twice the equivalent diameter).
    5. Templates are ordered by cluster size, largest first (ties: cluster index).

    Running it twice on the same data gives byte-identical files from :meth:`TemplateSet.save`.

    Parameters
    ----------
    data : str, PathLike or FolderDataset
        A dataset folder (``images/`` + ``masks/``), or a dataset object.
    n : int
        Number of templates, >= 1.
    seed : int
        Seed of the k-means generator.
    progress : bool
        Show a tqdm bar (stderr) while reading images.

    Returns
    -------
    TemplateSet
        ``meta`` records the protocol, ``n``, ``seed``, the dataset folder name and, per
        template, its cluster size, area and label.

    Raises
    ------
    DataError
        If no image has a mask, or fewer than ``n`` candidate nuclei exist.
    InputError
        If ``n`` < 1.
    """
    from skimage.color import rgb2lab

    from mcf_fast.io.datasets import FolderDataset

    n = as_int(n, "n")
    seed = as_int(seed, "seed")
    if n < 1:
        raise InputError(f"n: expected >= 1 templates, got {n}")
    ds = data if isinstance(data, FolderDataset) else FolderDataset(data)
    samples = [s for s in ds if s.mask_path is not None]
    if not samples:
        raise DataError(f"{ds.root}: no image has a mask; template selection needs masks")

    if progress:
        from tqdm.auto import tqdm

        it = tqdm(samples, desc="templates: reading", unit="image")
    else:
        it = samples
    tables = []
    for img_idx, s in enumerate(it):
        image = ds.load_image(s.name)
        labels = ds.load_mask(s.name)
        t = _nucleus_table(labels, image)
        h, w = labels.shape
        size = np.maximum(
            MIN_SELECT_SIZE, np.floor(2.0 * np.sqrt(4.0 * t["area"] / np.pi) + 0.5)
        ).astype(np.int64)
        yc = np.floor(t["cy"] + 0.5).astype(np.int64)
        xc = np.floor(t["cx"] + 0.5).astype(np.int64)
        top, left = yc - size // 2, xc - size // 2
        fits = (top >= 0) & (left >= 0) & (top + size <= h) & (left + size <= w)
        keep = fits & ~t["border"]
        tables.append(
            {
                "img": np.full(int(keep.sum()), img_idx),
                "label": t["label"][keep],
                "area": t["area"][keep],
                "y": yc[keep],
                "x": xc[keep],
                "size": size[keep],
                "rgb": t["rgb"][keep],
            }
        )
    cand = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    m = len(cand["label"])
    if m < n:
        raise DataError(
            f"{ds.root}: only {m} candidate nuclei (not touching the border, crop inside the "
            f"image); cannot choose {n} templates"
        )
    lab = rgb2lab((cand["rgb"] / 255.0)[None, :, :])[0]
    feats = np.column_stack([lab, np.log(cand["area"])])
    mu, sd = feats.mean(axis=0), feats.std(axis=0)
    sd[sd == 0] = 1.0
    z = (feats - mu) / sd
    rng = np.random.default_rng(seed)
    centres, assign = _kmeans(z, n, rng)

    counts = np.bincount(assign, minlength=n)
    chosen: list[tuple[int, int, int]] = []  # (cluster size, cluster, candidate index)
    taken: set[int] = set()
    for j in range(n):
        d = ((z - centres[j]) ** 2).sum(axis=1)
        members = np.flatnonzero(assign == j)
        pool = members if len(members) else np.arange(m)
        order = [int(i) for i in pool[np.argsort(d[pool], kind="stable")] if int(i) not in taken]
        if not order:  # every member already taken: the nearest free candidate overall
            order = [int(i) for i in np.argsort(d, kind="stable") if int(i) not in taken]
        typical = max(1, -(-len(order) // TYPICAL_SHARE))
        idx = order[int(rng.integers(typical))]
        taken.add(idx)
        chosen.append((int(counts[j]), j, idx))
    chosen.sort(key=lambda c: (-c[0], c[1]))

    images: dict[int, np.ndarray] = {}
    templates, selection = [], []
    for csize, j, idx in chosen:
        ii = int(cand["img"][idx])
        if ii not in images:
            images[ii] = ds.load_image(samples[ii].name)
        y, x, s = int(cand["y"][idx]), int(cand["x"][idx]), int(cand["size"][idx])
        templates.append(
            Template(
                image=samples[ii].name, y=y, x=x, size=s, crop=crop_template(images[ii], y, x, s)
            )
        )
        selection.append(
            {
                "cluster": j,
                "cluster_size": csize,
                "area": int(cand["area"][idx]),
                "label": int(cand["label"][idx]),
            }
        )
    meta = {
        "source": "select",
        "protocol": "kmeans-lab-logarea-v2",
        "data": ds.root.resolve().name,
        "n": n,
        "seed": seed,
        "n_candidates": m,
        "n_images": len(samples),
        "selection": selection,
    }
    return TemplateSet(templates, meta=meta)
