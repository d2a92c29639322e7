"""Metrics on tiny hand-computed cases, against slow references, and on MoNuSeg."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcf_fast import metrics as M
from mcf_fast.errors import DataError, InputError
from mcf_fast.io.images import write_image


def box(shape, boxes):
    """Label map with box i (r0, r1, c0, c1 inclusive) labelled i + 1."""
    out = np.zeros(shape, np.int32)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        out[r0 : r1 + 1, c0 : c1 + 1] = i + 1
    return out


def check(row, expected):
    for k, v in expected.items():
        assert row[k] == pytest.approx(v, abs=1e-12), k


# ---------------------------------------------------------------------- hand-computed cases
def test_perfect():
    gt = box((8, 9), [(1, 2, 1, 3), (5, 7, 4, 8)])
    row = M.score_image(gt.copy(), gt)
    check(row, {k: 1.0 for k in M.METRIC_KEYS})
    assert row["n_gt"] == row["n_pred"] == 2


def test_empty_prediction():
    # 4x4 image, one 2x2 nucleus; nothing predicted.
    # pixels: tp 0, fp 0, fn 4, tn 12.  PA = 12/16; MPA = (0/4 + 12/12)/2 = 0.5;
    # IoU = 0; IoU_bg = 12/16; FWIoU = 4/16*0 + 12/16*12/16 = 0.5625; Dice = 0.
    # detection: tp 0, fp 0, fn 1 -> P = 0 (zero denominator, not both empty), R = F1 = 0.
    # AJI: C = 0, U = 4 -> 0.  PQ: tp 0, fn 1 -> DQ = 0, SQ = 0, PQ = 0.
    gt = box((4, 4), [(1, 2, 1, 2)])
    row = M.score_image(np.zeros_like(gt), gt)
    check(row, {"PA": 0.75, "MPA": 0.5, "IoU": 0.0, "FWIoU": 0.5625, "Dice": 0.0,
                "P@6": 0.0, "R@6": 0.0, "F1@6": 0.0, "AJI": 0.0, "PQ": 0.0, "DQ": 0.0,
                "SQ": 0.0})  # fmt: skip


def test_both_empty_is_perfect():
    z = np.zeros((5, 5), np.int32)
    check(M.score_image(z, z), {k: 1.0 for k in M.METRIC_KEYS})


def test_shifted_by_one_pixel():
    # 6x6 image, 2x2 nucleus at rows 2-3, cols 2-3; prediction the same moved right by 1.
    # pixels: tp 2, fp 2, fn 2, tn 30.  PA = 32/36; MPA = (2/4 + 30/32)/2 = 0.71875;
    # IoU = 2/6; IoU_bg = 30/34; FWIoU = 4/36 * 1/3 + 32/36 * 30/34; Dice = 4/8.
    # centres 1 px apart -> P = R = F1 = 1 at 6 and 12.  AJI = 2/6.
    # PQ: IoU 1/3 <= 0.5 -> no match: tp 0, fp 1, fn 1 -> 0.
    gt = box((6, 6), [(2, 3, 2, 3)])
    pred = box((6, 6), [(2, 3, 3, 4)])
    row = M.score_image(pred, gt)
    check(row, {"PA": 32 / 36, "MPA": 0.71875, "IoU": 1 / 3,
                "FWIoU": 4 / 36 / 3 + 32 / 36 * 30 / 34, "Dice": 0.5,
                "P@6": 1.0, "R@6": 1.0, "F1@6": 1.0, "P@12": 1.0, "F1@12": 1.0,
                "AJI": 1 / 3, "PQ": 0.0, "DQ": 0.0, "SQ": 0.0})  # fmt: skip


def test_one_nucleus_split_in_two():
    # 4x7 image; true nucleus rows 1-2, cols 1-5 (10 px); predicted as cols 1-3 (6 px, id 1)
    # and cols 4-5 (4 px, id 2).  Pixels identical -> pixel metrics 1.
    # centres: gt (1.5, 3.0); pred (1.5, 2.0), (1.5, 4.5) -> tp 1, fp 1, fn 0:
    # P = 0.5, R = 1, F1 = 2/3.
    # AJI: best IoU 6/10 (pred 1): C = 6, U = 10, plus unpaired pred 2 (4 px) -> 6/14.
    # PQ: pred 1 matches at IoU 0.6: tp 1, fp 1, fn 0 -> DQ = 1/1.5, SQ = 0.6, PQ = 0.4.
    gt = box((4, 7), [(1, 2, 1, 5)])
    pred = box((4, 7), [(1, 2, 1, 3), (1, 2, 4, 5)])
    row = M.score_image(pred, gt)
    check(row, {"PA": 1.0, "MPA": 1.0, "IoU": 1.0, "FWIoU": 1.0, "Dice": 1.0,
                "P@6": 0.5, "R@6": 1.0, "F1@6": 2 / 3, "AJI": 6 / 14,
                "DQ": 2 / 3, "SQ": 0.6, "PQ": 0.4})  # fmt: skip


def test_two_nuclei_merged_into_one():
    # 4x7 image; true nuclei rows 1-2 cols 1-2 and rows 1-2 cols 4-5 (4 px each); predicted
    # as one instance rows 1-2 cols 1-5 (10 px, the 2 px gap included).
    # pixels: tp 8, fp 2, fn 0, tn 18.  PA = 26/28; MPA = (8/8 + 18/20)/2 = 0.95;
    # IoU = 8/10; IoU_bg = 18/20; FWIoU = 8/28*0.8 + 20/28*0.9; Dice = 16/18.
    # centres: gt (1.5, 1.5), (1.5, 4.5); pred (1.5, 3.0) -> tp 1, fp 0, fn 1:
    # P = 1, R = 0.5, F1 = 2/3.
    # AJI: each true nucleus pairs with the merged one: C = 4 + 4, U = 10 + 10 -> 0.4.
    # PQ: both IoUs 0.4 -> no match -> 0.
    gt = box((4, 7), [(1, 2, 1, 2), (1, 2, 4, 5)])
    pred = box((4, 7), [(1, 2, 1, 5)])
    row = M.score_image(pred, gt)
    check(row, {"PA": 26 / 28, "MPA": 0.95, "IoU": 0.8, "FWIoU": (8 * 0.8 + 20 * 0.9) / 28,
                "Dice": 16 / 18, "P@6": 1.0, "R@6": 0.5, "F1@6": 2 / 3, "AJI": 0.4,
                "PQ": 0.0, "DQ": 0.0, "SQ": 0.0})  # fmt: skip


def test_binary_prediction_becomes_components():
    gt = box((6, 9), [(1, 2, 1, 2), (3, 4, 5, 7)])
    binary = (gt > 0).astype(np.uint8) * 255
    check(M.score_image(binary, gt), {k: 1.0 for k in M.METRIC_KEYS})


def test_explicit_centres_override_centroids():
    gt = box((20, 20), [(2, 5, 2, 5), (12, 15, 12, 15)])
    far = np.array([[3.5, 3.5 + 7.0], [13.5, 13.5]])  # first centre 7 px off
    row = M.score_image(gt, gt, pred_centres=far)
    assert row["P@6"] == 0.5 and row["R@6"] == 0.5
    assert row["F1@12"] == 1.0
    assert row["AJI"] == 1.0  # masks still perfect


def test_shifted_labels_keep_detection_but_lose_dice():
    rng = np.random.default_rng(3)
    gt = np.zeros((64, 64), np.int32)
    for i in range(12):
        r, c = rng.integers(6, 54, size=2)
        gt[r : r + 5, c : c + 5] = np.where(gt[r : r + 5, c : c + 5] == 0, i + 1, 0)
    shifted = np.zeros_like(gt)
    shifted[:, 3:] = gt[:, :-3]
    row = M.score_image(shifted, gt)
    assert row["F1@6"] == 1.0 and row["F1@12"] == 1.0
    assert row["Dice"] < 1.0 and row["IoU"] < 1.0


def test_aggregation_sums_counts():
    # image a: perfect 2x2 nucleus (C = 4, U = 4); image b: the empty prediction above
    # (C = 0, U = 4).  AJI = (4 + 0)/(4 + 4) = 0.5, not mean of per-image AJIs (also 0.5 here)
    # -> use a bigger nucleus in a: C = U = 9 -> aggregate AJI = 9/13.
    # detection: tp 1 + 0, fn 0 + 1 -> R = 0.5, P = 1.
    # pixels: a 3x3 in 5x5: tp 9, tn 16; b: fn 4, tn 12 -> IoU = 9/13, PA = (25 + 12)/41.
    a = box((5, 5), [(1, 3, 1, 3)])
    b = box((4, 4), [(1, 2, 1, 2)])
    res = M.score_arrays([("a", a, a, None), ("b", np.zeros_like(b), b, None)])
    agg = res["aggregate"]
    check(agg, {"AJI": 9 / 13, "R@6": 0.5, "P@6": 1.0, "IoU": 9 / 13, "PA": 37 / 41,
                "DQ": 1 / 1.5, "SQ": 1.0})  # fmt: skip
    assert [r["name"] for r in res["per_image"]] == ["a", "b"]
    assert agg["n_images"] == 2 and agg["n_gt"] == 2 and agg["n_pred"] == 1
    json.dumps(res)  # JSON-ready
    table = M.markdown_table(res)
    assert table.count("\n") == 4 and "| a |" in table and "aggregate" in table


def test_radius_is_inclusive_and_validated():
    assert M.match_centres([[0, 0]], [[0, 6]], 6) == (1, 0, 0)
    assert M.match_centres([[0, 0]], [[0, 6.001]], 6) == (0, 1, 1)
    assert M.match_centres(np.zeros((0, 2)), [[1, 1]], 6) == (0, 0, 1)
    with pytest.raises(InputError, match="radius"):
        M.match_centres([[0, 0]], [[0, 0]], 0)


def test_matching_beats_greedy():
    # greedy nearest-first would pair p0-g0 (d 0.5) and leave p1, g1 unmatched (d 2.5 > 2).
    pred = [[0, 0.5], [0, -1.5]]
    gt = [[0, 0.0], [0, 2.0]]
    assert M.match_centres(pred, gt, 2.0) == (2, 0, 0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(InputError, match="shape"):
        M.score_image(np.zeros((3, 4), int), np.zeros((4, 3), int))


def test_instance_centres_handles_gaps_and_empty():
    lab = np.zeros((5, 5), np.int32)
    lab[0, 0] = 7
    lab[4, 2:4] = 3
    np.testing.assert_allclose(M.instance_centres(lab), [[4, 2.5], [0, 0]])
    assert M.instance_centres(np.zeros((3, 3), int)).shape == (0, 2)


# ---------------------------------------------------------------------- slow references
def ref_match(pred, gt, r):
    """Maximum number of pairs within r, by brute force."""
    best = 0
    n_p, n_g = len(pred), len(gt)
    for k in range(min(n_p, n_g), 0, -1):
        for ps in itertools.permutations(range(n_p), k):
            for gs in itertools.combinations(range(n_g), k):
                pairs = zip(ps, gs, strict=True)
                if all(np.hypot(*np.subtract(pred[i], gt[j])) <= r for i, j in pairs):
                    return k
    return best


def ref_aji(pred, gt):
    gids = [g for g in np.unique(gt) if g]
    pids = [p for p in np.unique(pred) if p]
    c = u = 0
    used = set()
    for g in gids:
        gm = gt == g
        best, best_iou = None, 0.0
        for p in pids:
            pm = pred == p
            inter = np.logical_and(gm, pm).sum()
            if inter == 0:
                continue
            iou = inter / np.logical_or(gm, pm).sum()
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None:
            u += gm.sum()
        else:
            pm = pred == best
            c += np.logical_and(gm, pm).sum()
            u += np.logical_or(gm, pm).sum()
            used.add(best)
    u += sum((pred == p).sum() for p in pids if p not in used)
    return 1.0 if u == 0 else c / u


def ref_pq(pred, gt):
    gids = [g for g in np.unique(gt) if g]
    pids = [p for p in np.unique(pred) if p]
    tp, s = 0, 0.0
    for g in gids:
        for p in pids:
            inter = np.logical_and(gt == g, pred == p).sum()
            iou = inter / np.logical_or(gt == g, pred == p).sum()
            if iou > 0.5:
                tp += 1
                s += iou
    fp, fn = len(pids) - tp, len(gids) - tp
    if tp + fp + fn == 0:
        return 1.0, 1.0, 1.0
    dq = tp / (tp + fp / 2 + fn / 2)
    sq = s / tp if tp else 0.0
    return dq * sq, dq, sq


label_maps = st.integers(0, 2**31 - 1).map(
    lambda s: (
        np.random.default_rng(s).integers(0, 4, size=(7, 9))
        * (np.random.default_rng(s + 1).random((7, 9)) < 0.6)
    )
)


@settings(max_examples=60, deadline=None)
@given(pred=label_maps, gt=label_maps)
def test_aji_and_pq_match_references(pred, gt):
    pred = pred + 10 * (pred > 0)  # non-sequential ids
    assert M.aji(pred, gt) == pytest.approx(ref_aji(pred, gt), abs=1e-12)
    np.testing.assert_allclose(M.panoptic_quality(pred, gt), ref_pq(pred, gt), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    pred=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=5),
    gt=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=5),
    r=st.sampled_from([1.0, 1.5, 2.5, 4.0]),
)
def test_matching_is_maximum(pred, gt, r):
    tp, fp, fn = M.match_centres(
        np.array(pred, float).reshape(-1, 2), np.array(gt, float).reshape(-1, 2), r
    )
    assert tp == ref_match(pred, gt, r)
    assert tp + fp == len(pred) and tp + fn == len(gt)


# ---------------------------------------------------------------------- folders
def make_pair_folder(tmp_path, n=2):
    data, pred = tmp_path / "data", tmp_path / "pred"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    pred.mkdir()
    labs = {}
    for i in range(n):
        lab = box((16, 20), [(2, 5, 2 + i, 6 + i), (9, 13, 10, 15)]).astype(np.uint16)
        write_image(data / "images" / f"im{i}.png", np.full((16, 20, 3), 100, np.uint8))
        write_image(data / "masks" / f"im{i}.png", lab)
        labs[f"im{i}"] = lab
    return data, pred, labs


def test_score_folder_missing_prediction_warns(tmp_path):
    data, pred, labs = make_pair_folder(tmp_path)
    write_image(pred / "im0.png", labs["im0"])
    with pytest.warns(UserWarning, match=r"im1\.png: prediction missing"):
        res = M.score_folder(data, pred)
    assert res["missing"] == ["im1"]
    assert res["per_image"][0]["AJI"] == 1.0 and res["per_image"][1]["AJI"] == 0.0
    assert res["aggregate"]["R@6"] == 0.5


def test_score_folder_uses_centres_csv(tmp_path):
    data, pred, labs = make_pair_folder(tmp_path, n=1)
    write_image(pred / "im0.png", labs["im0"])
    (pred / "im0.csv").write_text("y,x\n3.5,4\n")
    res = M.score_folder(data, pred)
    assert res["per_image"][0]["P@6"] == 1.0 and res["per_image"][0]["R@6"] == 0.5


def test_score_folder_reads_centres_in_pixel_corners(tmp_path):
    from scipy import ndimage as ndi

    data, pred, labs = make_pair_folder(tmp_path, n=1)
    lab = labs["im0"]
    write_image(pred / "im0.png", lab)
    ids = np.unique(lab[lab > 0])
    cen = np.asarray(ndi.center_of_mass(np.ones(lab.shape), lab, ids)).reshape(-1, 2)
    rows = "".join(f"{float(y) + 0.5!r},{float(x) + 0.5!r}\n" for y, x in cen)
    (pred / "im0.csv").write_text("y,x\n" + rows)
    res = M.score_folder(data, pred, radii=(0.01,))
    assert res["per_image"][0]["F1@0.01"] == 1.0


def test_score_folder_errors(tmp_path):
    data, pred, labs = make_pair_folder(tmp_path, n=1)
    with pytest.raises(DataError, match="no prediction for any"):
        M.score_folder(data, pred)
    write_image(pred / "im0.png", np.zeros((5, 5), np.uint16))
    with pytest.raises(DataError, match=r"im0\.png.*differs"):
        M.score_folder(data, pred)
    with pytest.raises(DataError, match="not found"):
        M.score_folder(data, tmp_path / "nope")


@pytest.mark.data
def test_monuseg_self_score_and_shift(monuseg):
    from mcf_fast.io.datasets import FolderDataset

    ds = FolderDataset(monuseg / "test", require_masks=True)
    names = ds.names[:3]
    masks = [ds.load_mask(n) for n in names]
    res = M.score_arrays([(n, m, m, None) for n, m in zip(names, masks, strict=True)])
    assert all(res["aggregate"][k] == 1.0 for k in M.METRIC_KEYS)
    shifted = []
    for m in masks:
        s = np.zeros_like(m)
        s[:, 3:] = m[:, :-3]
        shifted.append(s)
    res = M.score_arrays([(n, s, m, None) for n, s, m in zip(names, shifted, masks, strict=True)])
    assert res["aggregate"]["F1@6"] == 1.0
    assert res["aggregate"]["Dice"] < 0.95


def test_huge_and_sparse_instance_ids():
    gt = box((8, 9), [(1, 2, 1, 3), (5, 7, 4, 8)])
    pred = np.where(gt == 1, 2**31 - 5, np.where(gt == 2, 70000, 0)).astype(np.int64)
    check(M.score_image(pred, gt), {k: 1.0 for k in M.METRIC_KEYS})
    np.testing.assert_allclose(M.instance_centres(pred), M.instance_centres(gt)[::-1])
    big = np.where(gt == 1, 2**40, np.where(gt == 2, 3 * 2**40, 0)).astype(np.uint64)
    check(M.score_image(big, gt), {k: 1.0 for k in M.METRIC_KEYS})
