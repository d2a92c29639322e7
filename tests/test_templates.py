"""Template sets: crops, the JSON format, points files and the selection protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcf_fast.detection.selection import select_templates
from mcf_fast.errors import DataError, FormatError, InputError
from mcf_fast.io.images import write_image
from mcf_fast.io.templates import (
    FORMAT_VERSION,
    Template,
    TemplateSet,
    contact_sheet,
    crop_template,
    read_points,
    read_points_csv,
)


def ramp(h=9, w=11):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(h)[:, None]
    img[..., 1] = np.arange(w)[None, :]
    img[..., 2] = 7
    return img


def test_crop_inside():
    img = ramp()
    c = crop_template(img, 4, 5, 3)
    np.testing.assert_array_equal(c, img[3:6, 4:7])
    c = crop_template(img, 4, 5, 4)  # even: centre at index size // 2
    np.testing.assert_array_equal(c, img[2:6, 3:7])
    assert c[2, 2, 0] == 4 and c[2, 2, 1] == 5


def test_crop_near_border_reflects():
    img = ramp()
    c = crop_template(img, 0, 0, 5)  # rows -2..2, cols -2..2 -> mirror about the edge pixel
    assert list(c[:, 2, 0]) == [2, 1, 0, 1, 2]
    assert list(c[2, :, 1]) == [2, 1, 0, 1, 2]
    c = crop_template(img, 8, 10, 4)  # rows 6..9, cols 8..11
    assert list(c[:, 0, 0]) == [6, 7, 8, 7]
    assert list(c[0, :, 1]) == [8, 9, 10, 9]
    tiny = crop_template(np.full((1, 1, 3), 9, np.uint8), 0, 0, 6)  # repeated reflection
    assert tiny.shape == (6, 6, 3) and np.all(tiny == 9)


def test_crop_errors():
    with pytest.raises(InputError, match="outside"):
        crop_template(ramp(), 9, 0, 3)
    with pytest.raises(InputError, match="size"):
        crop_template(ramp(), 0, 0, 0)


def test_template_validation_and_readonly():
    with pytest.raises(InputError, match="crop"):
        Template(image="a", y=1, x=1, size=4, crop=np.zeros((3, 3, 3), np.uint8))
    t = Template(image="a", y=1, x=1, size=3, crop=np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ValueError):
        t.crop[0, 0, 0] = 1
    with pytest.raises(InputError, match="at least one"):
        TemplateSet([])


def test_from_points_save_load_roundtrip(tmp_path):
    img = ramp(30, 40)
    ts = TemplateSet.from_points(img, [[10.4, 12.5], [0, 39]], size=[5, 6], image_name="im")
    assert [(t.y, t.x, t.size) for t in ts] == [(10, 13, 5), (0, 39, 6)]
    np.testing.assert_array_equal(ts[0].crop, img[8:13, 11:16])
    p1, p2 = tmp_path / "a.json", tmp_path / "b.json"
    ts.save(p1)
    back = TemplateSet.load(p1)
    assert len(back) == 2 and back.meta == ts.meta
    for a, b in zip(ts, back, strict=True):
        assert (a.image, a.y, a.x, a.size) == (b.image, b.y, b.x, b.size)
        np.testing.assert_array_equal(a.crop, b.crop)
    back.save(p2)
    assert p1.read_bytes() == p2.read_bytes()
    doc = json.loads(p1.read_text())
    assert doc["version"] == FORMAT_VERSION and doc["format"] == "mcf_fast.template_set"
    more = ts.add([ts[0]])
    assert len(more) == 3 and len(ts) == 2
    assert len(ts.crops()) == 2 and ts.crops()[1].shape == (6, 6, 3)


def test_from_points_errors():
    with pytest.raises(InputError, match="outside"):
        TemplateSet.from_points(ramp(), [[50, 1]], size=5, image_name="im")
    with pytest.raises(InputError, match="no points"):
        TemplateSet.from_points(ramp(), np.zeros((0, 2)), size=5, image_name="im")
    with pytest.raises(InputError, match="2 sizes for 1 points"):
        TemplateSet.from_points(ramp(), [[1, 1]], size=[3, 4], image_name="im")


def test_unknown_version_and_bad_files(tmp_path):
    ts = TemplateSet.from_points(ramp(), [[4, 4]], size=3, image_name="im")
    doc = ts.to_dict()
    doc["version"] = 99
    bad = tmp_path / "future.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"future\.json: template-set format version 99"):
        TemplateSet.load(bad)
    notjson = tmp_path / "x.json"
    notjson.write_text("{nope")
    with pytest.raises(FormatError, match=r"x\.json: not a JSON"):
        TemplateSet.load(notjson)
    other = tmp_path / "other.json"
    other.write_text('{"type": "FeatureCollection"}')
    with pytest.raises(FormatError, match="not a template-set file"):
        TemplateSet.load(other)
    doc["version"] = FORMAT_VERSION
    doc["templates"][0]["crop_png"] = "AAAA"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"broken\.json: templates\[0\]: crop_png"):
        TemplateSet.load(broken)
    doc = ts.to_dict()
    doc["templates"][0]["size"] = 4  # crop is 3x3
    (tmp_path / "size.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"templates\[0\].*\(4, 4, 3\)"):
        TemplateSet.load(tmp_path / "size.json")
    with pytest.raises(InputError, match="no such"):
        TemplateSet.load(tmp_path / "missing.json")


def test_read_points_csv(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("id,X,Y\n1,3.5,2\n2,10,20\n")
    # pixel corners on integers, as every CSV mcf writes: 0.5 off to pixel-index
    np.testing.assert_array_equal(read_points_csv(p), [[1.5, 3.0], [19.5, 9.5]])
    p.write_text("y,x\n")
    assert read_points_csv(p).shape == (0, 2)
    p.write_text("1,2\n3,4\n")
    with pytest.raises(FormatError, match=r"p\.csv: expected a header row"):
        read_points_csv(p)
    p.write_text("y,x\n1,abc\n")
    with pytest.raises(FormatError, match="line 2"):
        read_points_csv(p)
    p.write_text("")
    with pytest.raises(FormatError, match="empty"):
        read_points(p)
    with pytest.raises(FormatError, match="unknown points format"):
        read_points(tmp_path / "p.xlsx")


def make_blob_dataset(root, n_images=3, seed=0):
    """Images with dark round nuclei of two sizes and two colours on a light background."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:96, :96]
    for i in range(n_images):
        img = np.full((96, 96, 3), 220, np.uint8)
        lab = np.zeros((96, 96), np.uint16)
        k = 0
        for cy in range(12, 96, 24):
            for cx in range(12, 96, 24):
                r = rng.choice([3.0, 6.0])
                colour = rng.choice([60, 140])
                m = (yy - cy - rng.integers(-2, 3)) ** 2 + (xx - cx) ** 2 <= r * r
                k += 1
                lab[m] = k
                img[m] = (colour, 40, 160)
        lab[0:3, 40:44] = 99  # touches the border: never chosen
        write_image(root / "images" / f"img{i}.png", img)
        write_image(root / "masks" / f"img{i}.png", lab)
    return root


def test_select_templates_deterministic(tmp_path):
    root = make_blob_dataset(tmp_path / "d")
    a = select_templates(root, n=4, seed=0)
    b = select_templates(root, n=4, seed=0)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert len(a) == 4 and a.meta["protocol"] == "kmeans-lab-logarea-v2"
    assert a.meta["n_images"] == 3
    sizes = sorted(t.size for t in a)
    assert sizes[0] == 16 and sizes[-1] >= 20  # small (min side) and large nuclei both chosen
    from mcf_fast.io.datasets import FolderDataset

    ds = FolderDataset(root)
    for t in a:
        lab = ds.load_mask(t.image)
        assert lab[t.y, t.x] > 0 and lab[t.y, t.x] != 99  # centred on a nucleus
        np.testing.assert_array_equal(
            t.crop, crop_template(ds.load_image(t.image), t.y, t.x, t.size)
        )
    clusters = [s["cluster_size"] for s in a.meta["selection"]]
    assert clusters == sorted(clusters, reverse=True)
    c = select_templates(root, n=4, seed=1)
    assert c.meta["seed"] == 1


def test_select_templates_seeds_draw_different_typical_nuclei(tmp_path):
    # two unmistakable kinds (dark small, pale large): every seed finds the same two
    # clusters, yet different seeds must pick different nuclei of those kinds
    root = tmp_path / "d"
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:120, :120]
    for i in range(2):
        img = np.full((120, 120, 3), 235, np.uint8)
        lab = np.zeros((120, 120), np.uint16)
        k = 0
        for cy in range(15, 110, 30):
            for cx in range(15, 110, 30):
                k += 1
                dark = (k + i) % 2 == 0
                r = 4.0 if dark else 7.0
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + rng.uniform(-0.5, 0.5)) ** 2
                lab[m] = k
                img[m] = (60, 30, 120) if dark else (150, 110, 190)
        write_image(root / "images" / f"img{i}.png", img)
        write_image(root / "masks" / f"img{i}.png", lab)
    picks = set()
    for seed in range(4):
        ts = select_templates(root, n=2, seed=seed)
        kinds = sorted(int(t.crop[t.size // 2, t.size // 2, 0]) for t in ts)
        assert kinds == [60, 150]  # one of each kind, whatever the seed
        picks.add(tuple(sorted((t.image, t.y, t.x) for t in ts)))
    assert len(picks) >= 3


def test_select_templates_errors(tmp_path):
    root = make_blob_dataset(tmp_path / "d", n_images=1)
    with pytest.raises(DataError, match="cannot choose 500"):
        select_templates(root, n=500)
    with pytest.raises(InputError, match="n:"):
        select_templates(root, n=0)
    nomask = tmp_path / "e"
    (nomask / "images").mkdir(parents=True)
    write_image(nomask / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="no image has a mask"):
        select_templates(nomask)


def test_contact_sheet():
    ts = TemplateSet.from_points(
        ramp(30, 30), [[5, 5], [20, 20], [10, 3]], size=[8, 12, 5], image_name="im"
    )
    sheet = contact_sheet(ts, cell=32, columns=2)
    assert sheet.ndim == 3 and sheet.dtype == np.uint8 and sheet.shape[0] > 64


@pytest.mark.data
def test_select_on_monuseg_train(monuseg, tmp_path):
    ts = select_templates(monuseg / "train", n=10, seed=0)
    assert len(ts) == 10 and ts.meta["n_images"] == 30
    assert len({(t.image, t.y, t.x) for t in ts}) == 10
    assert all(16 <= t.size <= 200 for t in ts)
    ts.save(tmp_path / "t.json")
    assert len(TemplateSet.load(tmp_path / "t.json")) == 10


# ---------------------------------------------------------------------- QuPath GeoJSON
def test_geojson_points_polygons_and_labels(tmp_path):
    from mcf_fast.io.geojson import (
        polygons_to_labels,
        read_geojson_points,
        read_geojson_polygons,
    )

    square = [[1, 1], [4, 1], [4, 4], [1, 4], [1, 1]]  # (x, y), corner origin: pixels 1..3
    doc = [  # QuPath "export as array": a bare list of features
        {
            "type": "Feature",
            "geometry": {"type": "MultiPoint", "coordinates": [[0.5, 0.5], [3.5, 2.5]]},
        },
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}},
        {
            "type": "Feature",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [[[[6, 0], [8, 0], [8, 2], [6, 2], [6, 0]]]],
            },
        },
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}},
    ]
    p = tmp_path / "a.geojson"
    p.write_text(json.dumps(doc))
    np.testing.assert_allclose(read_geojson_points(p), [[0, 0], [2, 3], [2, 2], [0.5, 6.5]])
    polys = read_geojson_polygons(p)
    assert len(polys) == 2 and polys[0].shape == (4, 2)
    lab = polygons_to_labels(polys, (5, 9))
    assert (lab == 1).sum() == 9 and np.all(lab[1:4, 1:4] == 1)  # centres inside the square
    assert (lab == 2).sum() == 4 and np.all(lab[0:2, 6:8] == 2)


def test_geojson_errors(tmp_path):
    from mcf_fast.io.geojson import read_geojson_points, read_geojson_polygons

    p = tmp_path / "e.geojson"
    p.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(FormatError, match=r"e\.geojson: no Point"):
        read_geojson_points(p)
    p.write_text('{"type": "Point", "coordinates": [1, 2]}')
    with pytest.raises(FormatError, match="no Polygon"):
        read_geojson_polygons(p)
    np.testing.assert_allclose(read_geojson_points(p), [[1.5, 0.5]])
    p.write_text("not json")
    with pytest.raises(FormatError, match="not a JSON"):
        read_geojson_points(p)
    p.write_text('{"type": "Point", "coordinates": "x"}')
    with pytest.raises(FormatError, match="malformed"):
        read_geojson_points(p)


# ------------------------------------------------------------- QuPath classes and regions
def _feature(geom, cls=None, otype="annotation", **props):
    p = {"objectType": otype, **props}
    if cls is not None:
        p["classification"] = {"name": cls, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geom, "properties": p}


def _pt(x, y):
    return {"type": "Point", "coordinates": [x, y]}


def _square(x0, y0, side):
    ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


@pytest.fixture
def qupath_export(tmp_path):
    """A mixed export: nuclei points, a stroma point, a tissue region, a cell object."""
    rng = np.random.default_rng(0)
    image = tmp_path / "img.png"
    write_image(image, rng.integers(0, 256, (80, 80, 3)).astype(np.uint8))
    feats = [
        _feature(_pt(10.5, 20.5), "Nucleus"),
        _feature(_pt(30.5, 40.5), "Nucleus"),
        _feature(_pt(50.5, 60.5), "Nucleus"),
        _feature(_pt(70.5, 10.5), "Stroma"),
        _feature(_square(2, 2, 70)),  # the tissue region: unclassified, 4900 px^2
        # a cell: its nucleus geometry (centroid 60, 20 in corners) is the template
        _feature(_square(50, 10, 20), "Nucleus", "cell", nucleusGeometry=_square(56, 16, 8)),
    ]
    path = tmp_path / "export.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return image, path


def _from_points(image, points, out, *extra):
    from mcf_fast.cli import main

    args = ["templates", "from-points", "--image", str(image), "--points", str(points)]
    return main([*args, "--size", "16", "--out", str(out), *extra])


def test_mixed_export_needs_a_class_and_lists_the_classes(qupath_export, tmp_path, capsys):
    image, path = qupath_export
    assert _from_points(image, path, tmp_path / "t.json") == 1
    err = capsys.readouterr().err
    assert "'Nucleus' (4)" in err and "'Stroma' (1)" in err and "'unclassified' (1)" in err
    assert "--class" in err and "Traceback" not in err
    assert not (tmp_path / "t.json").exists()
    assert _from_points(image, path, tmp_path / "t.json", "--class", "Tumour") == 1
    assert "no object has the class 'Tumour'" in capsys.readouterr().err


def test_class_selects_points_and_cell_nuclei(qupath_export, tmp_path):
    image, path = qupath_export
    assert _from_points(image, path, tmp_path / "t.json", "--class", "Nucleus") == 0
    ts = TemplateSet.load(tmp_path / "t.json")
    assert [(t.y, t.x) for t in ts] == [(20, 10), (40, 30), (60, 50), (20, 60)]
    assert ts.meta["class"] == "Nucleus"
    assert _from_points(image, path, tmp_path / "s.json", "--class", "Stroma") == 0
    assert [(t.y, t.x) for t in TemplateSet.load(tmp_path / "s.json")] == [(10, 70)]


def test_region_polygons_are_refused_unless_asked_for(tmp_path, capsys):
    from mcf_fast.io.geojson import template_points

    image = tmp_path / "img.png"
    write_image(image, np.zeros((80, 80, 3), np.uint8))
    feats = [_feature(_pt(10.5, 20.5)), _feature(_square(30, 30, 6)), _feature(_square(2, 2, 70))]
    path = tmp_path / "p.geojson"
    path.write_text(json.dumps(feats))
    assert _from_points(image, path, tmp_path / "t.json") == 1
    err = capsys.readouterr().err
    assert "feature 2" in err and "4900 px^2" in err and "--regions" in err
    assert _from_points(image, path, tmp_path / "t.json", "--regions", "skip") == 0
    # the point and the nucleus-sized polygon (36 px^2 <= 16 * 16) stay
    assert [(t.y, t.x) for t in TemplateSet.load(tmp_path / "t.json")] == [(20, 10), (33, 33)]
    pts = template_points(path, max_area=256, regions="centroid")
    np.testing.assert_allclose(pts[-1], [36.5, 36.5])
    with pytest.raises(InputError, match="regions"):
        template_points(path, regions="ignore")
    assert _from_points(image, tmp_path / "p.csv", tmp_path / "t.json", "--class", "X") != 0
