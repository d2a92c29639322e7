"""Folder datasets: pairing, lazy loading, and clear errors for bad folders."""

from __future__ import annotations

import numpy as np
import pytest

from mcf_fast.errors import DataError, FormatError
from mcf_fast.io.datasets import FolderDataset, Sample, as_instance_labels, image_shape
from mcf_fast.io.images import write_image


def make_dataset(root, names=("b", "a"), shape=(12, 10), masks=True):
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for i, n in enumerate(names):
        img = np.full((*shape, 3), 40 * i, np.uint8)
        write_image(root / "images" / f"{n}.png", img)
        if masks:
            lab = np.zeros(shape, np.uint16)
            lab[2:5, 3:6] = 1
            lab[6:9, 1:4] = 300
            write_image(root / "masks" / f"{n}.png", lab)
    return root


def test_listing_and_loading(tmp_path):
    ds = FolderDataset(make_dataset(tmp_path / "d"), require_masks=True)
    assert ds.names == ["a", "b"] and len(ds) == 2
    s = ds[0]
    assert isinstance(s, Sample) and s.name == "a" and s.mask_path.name == "a.png"
    assert ds["b"].image_path.name == "b.png"
    assert [x.name for x in ds] == ["a", "b"]
    img = ds.load_image("b")
    assert img.shape == (12, 10, 3) and img.dtype == np.uint8 and img[0, 0, 0] == 0
    lab = ds.load_mask("a")
    assert lab.dtype == np.int32 and set(np.unique(lab)) == {0, 1, 300}
    with pytest.raises(DataError, match="no image named 'zz'"):
        ds["zz"]


def test_images_without_masks(tmp_path):
    root = make_dataset(tmp_path / "d", masks=False)
    ds = FolderDataset(root)
    assert ds["a"].mask_path is None
    with pytest.raises(DataError, match="no mask"):
        ds.load_mask("a")
    with pytest.raises(DataError, match=r"without a mask.*a\.png"):
        FolderDataset(root, require_masks=True)


def test_mask_size_differs_from_image(tmp_path):
    root = make_dataset(tmp_path / "d")
    write_image(root / "masks" / "a.png", np.zeros((5, 5), np.uint16))
    ds = FolderDataset(root)
    with pytest.raises(DataError, match=r"masks/a\.png: mask size 5x5 differs.*images/a\.png"):
        ds.load_mask("a")


def test_file_that_is_not_an_image(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "images" / "a.png").write_text("this is not a PNG")
    ds = FolderDataset(root)  # listing reads no pixels
    with pytest.raises(FormatError, match=r"a\.png: not a readable image"):
        ds.load_image("a")
    with pytest.raises(FormatError, match=r"a\.png: not a readable image"):
        ds.load_mask("a")


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        FolderDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="no images/ folder"):
        FolderDataset(tmp_path)
    with pytest.raises(DataError, match="not found"):
        FolderDataset(tmp_path / "nope")


def test_orphan_mask_and_duplicate_stems(tmp_path):
    root = make_dataset(tmp_path / "d")
    write_image(root / "masks" / "c.png", np.zeros((12, 10), np.uint16))
    with pytest.raises(DataError, match=r"without an image.*c\.png"):
        FolderDataset(root)
    root2 = make_dataset(tmp_path / "e")
    write_image(root2 / "images" / "a.tif", np.zeros((12, 10, 3), np.uint8))
    with pytest.raises(DataError, match="share the name 'a'"):
        FolderDataset(root2)


def test_tif_masks_and_image_shape(tmp_path):
    root = make_dataset(tmp_path / "d", masks=False)
    (root / "masks").mkdir()
    lab = np.zeros((12, 10), np.uint16)
    lab[1:3, 1:3] = 7
    write_image(root / "masks" / "a.tif", lab)
    ds = FolderDataset(root)
    assert image_shape(ds["a"].image_path) == (12, 10)
    assert image_shape(ds["a"].mask_path) == (12, 10)
    # a mask with a single id is taken as binary -> components, numbered 1..N
    np.testing.assert_array_equal(ds.load_mask("a"), (lab > 0).astype(np.int32))


def test_as_instance_labels():
    binary = np.zeros((5, 6), np.uint8)
    binary[0:2, 0:2] = 255
    binary[3:5, 3:6] = 255
    binary[1, 4] = 255  # a third, separate component
    out = as_instance_labels(binary)
    assert out.max() == 3 and out[0, 0] == 1
    inst = np.array([[0, 5], [5, 9]])
    np.testing.assert_array_equal(as_instance_labels(inst), inst)
    with pytest.raises(ValueError, match="2-D"):
        as_instance_labels(np.zeros((2, 2, 2), int))


@pytest.mark.data
def test_monuseg_layout(monuseg):
    ds = FolderDataset(monuseg / "test", require_masks=True)
    assert len(ds) == 14
    assert all(s.mask_path.suffix == ".png" for s in ds)
    lab = ds.load_mask(0)
    assert lab.shape == (1000, 1000) and lab.max() > 100
