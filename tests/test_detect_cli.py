"""``mcf detect`` and ``mcf demo``."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mcf_fast.cli import main
from mcf_fast.io.images import read_image, write_image
from mcf_fast.io.templates import TemplateSet
from tests.test_detector import CENTRES, synthetic


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("detect")
    img = synthetic(64, 70)
    (d / "images").mkdir()
    write_image(d / "images" / "a.png", img)
    write_image(d / "images" / "b.png", img.mean(2).astype(np.uint8))  # grayscale
    TemplateSet.from_points(img, [CENTRES[0], CENTRES[2]], size=17, image_name="a").save(
        d / "t.json"
    )
    return d


def test_detect_folder_writes_all_outputs(workdir, capsys):
    out = workdir / "out"
    assert (
        main(
            [
                "detect",
                str(workdir / "images"),
                "--templates",
                str(workdir / "t.json"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    for name in ("a", "b"):
        for suffix in (".csv", "_response.png", "_pseudo.png", "_overlay.png"):
            assert (out / f"{name}{suffix}").is_file()
    with open(out / "a.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["y", "x", "score"] and len(rows) > 1
    # pixel corners on integers: a detected centre pixel (r, c) is written (r + 0.5, c + 0.5)
    assert all(float(r[0]) % 1 == 0.5 and float(r[1]) % 1 == 0.5 for r in rows[1:])
    pseudo = read_image(out / "a_pseudo.png")[:, :, 0]
    assert set(np.unique(pseudo)) <= {0, 128, 255}
    assert not list(out.glob(".*part*"))  # no temporary files left
    assert "nuclei" in capsys.readouterr().err


def test_detect_bad_input(workdir, tmp_path, capsys):
    t = str(workdir / "t.json")
    assert (
        main(["detect", str(tmp_path / "nope.png"), "--templates", t, "--out", str(tmp_path / "o")])
        == 1
    )
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(["detect", str(tmp_path / "empty"), "--templates", t, "--out", str(tmp_path / "o")])
        == 1
    )
    assert "no images" in capsys.readouterr().err
    assert (
        main(
            [
                "detect",
                str(workdir / "images" / "a.png"),
                "--templates",
                t,
                "--out",
                str(tmp_path / "o"),
                "--color-names",
                str(tmp_path / "w2c.npy"),
            ]
        )
        == 1
    )
    assert "w2c.npy" in capsys.readouterr().err
    assert not (tmp_path / "o" / "a.csv").exists()
    assert (
        main(
            [
                "detect",
                str(workdir / "images"),
                "--templates",
                str(tmp_path / "missing.json"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def test_help():
    assert main(["detect", "--help"]) == 0
    assert main(["demo", "--help"]) == 0


def test_demo_detection(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--detect-only", "--quiet"]) == 0
    for suffix in (".csv", "_response.png", "_pseudo.png", "_overlay.png"):
        assert (tmp_path / f"immunohistochemistry{suffix}").is_file()
    assert TemplateSet.load(tmp_path / "templates.json").templates[0].size == 28
    pts = np.loadtxt(tmp_path / "immunohistochemistry.csv", delimiter=",", skiprows=1)
    assert len(pts) > 50
    assert pts[:, 2].min() >= 0.5  # the demo's stricter threshold is applied
