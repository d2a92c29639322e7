"""The warm-up compiles (or loads) the kernels on a synthetic tile; ``mcf warmup`` runs it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mcf_fast.cli import cli
from mcf_fast.detection.warmup import synthetic_tile, warm_up
from mcf_fast.errors import InputError
from mcf_fast.io.templates import TemplateSet


def test_synthetic_tile():
    img, centres = synthetic_tile()
    assert img.shape == (96, 96, 3) and img.dtype.name == "uint8"
    assert len(centres) >= 4
    y, x = centres[0]
    assert img[y, x].astype(int).sum() < img[2, 2].astype(int).sum()


def test_warm_up_runs_every_stage():
    seconds = warm_up()
    assert set(seconds) == {"detector", "instances", "measurements"}
    assert all(v >= 0 for v in seconds.values())


def test_warmup_command():
    result = CliRunner().invoke(cli, ["warmup"])
    assert result.exit_code == 0, result.output
    assert "kernels ready" in result.output


def test_warmup_plans_a_template_set(tmp_path, monkeypatch):
    wisdom = tmp_path / "wisdom.bin"
    monkeypatch.setenv("MCF_FFTW_WISDOM", str(wisdom))
    img, centres = synthetic_tile()
    path = tmp_path / "t.json"
    TemplateSet.from_points(img, centres[:1], size=15, image_name="syn").save(path)
    result = CliRunner().invoke(cli, ["warmup", "--templates", str(path), "--tile", "64"])
    assert result.exit_code == 0, result.output
    assert "plans" in result.output
    assert wisdom.is_file() and wisdom.stat().st_size > 0
    with pytest.raises(InputError, match="tile = 8"):
        warm_up(TemplateSet.load(path), tile=8)
