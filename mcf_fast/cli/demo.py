"""``mcf demo``: the whole job on scikit-image's immunohistochemistry() image.

Templates from packaged points, detection, a short fit of the full framework, prediction,
and an HTML report (overlay and nucleus table), all in one output folder.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click
import numpy as np

from mcf_fast.cli.common import check_device, device_option, quiet_option

__all__ = ["DEMO_NAME", "demo", "demo_config"]

#: the demo image's name in every output file
DEMO_NAME = "immunohistochemistry"

#: table columns shown in the report
REPORT_COLUMNS = (
    "id",
    "y",
    "x",
    "area_px",
    "perimeter_px",
    "eccentricity",
    "solidity",
    "mean_od_h",
    "mean_od_e",
    "mean_probability",
)


def demo_config(color_names: str | None = None, *, steps: int = 150, device: str = "cpu"):
    """The demo's :class:`~mcf_fast.config.MCFConfig`: ``quick`` shortened to one round.

    Detection keeps the demo's stricter centre threshold (the image is IHC, not H&E); the
    U-Net trains ``steps`` steps of 4 crops of 128 px, which with the detection and the
    prediction takes about a minute on 2 CPU cores.
    """
    from mcf_fast.cli.detect import DEMO_SETTINGS
    from mcf_fast.presets import PRESETS

    quick = PRESETS["quick"]
    fields = dict(DEMO_SETTINGS)
    if color_names is not None:
        fields["color_names"] = color_names
    det = dataclasses.replace(quick.detection, **fields)
    seg = dataclasses.replace(
        quick.segmentation, steps=steps, batch_size=4, max_rounds=1, device=device
    )
    return dataclasses.replace(quick, detection=det, segmentation=seg)


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder (created if needed).",
)
@click.option(
    "--color-names",
    default=None,
    help="Colour-name table: 'builtin' (default) or a path to w2c.mat / w2c.npy.",
)
@device_option("cpu, or cuda[:N].")
@click.option(
    "--steps",
    default=150,
    show_default=True,
    type=click.IntRange(min=1),
    help="U-Net training steps of the short fit.",
)
@click.option("--detect-only", is_flag=True, help="Stop after detection (a few seconds).")
@quiet_option(bars=True)
def demo(
    out_dir: str,
    color_names: str | None,
    device: str,
    steps: int,
    detect_only: bool,
    quiet: bool,
) -> None:
    """Run the whole job on scikit-image's immunohistochemistry() example image.

    1. templates.json from points packaged with mcf_fast (mcf_fast/data/ihc_templates.csv);
    2. detection: immunohistochemistry.csv, _response.png, _pseudo.png, _overlay.png;
    3. a short fit of the full framework on the image itself: model.mcf;
    4. prediction with it: predicted/immunohistochemistry.png (labels), .csv, .geojson,
       _overlay.png;
    5. report.html: the overlays and the nucleus table in one file.

    The image is IHC rather than H&E, so detection keeps only centres with a normalised
    response of at least 0.5 (the H&E default is 0.3).
    """
    from skimage import data

    from mcf_fast.cli.detect import demo_points, overlay, write_outputs
    from mcf_fast.cli.seg import prediction_table, write_prediction
    from mcf_fast.detection.detector import Detector
    from mcf_fast.io.report import html_report
    from mcf_fast.io.templates import TemplateSet

    if device != "cpu":
        check_device(device)
    t0 = time.perf_counter()
    image = np.ascontiguousarray(data.immunohistochemistry())
    pts, sizes = demo_points()
    tset = TemplateSet.from_points(image, pts, size=sizes.tolist(), image_name=DEMO_NAME)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tset.save(out / "templates.json")
    config = demo_config(color_names, steps=steps, device=device)
    result = Detector(tset, config.detection, device=device).detect(image)
    write_outputs(out, DEMO_NAME, image, result)
    click.echo(f"detection: {len(result.centres)} nuclei -> {out}", err=True)
    summary = [
        ("Image", f"scikit-image immunohistochemistry(), {image.shape[1]} x {image.shape[0]} px"),
        ("Templates", f"{len(tset)} (templates.json)"),
        ("Detected centres", str(len(result.centres))),
    ]
    pictures = [("Detection: centres and pseudo-mask outlines", overlay(image, result))]
    table = None
    if not detect_only:
        import torch

        from mcf_fast.framework.fit import MCF

        threads = torch.get_num_threads()
        t_fit = time.perf_counter()
        model = MCF(config).fit([image], tset, names=[DEMO_NAME], progress=not quiet)
        fit_s = time.perf_counter() - t_fit
        model.save(out / "model.mcf")
        pred = model.predict(image)
        write_prediction(out / "predicted", DEMO_NAME, image, pred)
        table = prediction_table(image, pred)
        labels = np.asarray(pred.labels)
        seg_overlay = _outlines(image, labels)
        summary += [
            ("Fit", f"1 round, {steps} U-Net steps, {fit_s:.0f} s ({threads} torch threads)"),
            ("Segmented nuclei", f"{len(table['id'])} (predicted/{DEMO_NAME}.csv, .geojson)"),
            ("Nucleus pixels", f"{100 * float((labels > 0).mean()):.1f} %"),
        ]
        pictures.insert(0, ("Segmentation: instance outlines", seg_overlay))
        click.echo(
            f"fit and prediction: {len(table['id'])} nuclei segmented -> {out}/predicted",
            err=True,
        )
    summary.append(("Total time", f"{time.perf_counter() - t0:.0f} s"))
    report = html_report(
        out / "report.html",
        title="mcf_fast demo",
        summary=summary,
        pictures=pictures,
        table=table,
        columns=REPORT_COLUMNS if table is not None else (),
    )
    click.echo(f"report: {report}", err=True)
    sys.stderr.flush()


def _outlines(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Instance outlines (green) on the image."""
    from skimage.segmentation import find_boundaries

    out = np.array(image, np.uint8, copy=True)
    out[find_boundaries(labels, mode="inner")] = (0, 255, 0)
    return out
