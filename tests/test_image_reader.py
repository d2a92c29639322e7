"""The image reader: colour modes, the pixel limit, and damaged files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mcf_fast.errors import FormatError, InputError, McfError
from mcf_fast.io.images import MAX_PIXELS_ENV, read_image


def test_large_tiff_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((300, 400, 3), np.uint8), compression="zlib")
    assert path.stat().st_size < 50_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "100000")
    with pytest.raises(InputError, match=r"big\.tif: 400 x 300 pixels is above the limit"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "none")
    assert read_image(path).shape == (300, 400, 3)


def test_declared_huge_tiff_is_refused_at_the_default_limit(tmp_path):
    # 40000 x 40000 declared: refused from the header, nothing is allocated
    path = tmp_path / "bomb.tif"
    # a small page whose header is patched to declare a huge size
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        page = tif.pages.first
        page.tags["ImageWidth"].overwrite(40000)
        page.tags["ImageLength"].overwrite(40000)
    with pytest.raises(InputError, match="40000 x 40000 pixels is above the limit"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_large_png_jpeg_are_refused(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"big{suffix}"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(InputError, match="400 x 300 pixels is above the limit"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(McfError, match=MAX_PIXELS_ENV):
        read_image(path)


def test_cmyk_jpeg_is_converted(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :, 3] = 255  # full black ink: black, not the white of C, M, Y alone
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=100)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    rgb = read_image(path)
    assert rgb.shape == (16, 16, 3) and rgb.max() < 10


def test_palette_png_is_converted(tmp_path):
    im = Image.new("P", (8, 6))
    im.putpalette([0, 0, 0, 200, 30, 90] + [0] * 762)
    im.putpixel((2, 3), 1)
    path = tmp_path / "pal.png"
    im.save(path)
    rgb = read_image(path)
    assert tuple(rgb[3, 2]) == (200, 30, 90) and tuple(rgb[0, 0]) == (0, 0, 0)


def test_tiff_palette_cmyk_miniswhite(tmp_path):
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 1] = (65535, 0, 32896)
    idx = np.zeros((4, 5), np.uint8)
    idx[1, 2] = 1
    tifffile.imwrite(tmp_path / "p.tif", idx, photometric="palette", colormap=cmap)
    rgb = read_image(tmp_path / "p.tif")
    assert tuple(rgb[1, 2]) == (255, 0, 128) and tuple(rgb[0, 0]) == (0, 0, 0)

    cmyk = np.zeros((4, 5, 4), np.uint8)
    cmyk[0, 0] = (255, 0, 0, 0)  # cyan
    tifffile.imwrite(tmp_path / "c.tif", cmyk, photometric="separated")
    rgb = read_image(tmp_path / "c.tif")
    assert tuple(rgb[0, 0]) == (0, 255, 255) and tuple(rgb[1, 1]) == (255, 255, 255)

    tifffile.imwrite(tmp_path / "w.tif", np.zeros((4, 5), np.uint8), photometric="miniswhite")
    assert read_image(tmp_path / "w.tif").min() == 255


def test_unreadable_colour_space_names_the_file(tmp_path):
    path = tmp_path / "lab.tif"
    tifffile.imwrite(path, np.zeros((4, 5, 3), np.uint8), photometric="cielab")
    with pytest.raises(FormatError, match=r"lab\.tif: TIFF colour space CIELAB"):
        read_image(path)


def _valid_files() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), np.uint8)
    out = []
    for mode in ("1", "L", "P", "RGB", "RGBA", "CMYK", "LA", "I", "F", "I;16"):
        for fmt, suffix in (("PNG", ".png"), ("TIFF", ".tif"), ("JPEG", ".jpg")):
            try:
                im = Image.fromarray(rgb).convert(mode)
                buf = io.BytesIO()
                im.save(buf, format=fmt)
            except (OSError, ValueError, KeyError):
                continue  # a mode the format cannot hold
            out.append((suffix, buf.getvalue()))
    for shape, dtype in (((1, 1), np.uint8), ((1, 9, 3), np.uint16), ((5, 3, 2), np.uint8)):
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.ones(shape, dtype), photometric="minisblack")
        out.append((".tif", buf.getvalue()))
    buf = io.BytesIO()
    tifffile.imwrite(buf, rng.random((4, 4, 3)).astype(np.float32) * 3, photometric="rgb")
    out.append((".tif", buf.getvalue()))
    return out


VALID = _valid_files()


def _check(path) -> None:
    try:
        a = read_image(path)
    except McfError as exc:
        assert str(path) in str(exc)
        return
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and a.flags.c_contiguous


def test_every_valid_file_reads_or_is_refused_clearly(tmp_path):
    for i, (suffix, raw) in enumerate(VALID):
        path = tmp_path / f"v{i}{suffix}"
        path.write_bytes(raw)
        _check(path)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.integers(0, len(VALID) - 1),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    noise=st.binary(max_size=64),
)
def test_fuzz_reader_never_raises_anything_else(tmp_path, which, cut, flips, noise):
    suffix, raw = VALID[which]
    data = bytearray(raw[: max(1, int(len(raw) * cut))] if cut < 1 else raw)
    for pos, value in flips:
        data[pos % len(data)] = value
    data += noise
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(bytes(data))
    _check(path)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=512), suffix=st.sampled_from([".png", ".tif", ".jpg", ".bmp"]))
def test_fuzz_random_bytes(tmp_path, raw, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(raw)
    _check(path)


def test_zarr_with_huge_chunks_is_refused(tmp_path, monkeypatch):
    import zarr

    from mcf_fast.io.slides import open_slide

    path = tmp_path / "s.zarr"
    arr = zarr.open_array(
        str(path), mode="w", shape=(600, 500, 3), chunks=(600, 500, 3), dtype="u1"
    )
    arr[:] = 200
    monkeypatch.setenv(MAX_PIXELS_ENV, "100000")
    with pytest.raises(InputError, match=r"s\.zarr: zarr chunks of 500 x 600 pixels are above"):
        open_slide(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000000")
    assert open_slide(path).shape == (600, 500)
