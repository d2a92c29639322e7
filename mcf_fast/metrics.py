"""Segmentation and detection metrics, per image and aggregated over a dataset.

Metrics (keys of the result dicts):

- ``PA``, ``MPA``, ``IoU``, ``FWIoU``, ``Dice``: pixel metrics of the two-class problem
  nuclei (foreground, label > 0) vs background, from the 2x2 confusion matrix
  ``tp, fp, fn, tn`` (nuclei = positive).  PA = (tp + tn) / N; MPA = mean over the classes
  present in the ground truth of the per-class accuracy (tp / (tp + fn) and tn / (tn + fp));
  IoU = tp / (tp + fp + fn) (nuclei class); FWIoU = sum over both classes of the class's
  ground-truth frequency times its IoU; Dice = 2 tp / (2 tp + fp + fn).
- ``P@r``, ``R@r``, ``F1@r``: detection precision, recall and F1 after one-to-one matching of
  predicted and true centres at most ``r`` pixels apart (Euclidean, inclusive).  The matching
  has the most pairs possible and, among those, the smallest total distance (Hungarian,
  ``scipy.optimize.linear_sum_assignment``, solved per connected group of candidate pairs).
  True centres are the centroids of the ground-truth instances; predicted centres are given
  explicitly or are the centroids of the predicted instances.
- ``AJI``: aggregated Jaccard index (Kumar et al., 2017).  Each true nucleus is paired with the
  predicted instance of highest IoU among those it overlaps (ties: lowest predicted id; a
  predicted instance may be paired with several true nuclei).  C = sum of the pairs'
  intersections, U = sum of their unions + areas of true nuclei that overlap nothing + areas of
  predicted instances paired with no true nucleus; AJI = C / U.
- ``PQ``, ``DQ``, ``SQ``: panoptic quality (Kirillov et al., 2019) with matches at IoU > 0.5
  (which are unique): DQ = TP / (TP + FP / 2 + FN / 2), SQ = mean IoU of the matches,
  PQ = DQ * SQ.

Aggregation over a dataset sums the counts of all images, then applies the same formulas:
the pixel metrics use the summed confusion matrix, detection the summed TP / FP / FN, AJI the
summed C and U (so the dataset AJI is sum of intersections / sum of unions, not a mean of
per-image AJIs), PQ the summed TP, FP, FN and IoU of the matches.

A ratio with a zero denominator is 1 when prediction and ground truth are both empty (nothing
to find, nothing found) and 0 otherwise.

A label map whose only nonzero value is a single value (a binary mask) is split into
4-connected components (:func:`mcf_fast.io.datasets.as_instance_labels`); other maps are
instance ids.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast.errors import DataError, InputError
from mcf_fast.io.datasets import MASK_SUFFIXES, FolderDataset, as_instance_labels

__all__ = [
    "METRIC_KEYS",
    "metric_keys",
    "instance_centres",
    "match_centres",
    "aji",
    "panoptic_quality",
    "image_counts",
    "metrics_from_counts",
    "score_image",
    "score_arrays",
    "score_folder",
    "markdown_table",
]

METRIC_KEYS = (
    "PA", "MPA", "IoU", "FWIoU", "Dice",
    "P@6", "R@6", "F1@6", "P@12", "R@12", "F1@12",
    "AJI", "PQ", "DQ", "SQ",
)  # fmt: skip


def metric_keys(radii: Sequence[float] = (6, 12)) -> tuple[str, ...]:
    """The metric names for the given matching radii (``METRIC_KEYS`` for (6, 12))."""
    det = tuple(f"{k}@{_r(r)}" for r in radii for k in ("P", "R", "F1"))
    return ("PA", "MPA", "IoU", "FWIoU", "Dice") + det + ("AJI", "PQ", "DQ", "SQ")


def _r(r: float) -> str:
    return str(int(r)) if float(r).is_integer() else f"{r:g}"


# ---------------------------------------------------------------------- helpers
def _sequential(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel instance ids to 1..N (ascending order of the old ids); 0 stays 0."""
    lab = np.asarray(labels)
    if lab.size == 0:
        return lab.astype(np.int64), 0
    mx = int(lab.max())
    if mx <= 4 * lab.size + 1024:
        present = np.bincount(lab.ravel(), minlength=mx + 1) > 0
        present[0] = False
        lut = np.cumsum(present, dtype=np.int64)
        lut[0] = 0
        return lut[lab], int(lut[-1])
    values, inv = np.unique(lab, return_inverse=True)
    inv = inv.reshape(lab.shape).astype(np.int64)
    if values[0] != 0:
        inv += 1
    return inv, int((values != 0).sum())


def _check_labels(labels: Any, name: str) -> np.ndarray:
    return as_instance_labels(labels, name=name)


def _ratio(num: float, den: float, empty: bool) -> float:
    if den == 0:
        return 1.0 if empty else 0.0
    return float(num) / float(den)


def instance_centres(labels: np.ndarray) -> np.ndarray:
    """Centroids of the instances of a label map.

    Parameters
    ----------
    labels : ndarray, shape (H, W), integer
        0 = background; each other value one instance (which may be disconnected).

    Returns
    -------
    ndarray, shape (N, 2), float64
        (y, x) centroids in ascending order of instance id.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"labels: expected a 2-D label image, got shape {lab.shape}")
    seq, n = _sequential(lab)
    if n == 0:
        return np.zeros((0, 2))
    h, w = lab.shape
    flat = seq.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    rows = np.repeat(np.arange(h, dtype=np.float64), w)
    cols = np.tile(np.arange(w, dtype=np.float64), h)
    cy = np.bincount(flat, weights=rows, minlength=n + 1)[1:] / area
    cx = np.bincount(flat, weights=cols, minlength=n + 1)[1:] / area
    return np.column_stack([cy, cx])


def _as_points(a: Any, name: str) -> np.ndarray:
    pts = np.asarray(a, dtype=np.float64)
    if pts.size == 0:
        return np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"{name}: expected an (N, 2) array of y, x centres, got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{name}: contains NaN or infinite centres")
    return pts


def _matched_pairs(pred: np.ndarray, gt: np.ndarray, radius: float) -> np.ndarray:
    """Indices (k, 2) of matched (pred, gt) pairs; see :func:`match_centres`."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if len(pred) == 0 or len(gt) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    near = cKDTree(pred).query_ball_tree(cKDTree(gt), r=float(radius))
    pi = np.repeat(np.arange(len(pred)), [len(v) for v in near])
    gi = np.fromiter((j for v in near for j in v), dtype=np.int64, count=len(pi))
    if len(pi) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    d = np.sqrt(((pred[pi] - gt[gi]) ** 2).sum(axis=1))
    ok = d <= radius
    pi, gi, d = pi[ok], gi[ok], d[ok]
    n_p = len(pred)
    graph = coo_matrix((np.ones(len(pi)), (pi, n_p + gi)), shape=(n_p + len(gt),) * 2)
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[pi]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    out = []
    for group in np.split(order, bounds):
        gp, gg, gd = pi[group], gi[group], d[group]
        if len(group) == 1:
            out.append((gp[0], gg[0]))
            continue
        up, ip = np.unique(gp, return_inverse=True)
        ug, ig = np.unique(gg, return_inverse=True)
        big = float(radius) * (min(len(up), len(ug)) + 1) + 1.0
        cost = np.full((len(up), len(ug)), big)
        cost[ip, ig] = gd
        rows, cols = linear_sum_assignment(cost)
        keep = cost[rows, cols] < big
        out.extend(zip(up[rows[keep]], ug[cols[keep]], strict=True))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def match_centres(pred: np.ndarray, gt: np.ndarray, radius: float) -> tuple[int, int, int]:
    """One-to-one matching of predicted and true centres within ``radius`` pixels.

    The matching pairs as many centres as possible, each pair at most ``radius`` apart
    (inclusive), with the smallest total distance among such matchings.

    Parameters
    ----------
    pred, gt : array_like, shape (N, 2) and (M, 2)
        (y, x) centres.
    radius : float
        Largest distance of a match, > 0.

    Returns
    -------
    tp, fp, fn : int
        Matched pairs, unmatched predictions, unmatched true centres.

    Examples
    --------
    >>> match_centres([[0, 0], [0, 5]], [[0, 1]], 2)
    (1, 1, 0)
    """
    if not radius > 0:
        raise InputError(f"radius: expected > 0, got {radius}")
    p = _as_points(pred, "pred")
    g = _as_points(gt, "gt")
    tp = len(_matched_pairs(p, g, radius))
    return tp, len(p) - tp, len(g) - tp


def _overlaps(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Sparse overlap table of two sequential label maps (ids 1..P, 1..G)."""
    p, n_p = _sequential(pred)
    g, n_g = _sequential(gt)
    p, g = p.ravel(), g.ravel()
    area_p = np.bincount(p, minlength=n_p + 1)[1:]
    area_g = np.bincount(g, minlength=n_g + 1)[1:]
    both = (p > 0) & (g > 0)
    key = (g[both] - 1) * n_p + (p[both] - 1)
    if n_p * n_g <= 4 * key.size + (1 << 16):
        counts = np.bincount(key, minlength=n_p * n_g) if n_p * n_g else np.zeros(0, np.int64)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(key, return_counts=True)
    gi, pi = np.divmod(keys, max(n_p, 1))
    union = area_g[gi] + area_p[pi] - inter
    return {
        "g": gi, "p": pi, "inter": inter.astype(np.int64), "union": union.astype(np.int64),
        "area_p": area_p, "area_g": area_g,
    }  # fmt: skip


def _aji_counts(ov: dict[str, np.ndarray]) -> tuple[int, int]:
    g, p, inter, union = ov["g"], ov["p"], ov["inter"], ov["union"]
    area_p, area_g = ov["area_p"], ov["area_g"]
    if len(g) == 0:
        return 0, int(area_g.sum() + area_p.sum())
    iou = inter / union
    order = np.lexsort((p, -iou, g))  # per gt: highest IoU first, then lowest pred id
    g_sorted = g[order]
    first = order[np.r_[True, g_sorted[1:] != g_sorted[:-1]]]
    c = int(inter[first].sum())
    u = int(union[first].sum())
    paired_g = np.zeros(len(area_g), bool)
    paired_g[g[first]] = True
    used_p = np.zeros(len(area_p), bool)
    used_p[p[first]] = True
    u += int(area_g[~paired_g].sum()) + int(area_p[~used_p].sum())
    return c, u


def _pq_counts(ov: dict[str, np.ndarray]) -> tuple[int, int, int, float]:
    iou = ov["inter"] / np.maximum(ov["union"], 1)
    m = iou > 0.5
    tp = int(m.sum())
    return tp, len(ov["area_p"]) - tp, len(ov["area_g"]) - tp, float(iou[m].sum())


def aji(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """Aggregated Jaccard index of one image (see the module docstring).

    Parameters
    ----------
    pred_labels, gt_labels : ndarray, shape (H, W), integer
        Instance labels (a binary prediction is split into connected components).

    Returns
    -------
    float in [0, 1]
    """
    p, g = _pair(pred_labels, gt_labels)
    ov = _overlaps(p, g)
    c, u = _aji_counts(ov)
    return _ratio(c, u, u == 0)


def panoptic_quality(pred_labels: np.ndarray, gt_labels: np.ndarray) -> tuple[float, float, float]:
    """Panoptic quality of one image: ``(PQ, DQ, SQ)`` with matches at IoU > 0.5.

    Parameters
    ----------
    pred_labels, gt_labels : ndarray, shape (H, W), integer

    Returns
    -------
    pq, dq, sq : float
    """
    p, g = _pair(pred_labels, gt_labels)
    m = metrics_from_counts(_pq_only(_overlaps(p, g)), radii=())
    return m["PQ"], m["DQ"], m["SQ"]


def _pq_only(ov: dict[str, np.ndarray]) -> dict[str, Any]:
    tp, fp, fn, s = _pq_counts(ov)
    return {
        "pq_tp": tp,
        "pq_fp": fp,
        "pq_fn": fn,
        "pq_iou_sum": s,
        "n_pred": len(ov["area_p"]),
        "n_gt": len(ov["area_g"]),
    }


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _check_labels(pred, "pred_labels")
    g = _check_labels(gt, "gt_labels")
    if p.shape != g.shape:
        raise InputError(f"pred_labels shape {p.shape} differs from gt_labels shape {g.shape}")
    return p, g


# ---------------------------------------------------------------------- counts and metrics
def image_counts(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    *,
    pred_centres: np.ndarray | None = None,
    radii: Sequence[float] = (6, 12),
) -> dict[str, Any]:
    """The additive counts behind every metric of one image.

    Returns
    -------
    dict
        ``tp, fp, fn, tn`` (pixels), ``det_tp@r, det_fp@r, det_fn@r`` per radius,
        ``aji_inter, aji_union``, ``pq_tp, pq_fp, pq_fn, pq_iou_sum``, ``n_pred, n_gt``.
        Summing these over images and calling :func:`metrics_from_counts` aggregates.
    """
    p, g = _pair(pred_labels, gt_labels)
    pf, gf = p.ravel() > 0, g.ravel() > 0
    cm = np.bincount(pf.astype(np.int64) * 2 + gf, minlength=4)
    counts: dict[str, Any] = {
        "tn": int(cm[0]), "fn": int(cm[1]), "fp": int(cm[2]), "tp": int(cm[3]),
    }  # fmt: skip
    gc = instance_centres(g)
    pc = instance_centres(p) if pred_centres is None else _as_points(pred_centres, "pred_centres")
    for r in radii:
        tp, fp, fn = match_centres(pc, gc, r)
        counts[f"det_tp@{_r(r)}"] = tp
        counts[f"det_fp@{_r(r)}"] = fp
        counts[f"det_fn@{_r(r)}"] = fn
    ov = _overlaps(p, g)
    counts["aji_inter"], counts["aji_union"] = _aji_counts(ov)
    counts.update(_pq_only(ov))
    counts["n_centres_pred"] = len(pc)
    return counts


def metrics_from_counts(counts: dict[str, Any], *, radii: Sequence[float] = (6, 12)) -> dict:
    """Metric values from (summed) counts of :func:`image_counts`."""
    out: dict[str, float] = {}
    if "tp" in counts:
        tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))
        n = tp + fp + fn + tn
        empty_fg = tp + fp + fn == 0
        acc = []
        if tp + fn > 0:
            acc.append(tp / (tp + fn))
        if tn + fp > 0:
            acc.append(tn / (tn + fp))
        iou_fg = _ratio(tp, tp + fp + fn, empty_fg)
        iou_bg = _ratio(tn, tn + fp + fn, tn + fp + fn == 0)
        out["PA"] = _ratio(tp + tn, n, True)
        out["MPA"] = float(np.mean(acc)) if acc else 1.0
        out["IoU"] = iou_fg
        out["FWIoU"] = _ratio((tp + fn) * iou_fg + (tn + fp) * iou_bg, n, True)
        out["Dice"] = _ratio(2 * tp, 2 * tp + fp + fn, empty_fg)
    for r in radii:
        k = _r(r)
        tp, fp, fn = counts[f"det_tp@{k}"], counts[f"det_fp@{k}"], counts[f"det_fn@{k}"]
        empty = tp + fp + fn == 0
        out[f"P@{k}"] = _ratio(tp, tp + fp, empty)
        out[f"R@{k}"] = _ratio(tp, tp + fn, empty)
        out[f"F1@{k}"] = _ratio(2 * tp, 2 * tp + fp + fn, empty)
    if "aji_union" in counts:
        out["AJI"] = _ratio(counts["aji_inter"], counts["aji_union"], counts["aji_union"] == 0)
    tp, fp, fn = counts["pq_tp"], counts["pq_fp"], counts["pq_fn"]
    empty = tp + fp + fn == 0
    dq = _ratio(tp, tp + 0.5 * fp + 0.5 * fn, empty)
    sq = _ratio(counts["pq_iou_sum"], tp, empty)
    out["PQ"], out["DQ"], out["SQ"] = dq * sq, dq, sq
    return out


def score_image(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    *,
    pred_centres: np.ndarray | None = None,
    radii: Sequence[float] = (6, 12),
) -> dict:
    """Every metric of one image.

    Parameters
    ----------
    pred_labels : ndarray, shape (H, W), integer or bool
        Predicted instance labels, or a binary mask (split into connected components).
    gt_labels : ndarray, shape (H, W), integer
        True instance labels.
    pred_centres : array_like, shape (N, 2), optional
        Predicted (y, x) centres for detection; by default the predicted instances' centroids.
    radii : sequence of float
        Matching radii of the detection metrics.

    Returns
    -------
    dict
        The metrics of :func:`metric_keys` plus ``n_pred``, ``n_gt`` and ``counts`` (the
        additive counts of :func:`image_counts`).

    Raises
    ------
    InputError
        If the shapes differ or the labels are not integer maps.
    """
    counts = image_counts(pred_labels, gt_labels, pred_centres=pred_centres, radii=radii)
    row: dict[str, Any] = metrics_from_counts(counts, radii=radii)
    row["n_pred"] = counts["n_pred"]
    row["n_gt"] = counts["n_gt"]
    row["counts"] = counts
    return row


def score_arrays(
    items: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    radii: Sequence[float] = (6, 12),
    progress: bool = False,
) -> dict:
    """Score many images and aggregate (see the module docstring for the aggregation).

    Parameters
    ----------
    items : iterable of (name, pred_labels, gt_labels, pred_centres or None)
    radii : sequence of float
    progress : bool
        Show a tqdm bar on stderr.

    Returns
    -------
    dict
        ``{"radii": [...], "aggregate": {metrics, n_images, n_pred, n_gt},
        "per_image": [{"name": ..., metrics, n_pred, n_gt, counts}, ...]}``

    Raises
    ------
    InputError
        If ``items`` is empty.
    """
    radii = tuple(radii)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="scoring", unit="image")
    per_image = []
    total: dict[str, Any] = {}
    for name, pred, gt, centres in items:
        try:
            row = score_image(pred, gt, pred_centres=centres, radii=radii)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from exc
        for k, v in row["counts"].items():
            total[k] = total.get(k, 0) + v
        per_image.append({"name": str(name), **row})
    if not per_image:
        raise InputError("score_arrays: no images to score")
    agg: dict[str, Any] = metrics_from_counts(total, radii=radii)
    agg.update(n_images=len(per_image), n_pred=total["n_pred"], n_gt=total["n_gt"], counts=total)
    return {
        "radii": [float(r) if not float(r).is_integer() else int(r) for r in radii],
        "aggregate": agg,
        "per_image": per_image,
    }


def _find_prediction(pred_dir: Path, name: str) -> Path | None:
    found = [pred_dir / f"{name}{suf}" for suf in MASK_SUFFIXES]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise DataError(
            f"{pred_dir}: {len(found)} label images for {name!r} "
            f"({', '.join(p.name for p in found)}); keep only the one to score"
        )
    return found[0] if found else None


def score_folder(
    data_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    *,
    radii: Sequence[float] = (6, 12),
    progress: bool = False,
) -> dict:
    """Score a folder of predictions against a dataset with masks.

    For each image ``<name>`` of ``data_dir`` (``images/`` + ``masks/``), the prediction is
    ``pred_dir/<name>.png`` (or ``.tif``/``.tiff``): instance labels or a binary mask; an
    optional ``pred_dir/<name>.csv`` (columns ``y,x``) gives the predicted centres for the
    detection metrics.  Files in ``pred_dir`` that match no image are ignored.

    A missing label image is scored as empty for the segmentation metrics (no nuclei), with
    a :class:`UserWarning` naming the file that was expected and saying where the centres
    come from: the CSV when there is one (the detection metrics are then the CSV's), else
    none.  Without a CSV the centres are the label image's centroids.

    Returns
    -------
    dict
        As :func:`score_arrays`, plus ``"data"`` and ``"pred"`` (the folders),
        ``"missing"`` (names without a label image, segmentation scored as empty) and
        ``"sources"``: per image, ``{"labels": file or None, "centres": file, "labels"
        (the label image's centroids) or None}``.

    Raises
    ------
    DataError
        If ``pred_dir`` is not a folder, holds no prediction for any image, holds two label
        images for one name (``x.png`` and ``x.tif``), or a prediction's size differs from
        its mask's.
    """
    from mcf_fast.io.images import read_labels
    from mcf_fast.io.templates import read_points_csv

    ds = FolderDataset(data_dir, require_masks=True)
    pdir = Path(pred_dir)
    if not pdir.is_dir():
        raise DataError(f"{pdir}: prediction folder not found")
    found = {
        n: (_find_prediction(pdir, n), pdir / f"{n}.csv" if (pdir / f"{n}.csv").is_file() else None)
        for n in ds.names
    }
    if not any(a is not None or b is not None for a, b in found.values()):
        raise DataError(
            f"{pdir}: no prediction for any of the {len(ds)} images of {ds.root} "
            f"(expected e.g. {ds.names[0]}.png)"
        )
    missing: list[str] = []
    sources = {
        n: {
            "labels": str(lab) if lab else None,
            "centres": str(c) if c else ("labels" if lab else None),
        }
        for n, (lab, c) in found.items()
    }

    def items():
        for s in ds:
            gt = ds.load_mask(s.name)
            lab_path, csv_path = found[s.name]
            if lab_path is None:
                detection = (
                    f"detection scored from {csv_path.name}"
                    if csv_path is not None
                    else "detection scored as empty too"
                )
                warnings.warn(
                    f"{pdir / (s.name + '.png')}: prediction missing; segmentation scored "
                    f"as empty, {detection}",
                    UserWarning,
                    stacklevel=3,
                )
                missing.append(s.name)
                pred = np.zeros_like(gt)
            else:
                pred = read_labels(lab_path)
                if pred.shape != gt.shape:
                    raise DataError(
                        f"{lab_path}: prediction size {pred.shape[0]}x{pred.shape[1]} differs "
                        f"from the mask {s.mask_path} ({gt.shape[0]}x{gt.shape[1]})"
                    )
            centres = read_points_csv(csv_path) if csv_path is not None else None
            yield s.name, pred, gt, centres

    result = score_arrays(items(), radii=radii, progress=progress)
    return {
        "data": str(ds.root),
        "pred": str(pdir),
        "missing": missing,
        "sources": sources,
        **result,
    }


def describe_sources(result: dict) -> str:
    """One line saying what :func:`score_folder` scored: label images, CSVs, missing files."""
    src = result.get("sources", {})
    n = len(src)
    labels = sum(1 for v in src.values() if v["labels"])
    csvs = sum(1 for v in src.values() if v["centres"] not in (None, "labels"))
    return (
        f"scored {n} image(s): {labels} with a label image (segmentation), {n - labels} "
        f"without (segmentation scored as empty); centres from {csvs} CSV file(s), "
        f"{sum(1 for v in src.values() if v['centres'] == 'labels')} from label centroids"
    )


def markdown_table(result: dict, *, per_image: bool = True) -> str:
    """A Markdown table of a :func:`score_arrays` / :func:`score_folder` result.

    One row per image (when ``per_image``) and a final bold ``aggregate`` row; values with
    four decimals.
    """
    radii = result.get("radii", (6, 12))
    keys = metric_keys(radii)
    head = "| image | " + " | ".join(keys) + " | nuclei (gt/pred) |"
    sep = "|---|" + "---:|" * len(keys) + "---:|"
    lines = [head, sep]

    def fmt(row: dict, name: str) -> str:
        vals = " | ".join(f"{row[k]:.4f}" for k in keys)
        return f"| {name} | {vals} | {row['n_gt']}/{row['n_pred']} |"

    if per_image:
        lines.extend(fmt(r, r["name"]) for r in result["per_image"])
    lines.append(fmt(result["aggregate"], f"**aggregate ({result['aggregate']['n_images']})**"))
    return "\n".join(lines)
