"""Resuming a slide run checks the slide and the model; one run per output folder."""

from __future__ import annotations

import json
import os

import pytest
from test_tiling import synthetic_tissue

from mcf_fast.cli import main
from mcf_fast.errors import ConfigError, InputError
from mcf_fast.io.images import write_image
from mcf_fast.io.outputs import lock_folder
from mcf_fast.io.templates import TemplateSet
from mcf_fast.slide.predictors import BlobPredictor
from mcf_fast.slide.run import run_slide

TILE = 128


def _slide(path, seed):
    write_image(path, synthetic_tissue((256, 256), n=60, seed=seed))
    return path


def _run(slide, out, predictor=None):
    return run_slide(slide, predictor or BlobPredictor(), out, tile=TILE, workers=0, progress=False)


def test_another_slide_of_the_same_name_and_shape_is_refused(tmp_path):
    slide, out = _slide(tmp_path / "s.png", 1), tmp_path / "out"
    first = _run(slide, out)
    assert first.complete and first.n_processed == 4
    again = _run(slide, out)
    assert again.n_resumed == 4 and again.n_processed == 0
    stat = slide.stat()
    _slide(slide, 2)  # another image, same name and shape
    os.utime(slide, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    with pytest.raises(ConfigError, match="holds a run of another slide"):
        _run(slide, out)
    rows = (out / "nuclei.csv").read_text().splitlines()
    assert len(rows) - 1 == first.n_nuclei  # the first run's outputs are untouched


def test_cli_reports_another_slide_without_resuming(tmp_path, capsys):
    slide, out = _slide(tmp_path / "s.png", 1), tmp_path / "out"
    args = ["slide", str(slide), "--model", "blob", "--out", str(out), "--tile", str(TILE)]
    args += ["--workers", "0", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    _slide(slide, 3)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "another slide" in err and "resumed" not in err


def test_another_model_file_is_refused(tmp_path):
    img = synthetic_tissue((256, 256), n=60, seed=1)
    slide, out = _slide(tmp_path / "s.png", 1), tmp_path / "out"
    model = tmp_path / "t.json"
    TemplateSet.from_points(img, [(60, 60)], size=17, image_name="s").save(model)
    run_slide(slide, str(model), out, tile=TILE, workers=0, progress=False, n_calibration=0)
    TemplateSet.from_points(img, [(150, 90)], size=21, image_name="s").save(model)
    with pytest.raises(ConfigError, match="another model file"):
        run_slide(slide, str(model), out, tile=TILE, workers=0, progress=False, n_calibration=0)


def test_run_without_identity_or_damaged_record_is_refused(tmp_path):
    slide, out = _slide(tmp_path / "s.png", 1), tmp_path / "out"
    _run(slide, out)
    run = json.loads((out / "run.json").read_text())
    del run["slide_identity"]
    (out / "run.json").write_text(json.dumps(run))
    with pytest.raises(ConfigError, match="earlier mcf_fast"):
        _run(slide, out)
    (out / "run.json").write_text("{damaged")
    with pytest.raises(ConfigError, match="run.json: not a readable run record"):
        _run(slide, out)


def test_a_folder_in_use_is_refused(tmp_path):
    slide, out = _slide(tmp_path / "s.png", 1), tmp_path / "out"
    out.mkdir()
    with lock_folder(out), pytest.raises(InputError, match="in use by another mcf run"):
        _run(slide, out)
    assert not (out / "run.json").exists()
    assert _run(slide, out).complete


def test_out_below_a_file_is_refused_before_reading_tiles(tmp_path):
    slide = _slide(tmp_path / "s.png", 1)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        _run(slide, tmp_path / "f" / "out")
