"""Slide runs on a dask LocalCluster: outputs, resume, unreadable tiles, a killed worker, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import tifffile
from test_slides import write_pyramid
from test_tiling import synthetic_tissue

from mcf_fast.cli import main
from mcf_fast.errors import ConfigError
from mcf_fast.io.export import CSV_COLUMNS
from mcf_fast.io.tiling import tile_grid
from mcf_fast.slide.predictors import BlobPredictor
from mcf_fast.slide.run import run_slide
from mcf_fast.slide.worker import predict_tiled

TILE = 256


@pytest.fixture(scope="module")
def client():
    """Two worker processes, shared by every test of this module."""
    import cloudpickle
    from distributed import Client, LocalCluster

    # the slow predictor below lives in this test module, which workers cannot import
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"NUMBA_NUM_THREADS": "1"},
    )
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def slide_image() -> np.ndarray:
    """1024 x 1280 glass with tissue in the middle: 20 tiles of 256, 9 with tissue."""
    img = np.full((1024, 1280, 3), 243, np.uint8)
    img[264:1016, 264:1016] = synthetic_tissue((752, 752), n=700, seed=3)
    return img


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory, slide_image):
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    write_pyramid(path, slide_image, mpp=0.5, tile=128)
    return path


def tissue_tiles(img):
    return [
        t.index
        for t in tile_grid(img.shape[:2], tile=TILE, margin=0)
        if t.core[0] >= 256 and t.core[1] >= 256 and t.core[3] <= 1024
    ]


def reference(img, out_dir):
    """In-memory tiled prediction with the run's calibration, background tiles blanked."""
    run = json.loads((out_dir / "run.json").read_text())
    p = BlobPredictor().calibrated(run["calibration"])
    labels, ids, _ = predict_tiled(img, p, tile=TILE)
    keep = np.zeros(img.shape[:2], bool)
    for t in tile_grid(img.shape[:2], tile=TILE, margin=0):
        if t.index in tissue_tiles(img):
            keep[t.core[0] : t.core[2], t.core[1] : t.core[3]] = True
    labels[~keep] = 0
    yx = np.stack([(ids - 1) // img.shape[1], (ids - 1) % img.shape[1]], 1)
    return labels, ids[keep[yx[:, 0], yx[:, 1]]]


def manifest_counts(out_dir):
    counts: dict[int, int] = {}
    for line in (out_dir / "manifest.jsonl").read_text().splitlines():
        i = json.loads(line)["tile"]
        counts[i] = counts.get(i, 0) + 1
    return counts


def check_outputs(out_dir, img, report):
    import zarr

    labels = zarr.open_array(str(out_dir / "labels.zarr" / "0"), mode="r")[:]
    ref_labels, ref_ids = reference(img, out_dir)
    np.testing.assert_array_equal(labels, ref_labels)
    rows = (out_dir / "nuclei.csv").read_text().splitlines()[1:]
    ids = np.array([int(r.split(",")[0]) for r in rows])
    assert len(ids) == len(set(ids)) == report.n_nuclei
    np.testing.assert_array_equal(np.sort(ids), np.sort(ref_ids))
    doc = json.loads((out_dir / "nuclei.geojson").read_text())
    assert len(doc["features"]) == report.n_nuclei
    # level-0 pixel coordinates and µm measurements (mpp 0.5 from the file)
    f = doc["features"][0]
    x, y = f["properties"]["measurements"]["Centre x"], f["properties"]["measurements"]["Centre y"]
    assert 256 <= x <= 1024 and 256 <= y <= 1024
    assert f["properties"]["measurements"]["Area um^2"] == pytest.approx(
        f["properties"]["measurements"]["Area px"] * 0.25, rel=1e-3
    )
    assert manifest_counts(out_dir) == {i: 1 for i in tissue_tiles(img)}
    leftovers = [p for p in out_dir.rglob("*") if ".part" in p.name]
    assert leftovers == []


class CountingPredictor:
    """The blob predictor that notes, in a file, each process it is unpickled in."""

    def __init__(self, log, inner=None):
        self.log, self.inner = str(log), inner or BlobPredictor()
        self.halo = self.inner.halo

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")

    def calibration(self, samples):
        return self.inner.calibration(samples)

    def calibrated(self, state):
        return CountingPredictor(self.log, self.inner.calibrated(state))

    def predict_tile(self, rgb):
        return self.inner.predict_tile(rgb)


def test_run_on_a_pyramidal_tiff(client, slide_path, slide_image, tmp_path):
    seen = []
    loads = tmp_path / "loads.txt"
    out = tmp_path / "out"
    report = run_slide(
        slide_path,
        CountingPredictor(loads),
        out,
        tile=TILE,
        client=client,
        progress=False,
        on_tile=seen.append,
    )
    # the model reached each worker once, not once per tile
    pids = loads.read_text().split()
    assert 1 <= len(pids) <= 2 and len(set(pids)) == len(pids)
    assert set(pids) <= {str(p) for p in client.run(os.getpid).values()}
    tmp_path = out
    assert report.complete and report.workers == 2
    assert report.n_tiles == 20 and report.n_tissue == 9 and report.n_processed == 9
    assert sorted(s["tile"] for s in seen) == tissue_tiles(slide_image)
    assert report.megapixels == pytest.approx(9 * TILE * TILE / 1e6)
    check_outputs(tmp_path, slide_image, report)
    assert (tmp_path / "overlay.png").exists() and not (tmp_path / "labels.zarr.partial").exists()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["complete"] and saved["n_nuclei"] == report.n_nuclei


def test_interrupted_run_resumes_and_skips_finished_tiles(
    client, slide_path, slide_image, tmp_path
):
    class Interrupt(Exception):
        pass

    done = []

    def stop_after_three(summary):
        done.append(summary["tile"])
        if len(done) == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_slide(
            slide_path,
            BlobPredictor(),
            tmp_path,
            tile=TILE,
            workers=0,
            progress=False,
            on_tile=stop_after_three,
        )
    assert not (tmp_path / "nuclei.geojson").exists()  # nothing half-made
    assert len(manifest_counts(tmp_path)) == 3
    report = run_slide(
        slide_path, BlobPredictor(), tmp_path, tile=TILE, client=client, progress=False
    )
    assert report.n_resumed == 3 and report.n_processed == 6 and report.complete
    check_outputs(tmp_path, slide_image, report)
    again = run_slide(slide_path, BlobPredictor(), tmp_path, tile=TILE, workers=0, progress=False)
    assert again.n_resumed == 9 and again.n_processed == 0 and again.n_nuclei == report.n_nuclei
    check_outputs(tmp_path, slide_image, again)
    with pytest.raises(ConfigError, match="other parameters"):
        run_slide(slide_path, BlobPredictor(), tmp_path, tile=2 * TILE, workers=0, progress=False)


def test_unreadable_tile_is_logged_and_reported(client, slide_image, tmp_path):
    path = tmp_path / "broken.tif"
    write_pyramid(path, slide_image, mpp=0.5, tile=64)
    # break the TIFF tile at rows 576..640, columns 576..640: inside the core of slide tile
    # 2 * 5 + 2 and out of reach of its neighbours' halos (a damaged block fails every tile
    # whose read region touches it)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        k = 9 * (1280 // 64) + 9
        off, n = page.dataoffsets[k], page.databytecounts[k]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\x00" * min(n, 64))
    out = tmp_path / "out"
    report = run_slide(path, BlobPredictor(), out, tile=TILE, client=client, progress=False)
    assert [(f["tile"], f["status"]) for f in report.failed] == [(12, "unreadable")]
    assert "Error" in report.failed[0]["error"]
    assert report.n_processed == 8 and not report.complete
    assert "tile 12 unreadable" in (out / "run.log").read_text()
    saved = json.loads((out / "report.json").read_text())
    assert not saved["complete"] and saved["failed"][0]["tile"] == 12
    # the finished tiles are all there; the label store keeps its temporary name
    assert set(manifest_counts(out)) == set(tissue_tiles(slide_image)) - {12}
    assert (out / "labels.zarr.partial").exists() and not (out / "labels.zarr").exists()
    # the command line reports it and exits with status 1 (re-running retries tile 12)
    code = main(
        [
            "slide",
            str(path),
            "--model",
            "blob",
            "--out",
            str(out),
            "--tile",
            str(TILE),
            "--workers",
            "0",
            "--quiet",
        ]
    )
    assert code == 1
    rerun = json.loads((out / "report.json").read_text())
    assert rerun["n_resumed"] == 8 and rerun["n_processed"] == 0
    assert [f["tile"] for f in rerun["failed"]] == [12]


@dataclass(frozen=True)
class SlowPredictor:
    """The blob predictor, slowed down so that a worker can be killed mid-run."""

    inner: BlobPredictor = BlobPredictor()
    delay: float = 0.4

    @property
    def halo(self) -> int:
        return self.inner.halo

    def calibration(self, samples):
        return self.inner.calibration(samples)

    def calibrated(self, state):
        return SlowPredictor(self.inner.calibrated(state), self.delay)

    def predict_tile(self, rgb):
        time.sleep(self.delay)
        return self.inner.predict_tile(rgb)


def test_worker_killed_mid_run_still_gives_every_tile_once(
    client, slide_path, slide_image, tmp_path
):
    killed: dict[str, int] = {}
    seen = []

    def kill_a_busy_worker(summary):
        seen.append(summary["tile"])
        if killed or summary["status"] != "ok":
            return
        busy = [a for a, keys in client.processing().items() if keys]
        if not busy:
            return
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(pid, signal.SIGKILL)  # it was running a tile: dask must run that one again
        killed["pid"], killed["at"] = pid, len(seen)

    report = run_slide(
        slide_path,
        SlowPredictor(),
        tmp_path,
        tile=TILE,
        client=client,
        progress=False,
        on_tile=kill_a_busy_worker,
    )
    assert "pid" in killed and killed["at"] <= 3
    assert sorted(seen) == tissue_tiles(slide_image)  # each tile recorded once
    assert report.complete and report.n_processed == 9, report.failed
    check_outputs(tmp_path, slide_image, report)
    client.wait_for_workers(2, timeout=60)
    assert killed["pid"] not in client.run(os.getpid).values()


def test_cli_slide_writes_every_output(slide_path, tmp_path):
    out = tmp_path / "cli"
    code = main(
        [
            "slide",
            str(slide_path),
            "--model",
            "blob",
            "--out",
            str(out),
            "--tile",
            str(TILE),
            "--workers",
            "0",
            "--quiet",
            "--level",
            "1",
        ]
    )
    assert code == 0
    for name in ("labels.zarr", "nuclei.geojson", "nuclei.csv", "overlay.png", "report.json"):
        assert (out / name).exists(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["level"] == 1 and rep["shape"] == [512, 640] and rep["mpp"] == pytest.approx(1.0)
    # level-1 outlines come back in level-0 coordinates
    doc = json.loads((out / "nuclei.geojson").read_text())
    xs = [p[0] for f in doc["features"] for p in f["geometry"]["coordinates"][0]]
    assert min(xs) >= 200 and max(xs) <= 1100
    assert (
        main(
            [
                "slide",
                str(slide_path),
                "--model",
                str(tmp_path / "nope.bundle"),
                "--out",
                str(tmp_path / "x"),
                "--workers",
                "0",
                "--quiet",
            ]
        )
        == 1
    )


def test_labels_are_an_ome_zarr_label_pyramid_that_ome_zarr_py_reads(slide_path, tmp_path):
    """Opened with ome-zarr-py (not our code): a label image, its levels and pixel size."""
    import zarr

    ome_io = pytest.importorskip("ome_zarr.io")
    ome_reader = pytest.importorskip("ome_zarr.reader")
    out = tmp_path / "ome"
    args = ["slide", str(slide_path), "--model", "blob", "--out", str(out), "--tile", str(TILE)]
    assert main([*args, "--workers", "0", "--quiet", "--level", "1"]) == 0
    rep = json.loads((out / "report.json").read_text())
    store = out / "labels.zarr"
    location = ome_io.parse_url(str(store))
    assert location is not None, "not an OME-Zarr store"
    nodes = list(ome_reader.Reader(location)())
    node = nodes[0]
    assert any(isinstance(spec, ome_reader.Label) for spec in node.specs)
    level0 = np.asarray(node.data[0])
    ours = zarr.open_array(str(store / "0"), mode="r")[:]
    np.testing.assert_array_equal(level0, ours)
    assert list(level0.shape) == rep["shape"] and level0.max() > 0
    assert len(node.data) >= 2
    np.testing.assert_array_equal(np.asarray(node.data[1]), ours[::2, ::2])
    ms = node.metadata
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    scales = [t[0]["scale"] for t in ms["coordinateTransformations"]]
    assert scales[0] == pytest.approx([rep["mpp"]] * 2)  # level 1 of the slide: 1 µm/px
    assert scales[1] == pytest.approx([2 * rep["mpp"]] * 2)


def test_cli_slide_refuses_a_template_set_without_detector_only(slide_path, tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "t.json"
    bad.write_text("{}")
    args = ["slide", str(slide_path), "--model", str(bad), "--out", str(out), "--workers", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "mcf fit" in err and "--detector-only" in err and "Traceback" not in err
    assert not out.exists()  # refused before anything is written
    # asked for: the template set is read (and here refused for its own content)
    assert main([*args, "--detector-only", "--quiet"]) == 1
    assert "mcf fit" not in capsys.readouterr().err


def test_load_predictor_picks_the_adapter(tmp_path):
    from mcf_fast.errors import FormatError, InputError
    from mcf_fast.slide.predictors import PredictorSpec, load_predictor

    assert isinstance(load_predictor("blob"), BlobPredictor)
    assert isinstance(PredictorSpec("blob", {"norm": 0.2}).build(), BlobPredictor)
    assert PredictorSpec("blob", {"norm": 0.2}).build().norm == 0.2
    with pytest.raises(InputError, match="no such model"):
        load_predictor(tmp_path / "missing.json")
    junk = tmp_path / "junk.mcf"
    junk.write_bytes(b"not a bundle")
    with pytest.raises(FormatError):
        load_predictor(junk)


@pytest.mark.data
def test_detector_adapter_travels_to_workers(monuseg, tmp_path):
    """Template set -> DetectorPredictor; it pickles (rebuilt on arrival) and predicts alike."""
    import pickle

    from test_tiling import _mosaic, _point_templates

    from mcf_fast.slide.predictors import DetectorPredictor, load_predictor

    path = tmp_path / "t.json"
    _point_templates(monuseg).save(path)
    p = load_predictor(path)
    assert isinstance(p, DetectorPredictor) and p.halo > p.window > 0
    img = _mosaic(monuseg, 256)
    p = p.calibrated(p.calibration([img]))
    clone = pickle.loads(pickle.dumps(p))
    a, b = p.predict_tile(img), clone.predict_tile(img)
    assert len(a[1]) > 5
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_model_adapter_pairs_labels_and_needs_a_path_for_workers():
    import pickle
    from types import SimpleNamespace

    from mcf_fast.errors import InputError
    from mcf_fast.slide.predictors import ModelPredictor

    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:6] = 1
    lab[10:15, 10:15] = 2

    class FakeModel:
        detector = None

        def predict(self, rgb):
            return SimpleNamespace(labels=lab, centres=np.array([[3.5, 3.5], [12.0, 12.0]]))

    p = ModelPredictor(FakeModel())
    labels, centres = p.predict_tile(np.zeros((20, 20, 3), np.uint8))
    np.testing.assert_array_equal(labels, lab)
    np.testing.assert_array_equal(centres, [[3.5, 3.5], [12.0, 12.0]])
    assert p.halo > 64
    with pytest.raises(InputError, match="bundle path"):
        pickle.dumps(p)


def test_cli_slide_through_openslide_matches_tiffslide(slide_image, tmp_path):
    pytest.importorskip("openslide", reason="the [openslide] extra is not installed")
    from test_slides import write_page_pyramid

    path = tmp_path / "pages.tif"
    write_page_pyramid(path, slide_image, mpp=0.5, levels=2)
    csv = {}
    for backend in ("tiffslide", "openslide"):
        out = tmp_path / backend
        args = [
            "slide",
            str(path),
            "--model",
            "blob",
            "--out",
            str(out),
            "--tile",
            str(TILE),
            "--workers",
            "0",
            "--quiet",
            "--backend",
            backend,
        ]
        assert main(args) == 0
        rep = json.loads((out / "report.json").read_text())
        assert rep["mpp"] == pytest.approx(0.5) and rep["complete"]
        csv[backend] = (out / "nuclei.csv").read_text()
    assert csv["openslide"] == csv["tiffslide"] and csv["tiffslide"].count("\n") > 10


# ------------------------------------------------------------------ model bundles, calibrated
class NoDetector:
    """A detector stand-in that must never run (h-maxima seeds need no detector)."""

    window = 24
    max_filter_size = 25

    def __init__(self, templates, config=None, *, device="cpu"):
        self.templates, self.config = templates, config

    @classmethod
    def load(cls, templates, bank_path, config=None, **_):
        return cls(templates, config)

    def detect(self, image):
        raise AssertionError("the detector ran")


@pytest.fixture(scope="module")
def tiny_fit():
    """A tiny model fitted on stain-normalised disks: (config, templates, net, stain, image)."""
    import torch
    from seg_fakes import PURPLE, ColourDetector, disk_image, grid_centres, make_templates

    from mcf_fast.config import MCFConfig, SegmentationConfig
    from mcf_fast.framework.fit import MCF
    from mcf_fast.ops.stain import StainNormalizer

    centres = grid_centres(96, 96, 20, 10)
    img, _ = disk_image(96, 96, centres, 6, [PURPLE] * len(centres), seed=3)
    stain = StainNormalizer("macenko").fit(img)
    seg = SegmentationConfig(
        width=8,
        depth=2,
        crop_size=32,
        batch_size=4,
        steps=15,
        self_steps=0,
        lr=1e-2,
        max_rounds=1,
        min_nucleus_area=10,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = MCF(MCFConfig(segmentation=seg), detector_cls=ColourDetector).fit(
            [img], make_templates(img, [(10, 10)]), stain=stain, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    return model.config, model.templates, model.net, stain, img


def _model(tiny_fit, detector=None, *, seeds="hmaxima", net=True):
    from dataclasses import replace as dc_replace

    from mcf_fast.framework.model import MCFModel

    config, templates, trained, stain, _ = tiny_fit
    config = dc_replace(config, segmentation=dc_replace(config.segmentation, instance_seeds=seeds))
    det = detector if detector is not None else NoDetector(templates, config.detection)
    return MCFModel(config, templates, det, trained if net else None, stain=stain)


def _tinted(img):
    """The fitted image, bluer and darker on its right half: stain estimates differ per tile."""
    out = img.astype(np.float64)
    out[:, 48:] *= np.array([0.8, 0.85, 1.0])
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_calibrated_model_with_hmaxima_seeds_never_runs_the_detector(tiny_fit):
    from mcf_fast.ops.instances import instance_labels
    from mcf_fast.segmentation.train import predict_proba
    from mcf_fast.slide.predictors import ModelPredictor

    model = _model(tiny_fit)
    seg = model.config.segmentation
    img = _tinted(tiny_fit[4])
    p = ModelPredictor(model, halo=40)
    state = p.calibration([img[:, :64], img[:, 32:]])
    assert set(state) == {"instance_seeds", "stain_source"}  # no detector calibration
    state = json.loads(json.dumps(state))
    cal = p.calibrated(state)
    assert cal.halo == 40 and "calibrated" in repr(cal)
    tile = img[:, 20:90]
    labels, centres = cal.predict_tile(tile)
    norm = model.stain.transform(tile, source=state["stain_source"])
    prob = predict_proba(
        model.net, norm, device="cpu", tile=seg.tile, flips=seg.tta_flips, precision=seg.precision
    )
    expected = instance_labels(
        prob,
        threshold=seg.threshold,
        min_area=seg.min_nucleus_area,
        seeds=seg.instance_seeds,
        h=seg.instance_h,
    )
    assert expected.max() >= 5
    np.testing.assert_array_equal(labels, expected)
    assert len(centres) == expected.max()
    # uncalibrated, the adapter is MCFModel.predict, which with h-maxima seeds does not run
    # the detector either
    plain, _ = p.predict_tile(tile)
    assert plain.shape == tile.shape[:2] and plain.max() >= 1
    # overlapping tiles see the same normalised pixels
    a = cal._normalise(img[:, :64], state["stain_source"])
    b = cal._normalise(img[:, 32:], state["stain_source"])
    np.testing.assert_array_equal(a[:, 32:], b[:, :32])


def test_calibrated_model_with_centre_seeds_uses_the_calibrated_detector(tiny_fit):
    from mcf_fast.config import DetectionConfig
    from mcf_fast.detection.detector import Detector
    from mcf_fast.ops.instances import instance_labels
    from mcf_fast.segmentation.train import predict_proba
    from mcf_fast.slide.predictors import DetectorPredictor, ModelPredictor

    templates, img = tiny_fit[1], _tinted(tiny_fit[4])
    det = Detector(
        templates,
        DetectionConfig(n_scales=3, scale_range=(0.9, 1.1), min_score=0.5, peak_distance=4),
    )
    model = _model(tiny_fit, det, seeds="centres")
    seg = model.config.segmentation
    p = ModelPredictor(model)
    assert p.halo > 64
    state = json.loads(json.dumps(p.calibration([img[:, :64], img[:, 32:]])))
    assert set(state) == {"instance_seeds", "stain_source", "detector"}
    assert state["detector"]["response_range"][1] > state["detector"]["response_range"][0]
    labels, _ = p.calibrated(state).predict_tile(img)
    norm = model.stain.transform(img, source=state["stain_source"])
    centres, _ = DetectorPredictor(det, state=state["detector"]).detect(norm)
    assert len(centres) >= 5
    prob = predict_proba(
        model.net, norm, device="cpu", tile=seg.tile, flips=seg.tta_flips, precision=seg.precision
    )
    expected = instance_labels(
        prob,
        centres=centres,
        threshold=seg.threshold,
        min_area=seg.min_nucleus_area,
        seeds="centres",
    )
    np.testing.assert_array_equal(labels, expected)
    # without a network the labels come from the detector's calibrated pseudo mask
    bare = ModelPredictor(_model(tiny_fit, det, seeds="hmaxima", net=False))
    bstate = bare.calibration([img])
    assert "detector" in bstate
    blabels, bcentres = bare.calibrated(bstate).predict_tile(img)
    assert blabels.max() == len(bcentres) > 0


def test_model_calibration_errors(tiny_fit):
    from mcf_fast.errors import InputError
    from mcf_fast.slide.predictors import ModelPredictor

    p = ModelPredictor(_model(tiny_fit), halo=40)
    with pytest.raises(InputError, match="samples"):
        p.calibration([])
    with pytest.raises(InputError, match="state: expected a dict"):
        p.calibrated([1, 2])
    with pytest.raises(InputError, match="instance_seeds 'centres'.*'hmaxima'"):
        p.calibrated({"instance_seeds": "centres"})
    with pytest.raises(InputError, match=r"state\['stain_source'\]"):
        p.calibrated({"instance_seeds": "hmaxima", "stain_source": [1]})
    with pytest.raises(InputError, match="source"):
        p.calibrated({"instance_seeds": "hmaxima", "stain_source": {"x": 1}}).predict_tile(
            tiny_fit[4]
        )
    # a blank sample: no slide-level stain source, tiles are normalised one by one
    state = p.calibration([np.full((32, 32, 3), 255, np.uint8)])
    assert state == {"instance_seeds": "hmaxima"}


@pytest.fixture
def tiny_bundle(tiny_fit, tmp_path):
    """The tiny model saved as a bundle; the tests here load it with a NoDetector."""
    return _model(tiny_fit).save(tmp_path / "tiny.mcf")


def test_calibrated_bundle_travels_to_workers_with_its_state(tiny_fit, tiny_bundle):
    import pickle

    from mcf_fast.slide.predictors import ModelPredictor, PredictorSpec, load_predictor

    img = _tinted(tiny_fit[4])
    p = load_predictor(tiny_bundle, detector_cls=NoDetector)
    assert isinstance(p, ModelPredictor) and p.source == str(tiny_bundle)
    state = json.loads(json.dumps(p.calibration([img[:, :64], img[:, 32:]])))
    cal = p.calibrated(state)
    clone = pickle.loads(pickle.dumps(cal))
    assert clone.state == state and clone.halo == cal.halo
    built = PredictorSpec(str(tiny_bundle), state, detector_cls=NoDetector).build()
    assert built.state == state
    a = cal.predict_tile(img)
    for other in (clone, built):
        b = other.predict_tile(img)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_slide_run_calibrates_a_bundle_once_for_every_tile(tiny_fit, tiny_bundle, tmp_path):
    import zarr

    from mcf_fast.slide.predictors import ModelPredictor

    img = _tinted(np.concatenate([tiny_fit[4], tiny_fit[4]], axis=1))  # 96 x 192
    out = tmp_path / "run"
    report = run_slide(
        img,
        tiny_bundle,
        out,
        tile=48,
        workers=0,
        progress=False,
        skip_background=False,
        n_calibration=3,
        detector_cls=NoDetector,
    )
    assert report.complete and report.n_processed == 8 and report.n_nuclei >= 20
    run = json.loads((out / "run.json").read_text())
    assert set(run["calibration"]) == {"instance_seeds", "stain_source"}
    assert report.calibration["instance_seeds"] == "hmaxima"
    # the run's tiles equal the in-memory tiling with the calibration from run.json
    pred = ModelPredictor(_model(tiny_fit), halo=report.margin).calibrated(run["calibration"])
    ref, ids, _ = predict_tiled(img, pred, tile=48)
    np.testing.assert_array_equal(zarr.open_array(str(out / "labels.zarr" / "0"), mode="r")[:], ref)
    assert report.n_nuclei == len(ids)


def test_bundle_slide_tables_parquet_gzip_and_the_id_formula(tiny_fit, tiny_bundle, tmp_path):
    """Every CSV row satisfies the documented id formula (model centres are centroids, not
    whole pixels); Parquet holds the CSV's rows; the gzip GeoJSON the same features."""
    import gzip

    pq = pytest.importorskip("pyarrow.parquet")
    img = _tinted(np.concatenate([tiny_fit[4], tiny_fit[4]], axis=1))  # 96 x 192
    out = tmp_path / "run"
    report = run_slide(
        img,
        tiny_bundle,
        out,
        tile=48,
        workers=0,
        progress=False,
        skip_background=False,
        parquet=True,
        gzip_geojson=True,
        detector_cls=NoDetector,
    )
    assert report.complete and report.n_nuclei >= 20
    with open(out / "nuclei.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = np.array([int(r["id"]) for r in rows])
    y = np.array([float(r["y"]) for r in rows])
    x = np.array([float(r["x"]) for r in rows])
    assert np.any((y % 1 != 0.5) | (x % 1 != 0.5))  # centroids, not pixel centres
    np.testing.assert_array_equal(ids, np.floor(y) * img.shape[1] + np.floor(x) + 1)
    prob = np.array([float(r["mean_probability"]) for r in rows])
    assert np.all((prob > 0.3) & (prob <= 1))
    table = pq.read_table(out / "nuclei.parquet")
    assert table.column_names == list(CSV_COLUMNS)
    np.testing.assert_array_equal(table.column("id").to_numpy(), ids)
    np.testing.assert_allclose(table.column("y").to_numpy(), y, rtol=1e-5)
    assert not (out / "nuclei.geojson").exists()
    with gzip.open(out / "nuclei.geojson.gz", "rt") as fh:
        doc = json.load(fh)
    assert [f["properties"]["mcf_id"] for f in doc["features"]] == ids.tolist()


def test_calibrated_bundle_on_a_local_cluster_matches_the_in_process_run(
    client, tiny_fit, tiny_bundle, tmp_path
):
    import zarr

    img = _tinted(np.concatenate([tiny_fit[4], tiny_fit[4]], axis=1))
    kw = dict(tile=48, progress=False, skip_background=False, n_calibration=3)
    here = run_slide(img, tiny_bundle, tmp_path / "here", workers=0, detector_cls=NoDetector, **kw)
    there = run_slide(img, tiny_bundle, tmp_path / "there", client=client, **kw)
    assert there.complete and there.workers == 2, there.failed
    assert there.n_nuclei == here.n_nuclei > 0
    a, b = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("here", "there"))
    assert a["calibration"] == b["calibration"] and "stain_source" in a["calibration"]
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "here" / "labels.zarr" / "0"), mode="r")[:],
        zarr.open_array(str(tmp_path / "there" / "labels.zarr" / "0"), mode="r")[:],
    )


def _match(a: np.ndarray, b: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """For each centre of `a`, the index of the nearest centre of `b` within `tol` (else -1),
    and its distance (inf if none)."""
    from scipy.spatial import cKDTree

    d, j = cKDTree(b).query(a, distance_upper_bound=tol)
    return np.where(np.isfinite(d), j, -1), d


def test_bundle_slide_run_equals_the_whole_image(tiny_fit, tiny_bundle, tmp_path):
    """A calibrated bundle on 4 tiles of 512 gives the nuclei of the whole 1024 x 1024 image.

    The labels come from the U-Net probability and h-maxima seeds.  Tiles agree with the
    whole image because the halo covers the U-Net's reach plus the detector's (which holds
    the nucleus extent) and is a multiple of ``2 ** depth``, so every read region starts on
    the whole image's pooling grid.  The one case that may differ by construction: a
    connected foreground component reaching more than ``halo - net.reach`` (73 px here) out
    of the core that owns one of its nuclei, whose distance transform, and so its split, the
    tile sees cut; none on this image.  The slide's own edge is no border case (the tile and
    the whole image see the same edge).  The bounds below leave room only for float rounding
    of a probability on the threshold (at most 2 nuclei, 0.01 % of the pixels).  Measured:
    933 nuclei, all matched, centres equal up to the CSV's 6 digits (0.005 px), every IoU
    1.0, label maps equal pixel for pixel (270k nucleus pixels).  With the earlier halo of
    134 px (2 px off the depth-2 net's grid of 4) 386 of 933 nuclei had IoU < 0.99 (worst
    0.92) and 5 centres had no partner within 1 px.
    """
    import zarr

    from mcf_fast.io.tiling import id_to_yx
    from mcf_fast.slide.predictors import ModelPredictor
    from mcf_fast.slide.run import _calibration_tiles

    img = synthetic_tissue((1024, 1024), n=1400, seed=5)
    out = tmp_path / "run"
    report = run_slide(
        img,
        tiny_bundle,
        out,
        tile=512,
        workers=0,
        progress=False,
        n_calibration=2,
        detector_cls=NoDetector,
    )
    assert report.complete and report.n_tissue == report.n_processed == 4
    model = _model(tiny_fit)
    # the largest template side (25) + the net's reach (23), on the grid of 4
    assert report.margin == ModelPredictor(model).halo == 48
    # the calibration as _run makes it: the read regions of the sample tissue tiles
    samples = [
        img[t.read[0] : t.read[2], t.read[1] : t.read[3]]
        for t in _calibration_tiles(tile_grid(img.shape[:2], tile=512, margin=48), 2)
    ]
    state = json.loads(json.dumps(ModelPredictor(model).calibration(samples)))
    run = json.loads((out / "run.json").read_text())
    assert run["calibration"] == state and "stain_source" in state
    whole, centres = ModelPredictor(model).calibrated(state).predict_tile(img)

    tiled = zarr.open_array(str(out / "labels.zarr" / "0"), mode="r")[:]
    rows = np.loadtxt(out / "nuclei.csv", delimiter=",", skiprows=1, usecols=(0, 2, 3), ndmin=2)
    ids = rows[:, 0].astype(np.int64)
    tiled_centres = rows[:, 1:] - 0.5  # the CSV gives pixel-corner coordinates
    assert len(centres) >= 500 and len(ids) == len(centres)
    # the documented formula: floor of the CSV's pixel-corner coordinates
    assert np.array_equal(id_to_yx(ids, img.shape[1]), np.floor(rows[:, 1:]).astype(np.int64))
    j, dist = _match(centres, tiled_centres, 1.0)
    back, _ = _match(tiled_centres, centres, 1.0)
    assert (j >= 0).all() and (back >= 0).all() and len(np.unique(j)) == len(j)
    assert (dist > 0.01).sum() <= 2  # else equal up to the CSV's 6 significant digits
    # each nucleus' mask: whole label k against the run's id of its matched centre
    n = len(centres)
    lut = np.zeros(n + 1, np.int64)
    lut[1:] = ids[j]
    stored, area_t = np.unique(tiled[tiled > 0], return_counts=True)
    assert np.array_equal(stored, np.sort(ids))
    area_t = area_t[np.searchsorted(stored, ids[j])]
    area_w = np.bincount(whole.ravel(), minlength=n + 1)[1:]
    inter = np.bincount(whole[(whole > 0) & (lut[whole] == tiled)], minlength=n + 1)[1:]
    iou = inter / (area_w + area_t - inter)
    assert iou.min() >= 0.99 and (iou < 1.0).sum() <= 2, np.sort(iou)[:5]
    # and the maps: the whole image's labels under the run's ids equal the stitched store
    assert (lut[whole] != tiled).sum() <= 0.0001 * (whole > 0).sum()


def test_model_halo_covers_the_unet_reach_on_its_pooling_grid(tiny_fit, tmp_path, caplog):
    from mcf_fast.slide.predictors import ModelPredictor

    model = _model(tiny_fit)
    assert model.net.multiple == 4 and model.net.reach == 23
    p = ModelPredictor(model)
    assert p.align == 4 and p.halo == 48  # the largest template 25 + the net's 23
    centres = dataclasses.replace(
        model.config,
        segmentation=dataclasses.replace(model.config.segmentation, instance_seeds="centres"),
    )
    model_c = type(model)(centres, model.templates, model.detector, model.net)
    assert ModelPredictor(model_c).halo == 96  # with centre seeds: the detector's 70 + 23
    assert ModelPredictor(model, halo=134).halo == 136
    bare = ModelPredictor(_model(tiny_fit, net=False))
    assert bare.align == 1 and bare.halo == 70 + 64
    # a larger margin is rounded up to the grid too; a tile off the grid is warned about
    img = _tinted(tiny_fit[4])
    kw = dict(workers=0, progress=False, skip_background=False, n_calibration=1)
    assert run_slide(img, p, tmp_path / "a", tile=96, margin=97, **kw).margin == 100
    assert "pooling grid" not in caplog.text
    assert run_slide(img, p, tmp_path / "b", tile=98, **kw).margin == 48
    assert "tile 98 is not a multiple of 4 (the model's pooling grid)" in caplog.text


def test_slide_at_the_model_scale_maps_results_to_level_0(slide_path, slide_image, tmp_path):
    from mcf_fast.cli.slide import _to_model_scale
    from mcf_fast.io.slides import ScaledReader, open_slide
    from mcf_fast.io.templates import TemplateSet

    reader = open_slide(slide_path)  # 0.5 µm/px
    tset = TemplateSet.from_points(slide_image, [(500, 500)], size=16, image_name="s")
    tset.meta["mpp"] = 1.0
    tpath = tset.save(tmp_path / "t.json")
    scaled = _to_model_scale(reader, str(tpath))
    assert isinstance(scaled, ScaledReader) and scaled.scale == 0.5
    assert scaled.shape == (512, 640) and scaled.mpp == 1.0 and scaled.downsample == 2.0
    assert scaled.path == reader.path  # the resume identity still sees the file
    tset.meta.pop("mpp")
    assert _to_model_scale(reader, str(tset.save(tmp_path / "u.json"))) is reader
    out = tmp_path / "run"
    report = run_slide(scaled, "blob", out, tile=TILE, workers=0, progress=False)
    assert report.complete and report.n_nuclei > 50 and report.shape == (512, 640)
    rows = np.loadtxt(out / "nuclei.csv", delimiter=",", skiprows=1, usecols=(0, 2, 3), ndmin=2)
    ys, xs = rows[:, 1], rows[:, 2]
    # level-0 coordinates: the tissue lies in [264, 1016) of the 1024 x 1280 slide
    assert ys.min() > 240 and ys.max() < 1040 and xs.min() > 240 and xs.max() < 1040
    ids = rows[:, 0].astype(np.int64)
    np.testing.assert_array_equal(ids, np.floor(ys / 2) * 640 + np.floor(xs / 2) + 1)
