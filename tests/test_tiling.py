"""Tiling: grid, ownership, slide-wide ids, label pairing, and tiled == whole-image results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcf_fast.errors import InputError
from mcf_fast.io.export import (
    CSV_COLUMNS,
    concat_geojson,
    geojson_fragment,
    iter_features,
    overlay,
    write_csv,
    write_geojson,
)
from mcf_fast.io.tiling import (
    associate,
    centre_pixel,
    id_to_yx,
    instance_ids,
    owned,
    tile_grid,
    tile_labels,
)
from mcf_fast.ops.measure import measure_nuclei
from mcf_fast.slide.predictors import BlobPredictor, nearest_centre_labels
from mcf_fast.slide.worker import predict_tiled


def synthetic_tissue(shape: tuple[int, int], *, n: int, seed: int = 0) -> np.ndarray:
    """Pink tissue with `n` dark purple elliptical nuclei of radius 4-11 px, and noise."""
    rng = np.random.default_rng(seed)
    H, W = shape
    img = np.empty((H, W, 3), np.float32)
    img[:] = (225, 160, 200)
    yy, xx = np.mgrid[0:H, 0:W]
    for _ in range(n):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(4, 11, 2)
        y0, y1 = int(max(0, cy - ry - 1)), int(min(H, cy + ry + 2))
        x0, x1 = int(max(0, cx - rx - 1)), int(min(W, cx + rx + 2))
        sub = ((yy[y0:y1, x0:x1] - cy) / ry) ** 2 + ((xx[y0:y1, x0:x1] - cx) / rx) ** 2 <= 1
        img[y0:y1, x0:x1][sub] = rng.uniform(0.8, 1.0) * np.array((95, 60, 140))
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------- the grid
@settings(max_examples=60, deadline=None)
@given(
    H=st.integers(1, 300),
    W=st.integers(1, 300),
    tile=st.integers(16, 128),
    margin=st.integers(0, 70),
)
def test_cores_partition_and_reads_contain_cores(H, W, tile, margin):
    tiles = tile_grid((H, W), tile=tile, margin=margin)
    cover = np.zeros((H, W), np.int32)
    for i, t in enumerate(tiles):
        assert t.index == i
        y0, x0, y1, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        ry0, rx0, ry1, rx1 = t.read
        assert 0 <= ry0 <= y0 and 0 <= rx0 <= x0 and y1 <= ry1 <= H and x1 <= rx1 <= W
        assert ry0 == max(0, y0 - margin) and ry1 == min(H, y1 + margin)
        assert rx0 == max(0, x0 - margin) and rx1 == min(W, x1 + margin)
    assert (cover == 1).all()


@settings(max_examples=40, deadline=None)
@given(data=st.data(), H=st.integers(16, 200), W=st.integers(16, 200), tile=st.integers(16, 64))
def test_every_centre_has_exactly_one_owner(data, H, W, tile):
    n = data.draw(st.integers(0, 30))
    # pixel-index coordinates: the image covers [-0.5, H - 0.5) x [-0.5, W - 0.5)
    ys = data.draw(st.lists(st.floats(-0.5, H - 0.5, exclude_max=True), min_size=n, max_size=n))
    xs = data.draw(st.lists(st.floats(-0.5, W - 0.5, exclude_max=True), min_size=n, max_size=n))
    c = np.stack([np.asarray(ys, float), np.asarray(xs, float)], axis=1).reshape(-1, 2)
    count = sum(owned(c, t.core).astype(int) for t in tile_grid((H, W), tile=tile, margin=5))
    assert np.all(count == 1)


def test_grid_rejects_bad_arguments():
    with pytest.raises(InputError, match="tile"):
        tile_grid((100, 100), tile=8, margin=0)
    with pytest.raises(InputError, match="margin"):
        tile_grid((100, 100), tile=32, margin=-1)
    with pytest.raises(InputError, match="shape"):
        tile_grid((0, 100), tile=32, margin=0)


def test_ids_encode_the_centre_pixel():
    # pixel (r, c) holds the pixel-index points within half a pixel of (r, c)
    c = np.array([[0.2, 0.4], [5.49, 7.0], [4.5, 6.6], [99.4, 148.51], [-0.5, -0.2]])
    ids = instance_ids(c, 150)
    np.testing.assert_array_equal(ids, [1, 5 * 150 + 7 + 1, 5 * 150 + 7 + 1, 99 * 150 + 149 + 1, 1])
    np.testing.assert_array_equal(id_to_yx(ids, 150), centre_pixel(c))
    # the formula the docs give, on the pixel-corner coordinates of the CSV and GeoJSON
    corner = c + 0.5
    np.testing.assert_array_equal(ids, np.floor(corner[:, 0]) * 150 + np.floor(corner[:, 1]) + 1)


# ------------------------------------------------------------------------- pairing labels
def test_associate_pairs_labels_with_centres():
    lab = np.zeros((10, 12), np.int32)
    lab[1:4, 1:4] = 7  # claimed by centre 2
    lab[6:9, 6:9] = 3  # no centre: an orphan, appended with a centre on its pixels
    lab[1:3, 8:11] = 5  # claimed by centre 1, and centre 4 also falls on it
    centres = np.array([[1.0, 9.0], [2.0, 2.0], [8.0, 0.0], [2.0, 10.0]])
    out, c = associate(lab, centres)
    assert c.shape == (5, 2)
    assert (out[1:4, 1:4] == 2).all() and (out[1:3, 8:11] == 1).all()
    assert out[8, 0] == 3  # centre on background keeps a one-pixel shape
    assert (out[6:9, 6:9] == 5).all() and out[int(c[4, 0]), int(c[4, 1])] == 5
    assert out[2, 10] == 1  # the second centre on label 5 does not steal its pixel
    with pytest.raises(InputError, match="outside"):
        associate(lab, np.array([[10.0, 0.0]]))


def test_associate_keeps_an_ordered_pairing():
    lab = np.zeros((12, 12), np.int32)
    lab[1:10, 1:3] = 1  # an L: its centroid lies outside it
    lab[8:10, 1:10] = 1
    lab[2:4, 7:9] = 2
    cen = np.array([[7.0, 4.0], [2.5, 7.5], [11.0, 11.0]])  # centroids; the third is empty
    out, c = associate(lab, cen, ordered=True)
    np.testing.assert_array_equal(out[lab == 1], 1)
    np.testing.assert_array_equal(out[lab == 2], 2)
    assert out[11, 11] == 3 and len(c) == 3
    loose, c2 = associate(lab, cen)  # unordered: the L's centroid is on background
    assert len(c2) == 4 and loose[7, 4] == 1


def test_tile_labels_owns_and_renumbers():
    tiles = tile_grid((40, 60), tile=32, margin=8)
    t = tiles[1]  # core x 32..60, read x 24..60
    lab = np.zeros(t.read_shape, np.int32)
    lab[2:6, 2:6] = 1  # centre at read (3, 3) -> slide x 27: owned by tile 0
    lab[10:14, 20:24] = 2  # centre slide x 44: owned here
    cen = np.array([[3.0, 3.0], [11.0, 21.0]])
    tl = tile_labels(lab, cen, t, width=60)
    np.testing.assert_array_equal(tl.ids, instance_ids(np.array([[11.0, 45.0]]), 60))
    assert tl.labels.max() == 1 and (tl.labels[10:14, 20:24] == 1).all()
    assert (tl.labels[2:6, 2:6] == 0).all()
    # the core holds every nucleus pixel inside it, owned or not, by slide-wide id
    assert tl.core.shape == (32, 28)
    assert (tl.core[10:14, 12:16] == tl.ids[0]).all()
    with pytest.raises(InputError, match="shape"):
        tile_labels(lab[:-1], cen, t, width=60)
    with pytest.raises(InputError, match="no centre"):
        tile_labels(lab, cen[:1], t, width=60)


def _nearest_reference(fg, markers, radius):
    """Brute force: every foreground pixel to its nearest marker within radius."""
    pts = np.argwhere(markers > 0)
    out = np.zeros(markers.shape, np.int64)
    dmin = np.full(markers.shape, np.inf)
    for y, x in pts:
        yy, xx = np.mgrid[0 : markers.shape[0], 0 : markers.shape[1]]
        d = np.hypot(yy - y, xx - x)
        better = d < dmin
        dmin[better] = d[better]
        out[better] = markers[y, x]
    return out, dmin


@settings(max_examples=40, deadline=None)
@given(data=st.data(), H=st.integers(1, 40), W=st.integers(1, 40), radius=st.floats(0.5, 12))
def test_nearest_centre_labels_matches_brute_force(data, H, W, radius):
    fg = np.asarray(data.draw(st.lists(st.booleans(), min_size=H * W, max_size=H * W)))
    fg = fg.reshape(H, W)
    markers = np.zeros((H, W), np.int32)
    k = data.draw(st.integers(0, 6))
    for j in range(k):
        markers[data.draw(st.integers(0, H - 1)), data.draw(st.integers(0, W - 1))] = j + 1
    got = nearest_centre_labels(fg, markers, radius=radius)
    if not markers.any():
        assert not got.any()
        return
    ref, dmin = _nearest_reference(fg, markers, radius)
    inside = fg & (dmin <= radius) & (markers == 0)
    # ties between equidistant markers may go either way: check the distance instead
    pts = {int(v): np.argwhere(markers == v)[0] for v in np.unique(markers) if v}
    for y, x in np.argwhere(inside):
        py, px = pts[int(got[y, x])]
        assert np.hypot(py - y, px - x) == pytest.approx(dmin[y, x])
    assert not got[~fg & (markers == 0)].any()
    assert not got[fg & (dmin > radius)].any()
    np.testing.assert_array_equal(got[markers > 0], markers[markers > 0])


# ------------------------------------------------------------------------- tiled == whole
def _check_tiled_equals_whole(img, predictor, tile):
    whole, ids_w, cen_w = predict_tiled(img, predictor, tile=max(img.shape))
    tiled, ids_t, cen_t = predict_tiled(img, predictor, tile=tile)
    assert len(ids_w) > 50
    np.testing.assert_array_equal(ids_t, ids_w)
    np.testing.assert_array_equal(cen_t, cen_w)
    np.testing.assert_array_equal(tiled, whole)
    # every id in the label map is a detected nucleus, and each sits on its own centre
    present = np.unique(whole)[1:]
    assert set(present) <= set(ids_w)
    yx = id_to_yx(ids_w, img.shape[1])
    np.testing.assert_array_equal(whole[yx[:, 0], yx[:, 1]], ids_w)
    return whole, ids_w


def test_tiled_equals_whole_on_synthetic_tissue():
    img = synthetic_tissue((700, 900), n=900, seed=1)
    p = BlobPredictor()
    p = p.calibrated(p.calibration([img]))
    _check_tiled_equals_whole(img, p, tile=128)


@pytest.mark.data
def test_tiled_equals_whole_on_a_2048_monuseg_mosaic(monuseg):
    """The acceptance test: 2048 x 2048, 16 tiles of 512 with the predictor's halo.

    With one slide-level normalisation constant every tile sees what the whole image sees,
    so centres, ids and masks are identical, pixel for pixel.  Normalising each tile by its
    own statistics (the uncalibrated predictor) breaks that: this is why runs calibrate.
    """
    from mcf_fast.io.images import read_image

    names = sorted((monuseg / "train" / "images").glob("*.png"))[:4]
    ims = [read_image(p)[:1000, :1000] for p in names]
    mosaic = np.concatenate([np.concatenate(ims[:2], 1), np.concatenate(ims[2:], 1)], 0)
    img = np.pad(mosaic, ((0, 48), (0, 48), (0, 0)), mode="reflect")
    assert img.shape == (2048, 2048, 3)
    raw = BlobPredictor()
    p = raw.calibrated(raw.calibration([img]))
    whole, ids = _check_tiled_equals_whole(img, p, tile=512)
    assert len(ids) > 1000
    per_tile, ids_pt, _ = predict_tiled(img, raw, tile=512)
    assert not (np.array_equal(ids_pt, ids) and np.array_equal(per_tile, whole))


def _point_templates(monuseg, n=3):
    """A small template set: `n` large nuclei of the first train image (fast to build)."""
    from scipy import ndimage as ndi

    from mcf_fast.io.images import read_image, read_labels
    from mcf_fast.io.templates import TemplateSet

    name = sorted((monuseg / "train" / "images").glob("*.png"))[0]
    img = read_image(name)
    lab = read_labels(monuseg / "train" / "masks" / f"{name.stem}.png")
    big = np.argsort(np.bincount(lab.ravel()))[::-1][1 : 1 + 13 * n : 13]
    pts = np.asarray(ndi.center_of_mass(lab > 0, lab, big))
    return TemplateSet.from_points(img, pts, size=32, image_name=name.stem)


def _mosaic(monuseg, side):
    from mcf_fast.io.images import read_image

    names = sorted((monuseg / "train" / "images").glob("*.png"))[1:5]
    ims = [read_image(p)[:1000, :1000] for p in names]
    m = np.concatenate([np.concatenate(ims[:2], 1), np.concatenate(ims[2:], 1)], 0)
    return np.ascontiguousarray(np.pad(m, ((0, 48), (0, 48), (0, 0)), mode="reflect")[:side, :side])


def _check_detector_tiling(monuseg, side, tile):
    """Whole vs tiled with the detector; returns the mismatch shares (docs/slides.md)."""
    pytest.importorskip("mcf_fast.detection.detector")
    from mcf_fast.detection.detector import Detector
    from mcf_fast.slide.predictors import DetectorPredictor

    img = _mosaic(monuseg, side)
    raw = DetectorPredictor(Detector(_point_templates(monuseg)))
    p = raw.calibrated(raw.calibration([img]))
    whole, ids_w, cen_w = predict_tiled(img, p, tile=side)
    tiled, ids_t, cen_t = predict_tiled(img, p, tile=tile)
    assert len(ids_w) > side * side / 2000  # it does find nuclei
    cw, ct = set(map(tuple, cen_w.astype(int))), set(map(tuple, cen_t.astype(int)))
    centre_share = len(cw ^ ct) / len(cw)
    fg = (whole > 0) | (tiled > 0)
    pixel_share = float((whole != tiled).sum() / fg.sum())
    assert centre_share <= 0.01, centre_share
    assert pixel_share <= 0.005, pixel_share
    # away from the slide's outer edge (where GDBP compares values replicated beyond the
    # image, equal up to float rounding) the centres agree almost everywhere
    q = p.detector.config.gdbp_q
    inner = [c for c in cw ^ ct if q <= c[0] < side - q and q <= c[1] < side - q]
    assert len(inner) <= 0.002 * len(cw), inner
    # matched nuclei carry the same id in both, and the ids are consistent with the maps
    same = np.intersect1d(ids_w, ids_t)
    assert len(same) >= 0.99 * len(ids_w)
    return centre_share, pixel_share


@pytest.mark.data
def test_detector_tiled_equals_whole_up_to_border_cases(monuseg):
    _check_detector_tiling(monuseg, 768, 384)


@pytest.mark.slow
@pytest.mark.data
def test_detector_tiled_equals_whole_on_2048(monuseg):
    """The acceptance size with the real detector (about a minute on 2 cores): opt in with
    ``-m slow``."""
    _check_detector_tiling(monuseg, 2048, 512)


# ------------------------------------------------------------------------- measurements
def test_measure_nuclei_outlines_and_measurements():
    lab = np.zeros((30, 40), np.int32)
    lab[5:10, 5:10] = 1  # 5 x 5 square
    lab[20:30, 30:34] = 2  # touches the bottom edge of the read box
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[lab == 1] = (10, 20, 30)
    t = measure_nuclei(
        lab,
        rgb,
        ids=np.array([11, 22]),
        centres=np.array([[107, 207], [125, 231]]),
        origin=(100, 200),
        downsample=2.0,
        mpp=0.5,
        slide_shape=(1000, 1000),
        read_box=(100, 200, 130, 240),
    )
    # px measurements are level-0 pixels, like the coordinates (downsample 2: 4 per pixel)
    np.testing.assert_array_equal(t["area_px"], [100, 160])
    np.testing.assert_allclose(t["area_um2"], [25 * 0.25, 40 * 0.25])
    np.testing.assert_allclose(t["perimeter_um"], t["perimeter_px"] / 2 * 0.5)
    np.testing.assert_array_equal(t["clipped"], [False, True])
    np.testing.assert_allclose(t["y"], [(107 + 0.5) * 2, (125 + 0.5) * 2])
    np.testing.assert_allclose(t["centroid_x"][0], (207 + 0.5) * 2)
    assert t["mean_r"][0] == 10 and t["mean_b"][0] == 30
    ring = t["poly_xy"][t["poly_offsets"][0] : t["poly_offsets"][1]]
    assert np.array_equal(ring[0], ring[-1])
    x, y = ring[:, 0] / 2, ring[:, 1] / 2  # back to level pixels
    area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
    assert area == pytest.approx(25 - 4 * 0.125)  # half-pixel contour cuts the corners
    assert x.min() == pytest.approx(205) and x.max() == pytest.approx(210)
    assert len(ring) == 9  # collinear vertices are gone
    empty = measure_nuclei(
        np.zeros((4, 4), np.int32),
        np.zeros((4, 4, 3), np.uint8),
        ids=np.zeros(0, np.int64),
        centres=np.zeros((0, 2)),
        origin=(0, 0),
    )
    assert len(empty["id"]) == 0 and empty["poly_offsets"].tolist() == [0]


def test_shape_stain_and_probability_measurements_match_references():
    from skimage.color import hed_from_rgb
    from skimage.draw import ellipse
    from skimage.measure import regionprops

    lab = np.zeros((60, 80), np.int32)
    rr, cc = ellipse(20, 20, 6, 12, shape=lab.shape, rotation=0.4)
    lab[rr, cc] = 1
    lab[35:55, 40:44] = 2  # a bar
    lab[35:55, 44:60] = 0
    lab[35:39, 44:60] = 3  # with the next one, an L: not convex
    lab[35:55, 56:60] = 3
    lab[10, 70] = 4  # one pixel
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
    prob = rng.random((60, 80)).astype(np.float32)
    cen = np.array([[20.0, 20.0], [45, 41.5], [40, 55], [10, 70]])
    t = measure_nuclei(
        lab, rgb, ids=np.arange(1, 5), centres=cen, origin=(0, 0), mpp=0.25, probability=prob
    )
    for j, rp in enumerate(regionprops(lab)):
        m = lab == rp.label
        assert t["major_axis_px"][j] == pytest.approx(rp.axis_major_length, rel=1e-9, abs=1e-9)
        assert t["minor_axis_px"][j] == pytest.approx(rp.axis_minor_length, rel=1e-9, abs=1e-9)
        assert t["eccentricity"][j] == pytest.approx(rp.eccentricity, abs=1e-9)
        assert t["mean_probability"][j] == pytest.approx(prob[m].mean(), rel=1e-6)
        od = -np.log10((rgb[m].astype(np.float64) + 1) / 256)
        hed = od @ hed_from_rgb
        assert t["mean_od_h"][j] == pytest.approx(hed[:, 0].mean())
        assert t["mean_od_e"][j] == pytest.approx(hed[:, 1].mean())
    assert t["major_axis_um"][0] == pytest.approx(t["major_axis_px"][0] * 0.25)
    assert t["eccentricity"][3] == 0 and t["major_axis_px"][3] == 0
    # convex nuclei have solidity 1; the L is far from it
    assert t["solidity"][1] == pytest.approx(1.0) and t["solidity"][0] > 0.93
    assert 0.3 < t["solidity"][2] < 0.7
    no_prob = measure_nuclei(lab, rgb, ids=np.arange(1, 5), centres=cen, origin=(0, 0))
    assert np.isnan(no_prob["mean_probability"]).all() and np.isnan(no_prob["area_um2"]).all()
    with pytest.raises(InputError, match="probability"):
        measure_nuclei(
            lab, rgb, ids=np.arange(1, 5), centres=cen, origin=(0, 0), probability=prob[:5]
        )


def test_geojson_csv_and_overlay_writers(tmp_path):
    lab = np.zeros((20, 20), np.int32)
    lab[2:8, 2:8] = 1
    lab[12:15, 12:15] = 2
    t = measure_nuclei(
        lab,
        np.full((20, 20, 3), 100, np.uint8),
        ids=np.array([43, 255]),
        centres=np.array([[4, 4], [13, 13]]),
        origin=(0, 0),
    )
    n = write_geojson(tmp_path / "n.geojson", iter_features(t, tile=3))
    doc = json.loads((tmp_path / "n.geojson").read_text())
    assert n == 2 and doc["type"] == "FeatureCollection" and len(doc["features"]) == 2
    f0 = doc["features"][0]
    assert f0["properties"]["objectType"] == "detection"
    assert f0["properties"]["classification"]["name"] == "Nucleus"
    assert f0["properties"]["measurements"]["Area px"] == 36
    assert "Area um^2" not in f0["properties"]["measurements"]  # unknown without mpp
    ring = f0["geometry"]["coordinates"][0]
    assert f0["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) >= 4
    assert f0["id"] != doc["features"][1]["id"]
    # the fragments workers write assemble into the same collection
    concat_geojson(tmp_path / "f.geojson", ["", geojson_fragment(t, tile=3), ""])
    assert json.loads((tmp_path / "f.geojson").read_text()) == doc
    concat_geojson(tmp_path / "empty.geojson", [])
    assert json.loads((tmp_path / "empty.geojson").read_text())["features"] == []
    rows = write_csv(tmp_path / "n.csv", [(3, t)])
    lines = (tmp_path / "n.csv").read_text().splitlines()
    assert rows == 2 and lines[0] == ",".join(CSV_COLUMNS)
    assert lines[1].startswith("43,3,4.5,4.5,") and lines[1].split(",")[7] == ""
    ov = overlay(np.full((20, 20, 3), 200, np.uint8), lab, path=tmp_path / "o.png")
    assert ov.shape == (20, 20, 3) and (tmp_path / "o.png").exists()
    assert tuple(ov[2, 2]) == (0, 255, 0) and tuple(ov[0, 0]) == (200, 200, 200)


def test_writers_are_atomic(tmp_path):
    def broken():
        yield {"type": "Feature", "geometry": None, "properties": {}}
        raise RuntimeError("disk went away")

    (tmp_path / "old.geojson").write_text("previous")
    with pytest.raises(RuntimeError):
        write_geojson(tmp_path / "old.geojson", broken())
    with pytest.raises(RuntimeError):
        write_geojson(tmp_path / "new.geojson", broken())
    assert (tmp_path / "old.geojson").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.geojson"]
