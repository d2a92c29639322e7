"""Aperio / MoNuSeg XML to instance masks, against hand cases and the official masks."""

from __future__ import annotations

import numpy as np
import pytest

from mcf_fast.errors import FormatError, InputError
from mcf_fast.io.datasets import FolderDataset
from mcf_fast.io.images import write_image
from mcf_fast.io.monuseg_xml import rasterise_polygons, read_aperio_xml, xml_to_labels


def aperio(regions):
    body = []
    for i, verts in enumerate(regions, start=1):
        vs = "".join(f'<Vertex X="{x}" Y="{y}"/>' for y, x in verts)
        body.append(f'<Region Id="{i}"><Attributes/><Vertices>{vs}</Vertices></Region>')
    return (
        '<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions>'
        + "".join(body)
        + "</Regions></Annotation></Annotations>"
    )


def test_read_aperio_xml(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(aperio([[(1, 1), (1, 3.5), (3, 3)], [(5, 5), (6, 6), (5, 7)]]))
    polys = read_aperio_xml(p)
    assert len(polys) == 2
    np.testing.assert_array_equal(polys[0], [[0, 0], [0, 2.5], [2, 2]])  # (Y - 1, X - 1)


def test_square_with_integer_vertices():
    # Vertices X, Y in {1, 3} in the file (1-based pixel centres), {0, 2} in pixel-index
    # coordinates.  Snapping to the 5x sub-grid moves each vertex +0.1 px
    # (round(5 * (V - 0.5) + 1) rounds 5V - 1.5 up), so the square covers pixel-index
    # centres 1..2 on both axes.
    lab = rasterise_polygons([np.array([[0, 0], [0, 2], [2, 2], [2, 0]], float)], (5, 5))
    expected = np.zeros((5, 5), np.int32)
    expected[1:3, 1:3] = 1
    np.testing.assert_array_equal(lab, expected)


def test_orientation_and_overlap_rule():
    square = np.array([[0, 0], [0, 2], [2, 2], [2, 0]], float)
    a = rasterise_polygons([square], (6, 6))
    b = rasterise_polygons([square[::-1]], (6, 6))  # clockwise or not: same pixels
    np.testing.assert_array_equal(a, b)
    moved = square + [1, 1]  # overlaps the first at 0-based pixel (2, 2)
    lab = rasterise_polygons([square, moved], (6, 6))
    assert lab[2, 2] == 1 and lab[3, 3] == 2 and lab[1, 1] == 1
    assert (lab == 2).sum() == 3  # the earlier region keeps the shared pixel


def test_polygon_past_the_border_is_clipped():
    big = np.array([[-4, -4], [-4, 8], [8, 8], [8, -4]], float)
    lab = rasterise_polygons([big], (4, 5))
    assert np.all(lab == 1)


def test_degenerate_regions_are_empty():
    lab = rasterise_polygons([np.array([[1.0, 1.0]]), np.array([[0, 0], [0, 2]], float)], (5, 5))
    assert lab.max() == 0


def test_bad_xml(tmp_path):
    p = tmp_path / "bad.xml"
    p.write_text("<Annotations><unclosed></Annotations>")
    with pytest.raises(FormatError, match=r"bad\.xml: not an XML file"):
        read_aperio_xml(p)
    p.write_text("<Annotations/>")
    with pytest.raises(FormatError, match="no <Region>"):
        read_aperio_xml(p)
    p.write_text(aperio([[(1, "a"), (2, 2), (3, 3)]]))
    with pytest.raises(FormatError, match="region 0"):
        read_aperio_xml(p)
    with pytest.raises(InputError, match="no such"):
        read_aperio_xml(tmp_path / "none.xml")


def test_folder_dataset_reads_xml_when_no_mask(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "annotations_xml").mkdir()
    write_image(root / "images" / "s.png", np.zeros((6, 7, 3), np.uint8))
    (root / "annotations_xml" / "s.xml").write_text(aperio([[(1, 1), (1, 3), (3, 3), (3, 1)]]))
    ds = FolderDataset(root, require_masks=True)
    assert ds["s"].mask_path.suffix == ".xml"
    lab = ds.load_mask("s")
    assert lab.shape == (6, 7) and (lab == 1).sum() == 4


@pytest.mark.data
def test_matches_official_test_masks(monuseg):
    ds = FolderDataset(monuseg / "test", require_masks=True)
    worst = 1.0
    for name in ds.names:
        gt = ds.load_mask(name)
        lab = xml_to_labels(monuseg / "test" / "annotations_xml" / f"{name}.xml", gt.shape)
        a, b = lab > 0, gt > 0
        iou = (a & b).sum() / (a | b).sum()
        worst = min(worst, iou)
        assert iou >= 0.99, name
        assert (lab == gt).mean() > 0.999, name  # instance ids agree too (region order)
    assert worst >= 0.998  # measured 0.99897 on TCGA-CU-A0YN-01A-02-BSB
