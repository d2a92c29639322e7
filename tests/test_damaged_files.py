"""Damaged or hostile input files: one clear error naming the file, no unsafe advice."""

from __future__ import annotations

import tempfile
import zipfile

import numpy as np
import pytest

from mcf_fast.cli import main
from mcf_fast.config import MCFConfig
from mcf_fast.detection.detector import Detector
from mcf_fast.errors import FormatError
from mcf_fast.framework.model import MCFModel
from mcf_fast.io.geojson import read_geojson_points
from mcf_fast.io.images import write_image
from mcf_fast.io.templates import TemplateSet
from mcf_fast.ops.filters import FilterBank
from mcf_fast.segmentation.unet import UNet
from tests.test_detector import CENTRES, synthetic

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    img = synthetic(64, 70)
    tset = TemplateSet.from_points(img, [CENTRES[0]], size=17, image_name="a")
    MCFModel(MCFConfig(), tset, Detector(tset), UNet(width=4, depth=2)).save(d / "m.mcf")
    write_image(d / "a.png", img)
    return d


def _replace_member(src, dst, member, data) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, data if name == member else zin.read(name))


def test_deeply_nested_json_is_a_format_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(FormatError, match="deep.json: not a JSON template-set file"):
        TemplateSet.load(path)
    with pytest.raises(FormatError, match="deep.json: not a JSON/GeoJSON file"):
        read_geojson_points(path)


def test_deeply_nested_model_json(bundle, tmp_path):
    bad = tmp_path / "deep.mcf"
    _replace_member(bundle / "m.mcf", bad, "model.json", DEEP)
    with pytest.raises(FormatError, match="deep.mcf: model.json is not valid JSON"):
        MCFModel.load(bad)


def test_damaged_weights_never_suggest_unsafe_loading(bundle, tmp_path, capsys):
    bad = tmp_path / "bad.mcf"
    _replace_member(bundle / "m.mcf", bad, "unet.pt", b"\x80\x02garbage" * 20)
    with pytest.raises(FormatError, match=r"bad\.mcf: damaged model bundle \(unet\.pt") as info:
        MCFModel.load(bad)
    assert "weights_only" not in str(info.value)
    rc = main(["predict", str(bundle / "a.png"), "--model", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "damaged model bundle" in err
    assert "weights_only" not in err and "Traceback" not in err


@pytest.mark.parametrize("payload", ["garbage", "pickle"])
def test_damaged_filter_bank_names_the_bundle(bundle, tmp_path, payload):
    if payload == "pickle":
        src = tmp_path / "obj.npz"
        np.savez(src, version=np.array([{"a": 1}], dtype=object))
        data = src.read_bytes()
    else:
        data = b"PK\x03\x04 not a zip" * 10
    bad = tmp_path / "bank.mcf"
    _replace_member(bundle / "m.mcf", bad, "filter_bank.npz", data)
    with pytest.raises(FormatError) as info:
        MCFModel.load(bad)
    msg = str(info.value)
    assert msg.startswith(f"{bad}: damaged model bundle (filter_bank.npz: not a filter-bank")
    assert tempfile.gettempdir() + "/tmp" not in msg and "allow_pickle" not in msg


def test_pickled_bank_file_message_has_no_unsafe_advice(tmp_path):
    path = tmp_path / "bank.npz"
    np.savez(path, version=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FormatError, match="bank.npz: not a filter-bank file") as info:
        FilterBank.load(path)
    assert "allow_pickle" not in str(info.value)
