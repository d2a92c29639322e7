"""``mcf fit`` and ``mcf predict`` end to end on tiny images (stand-in detector)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from seg_fakes import (  # noqa: F401
    BLUE,
    PURPLE,
    ColourDetector,
    disk_image,
    grid_centres,
    make_templates,
    one_torch_thread,
)

import mcf_fast.framework.fit as mcf_mod
from mcf_fast import presets
from mcf_fast.cli import main as mcf_main
from mcf_fast.config import MCFConfig, SegmentationConfig
from mcf_fast.framework.model import MCFModel
from mcf_fast.io.export import CSV_COLUMNS
from mcf_fast.io.images import read_image, read_labels, write_image

TINY = MCFConfig(
    segmentation=SegmentationConfig(
        width=8,
        depth=2,
        crop_size=32,
        batch_size=4,
        steps=30,
        self_steps=10,
        lr=1e-2,
        residual_min_area=40,
        max_rounds=3,
    )
)


def main(argv):
    """The CLI with the colour stand-in as its detector."""
    return mcf_main(argv, obj={"detector_cls": ColourDetector})


def _load(path):
    return MCFModel.load(path, detector_cls=ColourDetector)


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "quick", TINY)


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "train" / "images"
    folder.mkdir(parents=True)
    centres = grid_centres(96, 96, 24, 12)
    imgs = []
    for i in range(2):
        colours = [BLUE if (c == (36, 36) and i == 0) else PURPLE for c in centres]
        img, _ = disk_image(96, 96, centres, 7, colours, seed=10 + i)
        write_image(folder / f"tile{i}.png", img)
        imgs.append(img)
    tpath = make_templates(imgs[1], [(12, 12), (60, 36)], name="tile1").save(tmp_path / "t.json")
    return tmp_path, tpath


def test_help():
    assert main(["fit", "--help"]) == 0
    assert main(["predict", "--help"]) == 0


def test_fit_then_predict_writes_outputs(data, capsys):
    root, tpath = data
    model_path = root / "m.mcf"
    rc = main(
        [
            "fit",
            str(root / "train"),
            "--templates",
            str(tpath),
            "--out",
            str(model_path),
            "--seed",
            "1",
            "--mpp",
            "0.5",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    from mcf_fast.framework.model import bundle_mpp

    assert bundle_mpp(model_path) == 0.5  # recorded in model.json and templates.json
    model = _load(model_path)
    assert model.templates.meta["mpp"] == 0.5
    assert model.config.segmentation.seed == 1
    assert len(model.templates) == 3  # the blue nucleus of tile0 was added
    assert model.history[0]["added"][0]["image"] == "tile0"
    out = root / "pred"
    rc = main(
        [
            "predict",
            str(root / "train" / "images" / "tile0.png"),
            "--model",
            str(model_path),
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "predict" in capsys.readouterr().err  # the progress bar
    labels = read_labels(out / "tile0.png")
    assert labels.shape == (96, 96) and labels.max() == 16
    with open(out / "tile0.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16
    assert tuple(rows[0]) == CSV_COLUMNS  # the slide's nuclei.csv schema
    for r in rows:
        m = labels == int(r["id"])
        assert float(r["area_px"]) == m.sum()
        # pixel corners on integers: the centre of pixel (r, c) is (r + 0.5, c + 0.5)
        assert float(r["y"]) == pytest.approx(np.nonzero(m)[0].mean() + 0.5, abs=1e-4)
        assert float(r["x"]) == pytest.approx(np.nonzero(m)[1].mean() + 0.5, abs=1e-4)
        assert 0.5 < float(r["mean_probability"]) <= 1.0
        assert 0 <= float(r["eccentricity"]) < 0.5  # disks
        assert 0.9 < float(r["solidity"]) <= 1.0
        assert float(r["mean_od_h"]) > 0 and r["area_um2"] == ""  # no --mpp
    doc = json.loads((out / "tile0.geojson").read_text())
    assert len(doc["features"]) == 16
    f = doc["features"][0]
    assert f["properties"]["objectType"] == "detection"
    m = labels == f["properties"]["mcf_id"]
    ring = np.asarray(f["geometry"]["coordinates"][0])
    # the outline runs between pixel centres: its box is the pixels' box in corner terms
    ys, xs = np.nonzero(m)
    assert ring[:, 0].min() == xs.min() and ring[:, 0].max() == xs.max() + 1
    assert ring[:, 1].min() == ys.min() and ring[:, 1].max() == ys.max() + 1
    assert f["properties"]["measurements"]["Area px"] == m.sum()
    overlay = read_image(out / "tile0_overlay.png")
    assert overlay.shape == (96, 96, 3)
    assert np.any(np.all(overlay == (0, 255, 0), axis=2))
    # no temporary files; the hidden .mcf folder holds the lock and the finished-set records
    assert not any(p.name.startswith(".") for p in out.iterdir() if p.name != ".mcf")
    # the image at half the model's pixel size: resampled to its scale, mapped back
    big = root / "big"
    big.mkdir()
    img = read_image(root / "train" / "images" / "tile0.png")
    write_image(big / "tile0.png", np.repeat(np.repeat(img, 2, axis=0), 2, axis=1))
    out2 = root / "pred2"
    args = ["predict", str(big / "tile0.png"), "--model", str(model_path), "--out", str(out2)]
    assert main([*args, "--mpp", "0.25", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "resampling by 0.5" in err
    lab2 = read_labels(out2 / "tile0.png")
    assert lab2.shape == (192, 192) and lab2.max() == 16  # the 16 nuclei of the 96-px tile
    assert main([*args, "--quiet"]) == 0  # no --mpp: a warning, no resampling
    assert "scale is unknown" in capsys.readouterr().err
    # float32 and bfloat16 find the same 16 disks; an unknown precision is refused
    tile0 = str(root / "train" / "images" / "tile0.png")
    for prec in ("float32", "bfloat16"):
        out3 = root / f"pred_{prec}"
        args = ["predict", tile0, "--model", str(model_path), "--out", str(out3), "--quiet"]
        assert main([*args, "--precision", prec]) == 0
        assert read_labels(out3 / "tile0.png").max() == 16
    assert main([*args, "--precision", "half"]) == 2
    assert "--precision" in capsys.readouterr().err


def test_resume_after_interruption_ends_like_uninterrupted(data, monkeypatch, capsys):
    root, tpath = data
    args = [str(root / "train"), "--templates", str(tpath), "--quiet"]
    assert main(["fit", *args, "--out", str(root / "full.mcf")]) == 0
    real_save = mcf_mod._save_checkpoint
    calls = []

    def save_then_die(*a, **k):
        real_save(*a, **k)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(mcf_mod, "_save_checkpoint", save_then_die)
    assert main(["fit", *args, "--out", str(root / "resumed.mcf")]) == 130
    assert not (root / "resumed.mcf").exists() and calls == [1]
    monkeypatch.setattr(mcf_mod, "_save_checkpoint", real_save)
    assert main(["fit", *args, "--out", str(root / "resumed.mcf"), "--resume"]) == 0
    full, resumed = _load(root / "full.mcf"), _load(root / "resumed.mcf")
    assert len(full.history) == len(resumed.history) == 2
    assert [h["added"] for h in full.history] == [h["added"] for h in resumed.history]
    img = read_image(root / "train" / "images" / "tile0.png")
    assert np.array_equal(full.predict(img).probability, resumed.predict(img).probability)


def test_clear_errors(data, tmp_path, capsys):
    root, tpath = data
    junk = tmp_path / "junk.mcf"
    junk.write_bytes(b"nope")
    rc = main(["predict", str(root / "train"), "--model", str(junk), "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "junk.mcf: not a model bundle" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["fit", str(empty), "--templates", str(tpath), "--out", str(tmp_path / "x.mcf")])
    assert rc == 1
    assert "no images" in capsys.readouterr().err
    rc = main(
        [
            "fit",
            str(root / "train"),
            "--templates",
            str(tpath),
            "--out",
            str(tmp_path / "x.mcf"),
            "--device",
            "tpu",
        ]
    )
    assert rc == 1
    assert "--device tpu" in capsys.readouterr().err
