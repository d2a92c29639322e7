"""``mcf demo``: the whole job on the embedded image, down to the HTML report."""

from __future__ import annotations

import base64
import csv
import json
import re

import numpy as np

from mcf_fast.cli import main
from mcf_fast.framework.model import MCFModel
from mcf_fast.io.images import read_labels


def test_demo_runs_the_whole_job(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "10", "--quiet"]) == 0, (
        capsys.readouterr().err
    )
    # templates and detection
    assert (out / "templates.json").is_file() and (out / "immunohistochemistry.csv").is_file()
    # the fit and its prediction
    model = MCFModel.load(out / "model.mcf")
    assert model.net is not None and len(model.history) == 1
    pred = out / "predicted"
    labels = read_labels(pred / "immunohistochemistry.png")
    assert labels.shape == (512, 512)  # ten steps: the pipeline, not the accuracy
    with open(pred / "immunohistochemistry.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(np.unique(labels[labels > 0]))
    doc = json.loads((pred / "immunohistochemistry.geojson").read_text())
    assert len(doc["features"]) == len(rows)
    # the report: one self-contained file with both overlays and the nucleus table
    page = (out / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in images)
    assert f"<h2>Nuclei ({len(rows)})</h2>" in page
    assert page.count("<tr>") == min(len(rows), 500) + 1  # header row and one per nucleus
    assert "Segmented nuclei" in page and "mean_od_h" in page
