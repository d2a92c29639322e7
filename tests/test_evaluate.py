"""The evaluation harness end to end on a tiny synthetic train/test dataset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from test_baselines import synthetic_he

from mcf_fast.cli import main
from mcf_fast.config import MCFConfig, SegmentationConfig
from mcf_fast.errors import ConfigError, DataError
from mcf_fast.evaluation.baselines import WatershedParams
from mcf_fast.evaluation.harness import run_evaluation
from mcf_fast.evaluation.paper import PAPER
from mcf_fast.evaluation.report import results_markdown
from mcf_fast.io.images import write_image
from mcf_fast.metrics import METRIC_KEYS, score_folder

HAVE_MCF = importlib.util.find_spec("mcf_fast.framework.fit") is not None
HAVE_DETECTOR = importlib.util.find_spec("mcf_fast.detection.detector") is not None
needs_mcf = pytest.mark.skipif(not HAVE_MCF, reason="mcf_fast.framework.fit not available")
needs_detector = pytest.mark.skipif(
    not HAVE_DETECTOR, reason="mcf_fast.detection.detector not available"
)


def _scene(seed: int, shape=(128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Disks on a flat background (noise-free, so the detector finds no background peaks)."""
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    for cy in range(18, shape[0] - 10, 30):
        for cx in range(18, shape[1] - 10, 30):
            centres.append((cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3)))
            radii.append(rng.uniform(6, 8.5))
    return synthetic_he(shape, centres, radii, seed=seed, noise=0.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """ROOT/{train,test}/{images,masks}: two images each, drawn disks."""
    root = tmp_path_factory.mktemp("tiny_ds")
    for split, seeds in (("train", (1, 2)), ("test", (3, 4))):
        for s in seeds:
            img, lab = _scene(s)
            write_image(root / split / "images" / f"img{s}.png", img)
            write_image(root / split / "masks" / f"img{s}.png", lab.astype(np.uint16))
    return root


TINY = MCFConfig(
    segmentation=SegmentationConfig(
        width=4, depth=2, crop_size=64, batch_size=2, steps=3, self_steps=1, max_rounds=1, tile=128
    )
)


def _aggregate_close(a: dict, b: dict) -> None:
    for k in METRIC_KEYS:
        assert a[k] == pytest.approx(b[k], abs=1e-12), k


def test_watershed_end_to_end(dataset, tmp_path):
    out = tmp_path / "eval"
    report = run_evaluation(
        dataset,
        out=out,
        n_templates=3,
        methods="watershed",
        config=TINY,
        tune_crop=None,
        progress=False,
        command="test command",
    )
    assert report["complete"] and report["n_train"] == 2 and report["n_test"] == 2
    (row,) = report["runs"]
    assert row["method"] == "watershed" and row["stain"] == "none"
    assert row["aggregate"]["Dice"] > 0.85 and row["aggregate"]["F1@6"] > 0.9
    assert row["tuning"]["n_evaluated"] > 1
    # what was written is what was scored: `mcf score` finds the same numbers
    rescored = score_folder(dataset / "test", out / "watershed")
    _aggregate_close(rescored["aggregate"], row["aggregate"])
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["complete"] and on_disk["runs"][0]["aggregate"]["Dice"] == pytest.approx(
        row["aggregate"]["Dice"]
    )
    assert (out / "templates.json").is_file()
    md = (out / "results.md").read_text()
    assert "test command" in md and "watershed baseline" in md
    assert f"{PAPER['table1']['MCF']['Dice']:.2f}" in md  # the paper's MCF beside ours
    assert "cores" in md and "UTC" in md
    assert not list(out.rglob("*.part*"))  # atomic writes left no temporary files


def test_watershed_with_stain_and_given_params(dataset, tmp_path):
    params = WatershedParams(sigma=1.0, min_distance=5)
    report = run_evaluation(
        dataset,
        out=tmp_path,
        methods=["watershed"],
        stain="none,macenko",
        config=TINY,
        watershed_params=params,
        n_templates=2,
        progress=False,
    )
    rows = report["runs"]
    assert [r["stain"] for r in rows] == ["none", "macenko"]
    assert rows[1]["pred_dir"] == "watershed-macenko"
    assert rows[0]["params"] == params.to_dict() and "tuning" not in rows[0]
    assert report["stain"]["macenko"]["reference"] == "img1"
    assert len(report["stain"]["macenko"]["stain_matrix"]) == 2
    for r in rows:
        assert r["aggregate"]["Dice"] > 0.8
        assert sorted(p.name for p in (tmp_path / r["pred_dir"]).glob("*.png")) == [
            "img3.png",
            "img4.png",
        ]


def test_cli_watershed_limit(dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "evaluate",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--method",
            "watershed",
            "--n-templates",
            "2",
            "--limit",
            "1",
            "--no-progress",
            "--preset",
            "quick",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "watershed" in printed and "Dice" in printed
    report = json.loads((out / "results.json").read_text())
    assert report["limited"] and report["n_test"] == 1
    assert report["command"].startswith("mcf evaluate --data")
    assert "--limit 1" in report["command"]
    assert len(list((out / "watershed").glob("*.png"))) == 1


def test_errors(dataset, tmp_path):
    with pytest.raises(ConfigError, match="method"):
        run_evaluation(dataset, out=tmp_path, methods="magic", config=TINY)
    with pytest.raises(ConfigError, match="stain"):
        run_evaluation(dataset, out=tmp_path, methods="watershed", stain="sepia", config=TINY)
    with pytest.raises(ConfigError, match="template count"):
        run_evaluation(
            dataset, out=tmp_path, methods="watershed", templates_sweep="2,0", config=TINY
        )
    with pytest.raises(DataError, match="test"):
        run_evaluation(dataset / "train", out=tmp_path, methods="watershed", config=TINY)
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(dataset),
                "--out",
                str(tmp_path),
                "--method",
                "nope",
                "--no-progress",
            ]
        )
        == 1
    )


def test_results_markdown_sections():
    agg = {k: 0.5 for k in METRIC_KEYS}
    row = {"aggregate": agg, "wall_s": 1.0, "pred_dir": "x", "stain": "none"}
    report = {
        "command": "mcf evaluate",
        "date": "2026-01-01 00:00 UTC",
        "machine": {"cpu": "cpu", "cpu_cores": 2, "os": "Linux", "python": "3.11"},
        "wall_s": 3.0,
        "complete": True,
        "data": "d",
        "n_train": 1,
        "n_test": 1,
        "n_templates": 10,
        "seed": 0,
        "templates_file": "templates.json",
        "preset": "quick",
        "device": "cpu",
        "stain": {},
        "runs": [
            {
                **row,
                "section": "main",
                "method": "mcf",
                "variant": "",
                "detector_centres": {
                    "P@6": 0.25,
                    "R@6": 0.25,
                    "F1@6": 0.25,
                    "P@12": 0.75,
                    "R@12": 0.75,
                    "F1@12": 0.75,
                },
            },
            {**row, "section": "ablation-detection", "method": "detector", "variant": "-CFF"},
            {**row, "section": "ablation-segmentation", "method": "mcf", "variant": "CE"},
            {**row, "section": "sweep", "method": "mcf", "variant": "n=4", "n_templates": 4},
        ],
    }
    md = results_markdown(report)
    for heading in (
        "## Main results",
        "## Ablation: detection branch",
        "## Ablation: segmentation branch",
        "## Number of templates",
    ):
        assert heading in md
    assert "| 50.00 |" in md
    assert "detector's own centres" in md and "| 75.00 |" in md
    assert "*59.92*" in md  # paper's -CFF precision
    assert "*55.73*" in md  # paper's CE Dice
    assert "*80.49*" in md  # paper's supervised U-Net Dice


@needs_mcf
@needs_detector
def test_mcf_and_supervised_end_to_end(dataset, tmp_path):
    report = run_evaluation(
        dataset,
        out=tmp_path,
        n_templates=3,
        methods="mcf",
        supervised=True,
        config=TINY,
        progress=False,
    )
    methods = [r["method"] for r in report["runs"]]
    assert methods == ["mcf", "supervised"]
    for r in report["runs"]:
        assert set(METRIC_KEYS) <= set(r["aggregate"])
        assert len(list((tmp_path / r["pred_dir"]).glob("*.png"))) == 2
    mcf_row = report["runs"][0]
    assert 0.0 <= mcf_row["detector_centres"]["F1@12"] <= 1.0
    assert len(list((tmp_path / "mcf").glob("*.csv"))) == 2  # detected centres
    rescored = score_folder(dataset / "test", tmp_path / "mcf")
    _aggregate_close(rescored["aggregate"], mcf_row["aggregate"])
    # every fit leaves a checkpoint; resuming from it gives the same model and numbers
    assert (tmp_path / "checkpoints" / "mcf").is_dir()
    again = run_evaluation(
        dataset,
        out=tmp_path,
        n_templates=3,
        methods="mcf",
        config=TINY,
        progress=False,
        resume=True,
    )
    _aggregate_close(again["runs"][0]["aggregate"], mcf_row["aggregate"])


class _FakeModel:
    def __init__(self, config, templates):
        self.config = config
        self.templates = templates

    def predict(self, image, detect=None):
        from types import SimpleNamespace

        from mcf_fast.evaluation.baselines import watershed_nuclei
        from mcf_fast.metrics import instance_centres

        labels = watershed_nuclei(image)
        c = instance_centres(labels)
        return SimpleNamespace(labels=labels, centres=c, detected_centres=c[::2])


class _FakeDetector:
    configs: list = []

    def __init__(self, templates, config):
        type(self).configs.append(config)

    def detect(self, image):
        from types import SimpleNamespace

        from mcf_fast.evaluation.baselines import watershed_nuclei
        from mcf_fast.metrics import instance_centres

        labels = watershed_nuclei(image)
        return SimpleNamespace(
            centres=instance_centres(labels), pseudo_mask=np.where(labels > 0, 1, 0).astype(np.int8)
        )


def test_ablation_and_sweep_plumbing(dataset, tmp_path, monkeypatch):
    """Each Table 3 switch reaches the config it names; the sweep selects n templates."""
    import types

    fits = []

    def fake_fit(ctx, config, templates, stain, normalizer, folder):
        fits.append((config, len(templates)))
        return _FakeModel(config, templates)

    fake_module = types.ModuleType("mcf_fast.detection.detector")
    fake_module.Detector = _FakeDetector
    monkeypatch.setitem(__import__("sys").modules, "mcf_fast.detection.detector", fake_module)
    _FakeDetector.configs = []
    report = run_evaluation(
        dataset,
        out=tmp_path,
        n_templates=3,
        methods="mcf",
        ablation=True,
        templates_sweep="1,2",
        config=TINY,
        progress=False,
        fit=fake_fit,
    )
    variants = [(r["section"], r["variant"]) for r in report["runs"]]
    assert variants == [
        ("main", ""),
        ("ablation-detection", "MCF"),
        ("ablation-detection", "-CFF"),
        ("ablation-detection", "-MFF"),
        ("ablation-detection", "H=1"),
        ("ablation-detection", "mean"),
        ("ablation-detection", "-GDBP"),
        ("ablation-segmentation", "-seg."),
        ("ablation-segmentation", "-self."),
        ("ablation-segmentation", "-syn."),
        ("ablation-segmentation", "CE"),
        ("ablation-segmentation", "+weig."),
        ("sweep", "n=1"),
        ("sweep", "n=2"),
    ]
    base_det = TINY.detection
    dets = _FakeDetector.configs
    assert dets[0] == base_det
    assert dets[1].use_cff is False and dets[2].use_mff is False and dets[3].top_h == 1
    assert dets[4].fusion == "mean" and dets[5].use_gdbp is False
    segs = [c.segmentation for c, _ in fits]
    assert segs[0].loss == "confidence" and segs[0].use_network
    assert segs[1].use_network is False and segs[2].use_self_finetune is False
    assert segs[3].use_synthetic is False and segs[4].loss == "ce"
    assert segs[5].loss == "weighted"
    assert [n for _, n in fits] == [3, 3, 3, 3, 3, 3, 1, 2]
    assert all(c.detection == base_det for c, _ in fits)
    assert report["runs"][0]["detector_centres"]["P@6"] > 0.9  # half of the centres, all right
    assert report["runs"][0]["detector_centres"]["R@6"] < 0.7
    md = (tmp_path / "results.md").read_text()
    for heading in (
        "## Ablation: detection branch",
        "## Ablation: segmentation branch",
        "## Number of templates",
    ):
        assert heading in md
    assert (tmp_path / "ablation" / "detector-no-cff").is_dir()
    assert (tmp_path / "ablation" / "mcf-plus-weig").is_dir()
    assert (tmp_path / "sweep" / "mcf-n2").is_dir()


def test_switches_already_off_and_the_main_template_count_are_not_refitted(
    dataset, tmp_path, monkeypatch
):
    import dataclasses
    import types

    fits = []

    def fake_fit(ctx, config, templates, stain, normalizer, folder):
        fits.append((config, len(templates), folder))
        return _FakeModel(config, templates)

    fake_module = types.ModuleType("mcf_fast.detection.detector")
    fake_module.Detector = _FakeDetector
    monkeypatch.setitem(__import__("sys").modules, "mcf_fast.detection.detector", fake_module)
    no_self = dataclasses.replace(
        TINY, segmentation=dataclasses.replace(TINY.segmentation, use_self_finetune=False)
    )
    report = run_evaluation(
        dataset,
        out=tmp_path,
        n_templates=2,
        methods="mcf",
        ablation=True,
        templates_sweep="1,2",
        config=no_self,
        progress=False,
        fit=fake_fit,
    )
    # main, -seg., -syn., CE, +weig., n=1: "-self." and n=2 are the main fit
    assert [f for _, _, f in fits] == [
        "mcf",
        "ablation/mcf-no-seg",
        "ablation/mcf-no-syn",
        "ablation/mcf-ce",
        "ablation/mcf-plus-weig",
        "sweep/mcf-n1",
    ]
    runs = {(r["section"], r["variant"]): r for r in report["runs"]}
    main = runs[("main", "")]
    for key in (("ablation-segmentation", "-self."), ("sweep", "n=2")):
        assert runs[key]["same_as_main"] is True
        assert runs[key]["aggregate"] == main["aggregate"]
        assert runs[key]["pred_dir"] == main["pred_dir"]
    assert "same_as_main" not in runs[("sweep", "n=1")]
    md = (tmp_path / "results.md").read_text()
    assert "= MCF row" in md and "= main run" in md


@pytest.mark.slow
@needs_mcf
@needs_detector
def test_ablation_and_sweep(dataset, tmp_path):
    report = run_evaluation(
        dataset,
        out=tmp_path,
        n_templates=2,
        methods="mcf",
        ablation=True,
        templates_sweep="1,2",
        config=TINY,
        progress=False,
    )
    by_section: dict[str, list[str]] = {}
    for r in report["runs"]:
        by_section.setdefault(r["section"], []).append(r["variant"])
    assert by_section["ablation-detection"] == ["MCF", "-CFF", "-MFF", "H=1", "mean", "-GDBP"]
    assert by_section["ablation-segmentation"] == ["-seg.", "-self.", "-syn.", "CE", "+weig."]
    assert by_section["sweep"] == ["n=1", "n=2"]
    md = (tmp_path / "results.md").read_text()
    assert "## Ablation: detection branch" in md and "## Number of templates" in md
