"""`mcf score` and `mcf templates` end to end on small synthetic folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcf_fast.cli import main
from mcf_fast.io.images import write_image
from mcf_fast.io.templates import TemplateSet, read_points
from mcf_fast.metrics import METRIC_KEYS


def make_data(tmp_path, n=3):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(1)
    labs = {}
    for i in range(n):
        lab = np.zeros((40, 48), np.uint16)
        for k in range(6):
            r, c = rng.integers(4, 32), rng.integers(4, 40)
            lab[r : r + 5, c : c + 5] = k + 1
        img = np.where(lab[..., None] > 0, 60, 220).astype(np.uint8).repeat(3, axis=2)
        write_image(data / "images" / f"s{i}.png", img)
        write_image(data / "masks" / f"s{i}.png", lab)
        labs[f"s{i}"] = lab
    return data, labs


def test_score_self_is_perfect(tmp_path, capsys):
    data, _ = make_data(tmp_path)
    out = tmp_path / "res.json"
    assert (
        main(
            [
                "score",
                "--data",
                str(data),
                "--pred",
                str(data / "masks"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "| s0 |" in text and "aggregate (3)" in text
    res = json.loads(out.read_text())
    assert all(res["aggregate"][k] == 1.0 for k in METRIC_KEYS)
    assert len(res["per_image"]) == 3


def test_score_shifted_binary_and_missing(tmp_path, capsys):
    data, labs = make_data(tmp_path)
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in ("s0", "s1"):
        shifted = np.zeros_like(labs[name])
        shifted[3:, :] = labs[name][:-3, :]
        write_image(pred / f"{name}.tif", ((shifted > 0) * 255).astype(np.uint8))  # binary
    out = tmp_path / "res.json"
    assert (
        main(
            [
                "score",
                "--data",
                str(data),
                "--pred",
                str(pred),
                "--out",
                str(out),
                "--quiet",
                "--radii",
                "6",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert (
        "s2.png: prediction missing; segmentation scored as empty, detection scored as "
        "empty too" in captured.err
    )
    assert "scored 3 image(s): 2 with a label image" in captured.err
    res = json.loads(out.read_text())
    rows = {r["name"]: r for r in res["per_image"]}
    assert rows["s2"]["n_pred"] == 0 and rows["s2"]["R@6"] == 0.0
    assert res["missing"] == ["s2"] and res["radii"] == [6]
    assert res["sources"]["s2"] == {"labels": None, "centres": None}
    assert res["sources"]["s0"] == {"labels": str(pred / "s0.tif"), "centres": "labels"}
    assert "F1@12" not in res["aggregate"]


def _centres_csv(path, lab):
    from scipy import ndimage as ndi

    cents = ndi.center_of_mass(lab > 0, lab, range(1, int(lab.max()) + 1))
    path.write_text("y,x\n" + "".join(f"{y:.1f},{x:.1f}\n" for y, x in cents))


def test_score_csv_only_says_what_is_scored(tmp_path, capsys):
    data, labs = make_data(tmp_path, n=2)
    pred = tmp_path / "pred"
    pred.mkdir()
    for name, lab in labs.items():
        _centres_csv(pred / f"{name}.csv", lab)
    out = tmp_path / "res.json"
    args = ["score", "--data", str(data), "--pred", str(pred), "--out", str(out), "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "detection scored from s0.csv" in err and "scored as empty too" not in err
    assert "centres from 2 CSV file(s)" in err and "0 with a label image" in err
    res = json.loads(out.read_text())
    assert res["aggregate"]["F1@6"] == 1.0 and res["aggregate"]["Dice"] == 0.0
    assert res["sources"]["s1"] == {"labels": None, "centres": str(pred / "s1.csv")}


def test_score_refuses_two_label_images_for_one_name(tmp_path, capsys):
    data, labs = make_data(tmp_path, n=1)
    pred = tmp_path / "pred"
    pred.mkdir()
    write_image(pred / "s0.png", labs["s0"])
    write_image(pred / "s0.tif", labs["s0"])
    assert main(["score", "--data", str(data), "--pred", str(pred), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 label images for 's0' (s0.png, s0.tif)" in err


def test_score_bad_input_exit_code(tmp_path, capsys):
    data, _ = make_data(tmp_path, n=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["score", "--data", str(data), "--pred", str(empty), "--quiet"]) == 1
    assert "no prediction for any" in capsys.readouterr().err
    assert main(["score", "--data", str(data), "--pred", str(data), "--radii", "x"]) == 2


def test_templates_select_show_and_from_points(tmp_path, capsys):
    data, labs = make_data(tmp_path)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        assert (
            main(
                [
                    "templates",
                    "select",
                    "--data",
                    str(data),
                    "--n",
                    "3",
                    "--seed",
                    "0",
                    "--out",
                    str(path),
                    "--quiet",
                ]
            )
            == 0
        )
    assert a.read_bytes() == b.read_bytes()
    sheet = tmp_path / "sheet.png"
    assert main(["templates", "show", str(a), "--out", str(sheet)]) == 0
    assert "3 templates" in capsys.readouterr().out and sheet.stat().st_size > 0

    pts = tmp_path / "pts.csv"
    pts.write_text("y,x\n10,12\n0,0\n")
    t = tmp_path / "t.json"
    assert (
        main(
            [
                "templates",
                "from-points",
                "--image",
                str(data / "images" / "s0.png"),
                "--points",
                str(pts),
                "--size",
                "9",
                "--out",
                str(t),
            ]
        )
        == 0
    )
    ts = TemplateSet.load(t)
    assert len(ts) == 2 and ts[0].image == "s0" and ts[1].size == 9


def test_templates_from_geojson(tmp_path):
    data, _ = make_data(tmp_path, n=1)
    gj = tmp_path / "pts.geojson"
    gj.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [12.5, 10.5]},
                        "properties": {"objectType": "annotation"},
                    },
                    {
                        "type": "Feature",
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[20, 20], [24, 20], [24, 26], [20, 26], [20, 20]]],
                        },
                        "properties": {},
                    },
                ],
            }
        )
    )
    # QuPath's corner-origin coordinates -> pixel index: subtract 0.5, swap to (y, x)
    np.testing.assert_allclose(read_points(gj), [[10.0, 12.0], [22.5, 21.5]])
    t = tmp_path / "t.json"
    assert (
        main(
            [
                "templates",
                "from-points",
                "--image",
                str(data / "images" / "s0.png"),
                "--points",
                str(gj),
                "--size",
                "8",
                "--out",
                str(t),
                "--name",
                "slide",
            ]
        )
        == 0
    )
    ts = TemplateSet.load(t)
    assert [(x.y, x.x, x.image) for x in ts] == [(10, 12, "slide"), (23, 22, "slide")]


def test_templates_bad_input(tmp_path, capsys):
    data, _ = make_data(tmp_path, n=1)
    gj = tmp_path / "none.geojson"
    gj.write_text('{"type": "FeatureCollection", "features": []}')
    assert (
        main(
            [
                "templates",
                "from-points",
                "--image",
                str(data / "images" / "s0.png"),
                "--points",
                str(gj),
                "--size",
                "8",
                "--out",
                str(tmp_path / "t.json"),
            ]
        )
        == 1
    )
    assert "none.geojson: no Point" in capsys.readouterr().err
    bad = tmp_path / "v9.json"
    bad.write_text('{"format": "mcf_fast.template_set", "version": 9, "templates": []}')
    assert main(["templates", "show", str(bad)]) == 1
    assert "v9.json: template-set format version 9" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cmd",
    [
        ["score"],
        ["templates"],
        ["templates", "select"],
        ["templates", "from-points"],
        ["templates", "show"],
    ],
)
def test_help(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out
