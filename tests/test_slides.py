"""Slide readers: arrays, plain images, zarr, pyramidal TIFF through tiffslide; tissue masks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

from mcf_fast.errors import FormatError, InputError
from mcf_fast.io.slides import (
    ArrayReader,
    OpenSlideReader,
    TiffSlideReader,
    open_slide,
    tissue_mask,
)


def write_pyramid(
    path, img: np.ndarray, *, mpp: float | None = 0.25, tile: int = 128, levels: int = 3
) -> None:
    """A pyramidal tiled TIFF whose level k is ``img[::2**k, ::2**k]``."""
    opts = dict(tile=(tile, tile), compression="zlib", photometric="rgb")
    res = (
        {} if mpp is None else dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(img, subifds=levels - 1, **res, **opts)
        for k in range(1, levels):
            tw.write(img[:: 2**k, :: 2**k], subfiletype=1, **opts)


@pytest.fixture
def image(rng) -> np.ndarray:
    return rng.integers(0, 256, (300, 452, 3), dtype=np.uint8)


def test_array_reader_reads_regions(image):
    r = open_slide(image, mpp=0.5)
    assert isinstance(r, ArrayReader) and r.shape == (300, 452) and r.mpp == 0.5
    np.testing.assert_array_equal(r.read_region(10, 20, 30, 40), image[10:40, 20:60])
    np.testing.assert_array_equal(r.read_region(0, 0, 300, 452), image)
    for bad in [(-1, 0, 5, 5), (0, 0, 301, 5), (0, 450, 5, 3), (0, 0, 0, 5)]:
        with pytest.raises(InputError, match="outside"):
            r.read_region(*bad)


def test_array_reader_converts_and_validates():
    gray = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    out = open_slide(gray).read_region(0, 0, 4, 6)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    assert out[3, 5, 0] == 255 and out[0, 0, 2] == 0
    with pytest.raises(InputError, match="shape"):
        ArrayReader(np.zeros((4, 4, 2)))
    with pytest.raises(InputError, match="mpp"):
        ArrayReader(np.zeros((4, 4)), mpp=-1)
    with pytest.raises(InputError, match="level"):
        open_slide(np.zeros((4, 4)), level=1)
    with pytest.raises(InputError, match="backend"):
        open_slide(np.zeros((4, 4)), backend="pillow")


def test_pyramidal_tiff_levels_mpp_and_regions(tmp_path, image):
    path = tmp_path / "s.tif"
    write_pyramid(path, image)
    r = open_slide(path)
    assert isinstance(r, TiffSlideReader)
    assert r.shape == (300, 452) and r.mpp == pytest.approx(0.25) and r.downsample == 1.0
    np.testing.assert_array_equal(r.read_region(37, 101, 150, 200), image[37:187, 101:301])
    r1 = open_slide(path, level=1)
    assert r1.shape == (150, 226) and r1.downsample == 2.0 and r1.mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(r1.read_region(5, 7, 40, 50), image[::2, ::2][5:45, 7:57])
    # --mpp overrides the file
    assert open_slide(path, mpp=0.2, level=2).mpp == pytest.approx(0.8)
    with pytest.raises(InputError, match="level 3 does not exist"):
        open_slide(path, level=3)


def test_tiff_without_mpp_and_pickling(tmp_path, image):
    path = tmp_path / "nompp.tif"
    write_pyramid(path, image, mpp=None, levels=1)
    r = open_slide(path)
    assert r.mpp is None
    r.read_region(0, 0, 8, 8)  # opens the file
    clone = pickle.loads(pickle.dumps(r))
    assert clone._slide is None and clone.shape == r.shape
    np.testing.assert_array_equal(clone.read_region(3, 4, 20, 30), image[3:23, 4:34])


def test_thumbnail_uses_the_pyramid_and_matches_subsampling(tmp_path, image):
    path = tmp_path / "s.tif"
    write_pyramid(path, image)
    thumb, scale = open_slide(path).thumbnail(120)
    assert scale == 4.0 and max(thumb.shape[:2]) <= 120
    np.testing.assert_array_equal(thumb, image[::4, ::4])
    thumb, scale = open_slide(image).thumbnail(120)
    np.testing.assert_array_equal(thumb, image[::4, ::4])
    with pytest.raises(InputError):
        open_slide(image).thumbnail(0)


def test_plain_images_and_zarr(tmp_path, image):
    from PIL import Image

    png = tmp_path / "a.png"
    Image.fromarray(image).save(png)
    r = open_slide(png, mpp=0.3)
    assert isinstance(r, ArrayReader) and r.mpp == 0.3 and r.name == "a.png"
    np.testing.assert_array_equal(r.read_region(1, 2, 3, 4), image[1:4, 2:6])
    with pytest.raises(InputError, match="plain image"):
        open_slide(png, level=1)

    import zarr

    z = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=image.shape, chunks=(64, 64, 3), dtype="uint8"
    )
    z[:] = image
    rz = open_slide(tmp_path / "a.zarr")
    np.testing.assert_array_equal(rz.read_region(100, 200, 50, 60), image[100:150, 200:260])


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such"):
        open_slide(tmp_path / "missing.svs")
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(FormatError, match="bad.svs"):
        open_slide(bad)
    other = tmp_path / "x.xyz"
    other.write_bytes(b"?")
    with pytest.raises(FormatError, match="unknown image or slide type"):
        open_slide(other)
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="zarr"):
        open_slide(tmp_path / "folder")


def write_page_pyramid(path, img: np.ndarray, *, mpp: float = 0.25, levels: int = 3) -> None:
    """A pyramid whose levels are consecutive pages (the generic-TIFF layout OpenSlide reads)."""
    opts = dict(tile=(128, 128), compression="zlib", photometric="rgb", resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tw:
        for k in range(levels):
            res = 1e4 / (mpp * 2**k)
            tw.write(
                img[:: 2**k, :: 2**k], subfiletype=1 if k else 0, resolution=(res, res), **opts
            )


def test_openslide_missing_gives_a_clear_error(tmp_path, image, monkeypatch):
    import sys

    path = tmp_path / "s.tif"
    write_pyramid(path, image)
    monkeypatch.setitem(sys.modules, "openslide", None)  # import fails as when not installed
    with pytest.raises(InputError, match="openslide"):
        open_slide(path, backend="openslide").read_region(0, 0, 4, 4)


@pytest.mark.parametrize("layout", ["pages", "subifds"])
def test_openslide_and_tiffslide_read_the_same_pixels(tmp_path, image, layout):
    pytest.importorskip("openslide", reason="the [openslide] extra is not installed")
    path = tmp_path / "s.tif"
    (write_page_pyramid if layout == "pages" else write_pyramid)(path, image)
    # OpenSlide's generic-TIFF reader takes pyramid levels from top-level pages only; a
    # SubIFD pyramid is level 0 to it (documented in docs/slides.md)
    levels = 3 if layout == "pages" else 1
    for level in range(levels):
        a = open_slide(path, backend="openslide", level=level)
        b = open_slide(path, backend="tiffslide", level=level)
        assert isinstance(a, OpenSlideReader) and isinstance(b, TiffSlideReader)
        assert a.shape == b.shape and a.downsample == b.downsample
        assert a.mpp == pytest.approx(b.mpp) and a.mpp == pytest.approx(0.25 * 2**level)
        ref = image[:: 2**level, :: 2**level]
        for y, x, h, w in [(0, 0, 16, 16), (5, 7, 40, 50), (0, 0, *a.shape)]:
            np.testing.assert_array_equal(a.read_region(y, x, h, w), ref[y : y + h, x : x + w])
    if layout == "subifds":
        with pytest.raises(InputError, match="level 1 does not exist"):
            open_slide(path, backend="openslide", level=1)
    thumb, scale = open_slide(path, backend="openslide").thumbnail(120)
    np.testing.assert_array_equal(thumb, image[:: int(scale), :: int(scale)])


def test_corrupt_tile_raises_on_read_only_there(tmp_path, image):
    path = tmp_path / "s.tif"
    write_pyramid(path, image, levels=1)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        off, n = page.dataoffsets[1], page.databytecounts[1]  # tile row 0, column 1
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\x00" * min(n, 64))
    r = open_slide(path)
    np.testing.assert_array_equal(r.read_region(0, 0, 100, 100), image[:100, :100])
    with pytest.raises(Exception):  # noqa: B017 - the codec's own error type
        r.read_region(0, 130, 50, 50)


def test_tissue_mask_finds_tissue_and_skips_glass(rng):
    img = np.full((800, 1200, 3), 242, np.uint8)
    img += rng.integers(0, 6, img.shape, dtype=np.uint8)  # glass noise
    img[200:500, 300:700] = (180, 90, 160)  # stained tissue
    img[600:602, 100:103] = (120, 60, 120)  # a speck of dust
    tm = tissue_mask(open_slide(img), max_side=300)
    assert tm.scale == 4.0
    assert tm.any_in(250, 350, 300, 400)
    assert tm.any_in(0, 0, 210, 310)  # touches the tissue corner
    assert not tm.any_in(0, 800, 150, 1200)
    assert not tm.any_in(560, 60, 640, 140)  # the speck is dropped
    assert 0.1 < tm.fraction < 0.2
    empty = tissue_mask(open_slide(np.full((64, 64, 3), 250, np.uint8)))
    assert empty.fraction == 0.0
    with pytest.raises(InputError, match="brightness"):
        tissue_mask(open_slide(img), brightness=2.0)


# ------------------------------------------------------------------ resampling to a scale
def test_scaled_reader_maps_scale_and_reads_tiles_consistently(rng):
    from mcf_fast.io.slides import ArrayReader, ScaledReader

    img = rng.integers(0, 256, (90, 120, 3)).astype(np.uint8)
    base = ArrayReader(img, mpp=0.25)
    half = ScaledReader(base, 0.5)
    assert half.shape == (45, 60) and half.mpp == 0.5 and half.downsample == 2.0
    whole = half.read_region(0, 0, 45, 60)
    # a tile reads exactly the pixels the whole image has there (no seams between tiles)
    np.testing.assert_array_equal(half.read_region(10, 17, 20, 30), whole[10:30, 17:47])
    # scale 2 of a smooth ramp interpolates between neighbours
    ramp = np.repeat(np.arange(0, 200, 10, dtype=np.uint8)[None, :, None], 3, axis=2)
    up = ScaledReader(ArrayReader(np.repeat(ramp, 4, axis=0)), 2.0).read_region(0, 0, 8, 40)
    # pixel j samples the base at j / 2 - 0.25, where the ramp is 5 j - 2.5
    np.testing.assert_allclose(up[0, 1:-1, 0], 5 * np.arange(1, 39) - 2.5, atol=0.5)
    np.testing.assert_array_equal(ScaledReader(base, 1.0).read_region(0, 0, 90, 120), img)
    thumb, step = half.thumbnail(20)
    assert step == 3.0 and thumb.shape == (15, 20, 3)
    with pytest.raises(InputError, match="scale"):
        ScaledReader(base, 0)
