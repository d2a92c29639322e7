"""The package skeleton: version, CLI entry, config validation, image conversions."""

from __future__ import annotations

import numpy as np
import pytest

import mcf_fast
from mcf_fast.cli import main
from mcf_fast.config import DetectionConfig, MCFConfig, SegmentationConfig, config_to_dict
from mcf_fast.errors import ConfigError, InputError, McfError
from mcf_fast.io.images import as_rgb_uint8, atomic_path


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert mcf_fast.__version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "Usage: mcf" in capsys.readouterr().out


def test_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, McfError)
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"top_t": 0}, "top_t"),
        ({"gdbp_p": 10, "gdbp_q": 10}, "gdbp_p"),
        ({"t1": 1.5}, "t1"),
        ({"fusion": "max"}, "fusion"),
        ({"crop_fractions": ()}, "crop"),
    ],
)
def test_detection_config_names_bad_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DetectionConfig(**kwargs)


def test_segmentation_config_validation():
    with pytest.raises(ConfigError, match="device"):
        SegmentationConfig(device="tpu")


def test_config_round_trip():
    cfg = MCFConfig(detection=DetectionConfig(top_h=1), segmentation=SegmentationConfig(width=8))
    assert MCFConfig.from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        MCFConfig.from_dict({"detection": {"nope": 1}})


def test_image_conversions():
    assert as_rgb_uint8(np.full((3, 4), 0.5)).max() == 128
    assert as_rgb_uint8(np.zeros((3, 4, 4), np.uint8)).shape == (3, 4, 3)
    assert as_rgb_uint8(np.full((2, 2, 3), 65535, np.uint16)).max() == 255
    with pytest.raises(InputError, match="NaN"):
        as_rgb_uint8(np.full((2, 2), np.nan))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        as_rgb_uint8(np.full((2, 2), 3.0))
    with pytest.raises(InputError, match="shape"):
        as_rgb_uint8(np.zeros((2, 2, 2)))


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_output_has_umask_mode(tmp_path):
    import os

    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)
