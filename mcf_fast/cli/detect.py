"""``mcf detect``: run the correlation-filter detector and write its outputs.

Per image ``<name>``, in the output folder (each file written atomically):

- ``<name>.csv``: one row per nucleus, header ``y,x,score`` (score = normalised response;
  y, x in pixel corners: the centre of pixel (r, c) is (r + 0.5, c + 0.5));
- ``<name>_response.png``: the fused, normalised response S~ as 8-bit gray;
- ``<name>_pseudo.png``: the pseudo mask, 0 unknown, 128 background, 255 nucleus;
- ``<name>_overlay.png``: the image with the centres as green dots and the nucleus
  pseudo-label outlined in yellow.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import click
import numpy as np

from mcf_fast.cli.common import device_option, quiet_option

#: packaged template points for scikit-image's immunohistochemistry() example (y, x, size)
DEMO_POINTS = "ihc_templates.csv"
#: the demo image is IHC (DAB + hematoxylin), not H&E: the defaults were tuned on H&E, so the
#: demo keeps only stronger responses and no colour-only nucleus labels
DEMO_SETTINGS = {"min_score": 0.5, "pseudo_fg_free": 1.0}


def write_outputs(out_dir: Path, name: str, image: np.ndarray, result) -> list[Path]:
    """Write the four per-image outputs of a :class:`~mcf_fast.detection.detector.Detection`."""
    from mcf_fast.io.images import atomic_path, write_image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    csv_path = out_dir / f"{name}.csv"
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["y", "x", "score"])
            for (y, x), s in zip(result.centres.tolist(), result.scores.tolist(), strict=True):
                w.writerow([y + 0.5, x + 0.5, f"{s:.4f}"])  # pixel corners
    paths.append(csv_path)
    resp = np.clip(np.rint(result.response * 255.0), 0, 255).astype(np.uint8)
    paths.append(write_image(out_dir / f"{name}_response.png", resp))
    pseudo = np.choose(
        result.pseudo_mask.astype(np.int64) + 1, [np.uint8(0), np.uint8(128), np.uint8(255)]
    ).astype(np.uint8)
    paths.append(write_image(out_dir / f"{name}_pseudo.png", pseudo))
    paths.append(write_image(out_dir / f"{name}_overlay.png", overlay(image, result)))
    return paths


def overlay(image: np.ndarray, result) -> np.ndarray:
    """The image with nucleus pseudo-labels outlined (yellow) and centres dotted (green)."""
    from scipy import ndimage as ndi

    out = np.array(image, dtype=np.uint8, copy=True)
    nuc = result.pseudo_mask == 1
    edge = nuc & ~ndi.binary_erosion(nuc)
    out[edge] = (255, 230, 0)
    h, w = out.shape[:2]
    for y, x in result.centres.tolist():
        y0, y1, x0, x1 = max(0, y - 2), min(h, y + 3), max(0, x - 2), min(w, x + 3)
        out[y0:y1, x0:x1] = (0, 0, 0)
        out[max(0, y - 1) : min(h, y + 2), max(0, x - 1) : min(w, x + 2)] = (0, 255, 0)
    return out


def _config(color_names: str | None, **fields):
    from mcf_fast.config import DetectionConfig

    if color_names is not None:
        fields["color_names"] = color_names
    return DetectionConfig(**fields)


_COLOR_HELP = (
    "Colour-name table: 'builtin' (default, the project's approximation) or a "
    "path to the original w2c.mat / w2c.npy."
)
_DEVICE_HELP = "Where correlation and fusion run: cpu, or cuda[:N] (needs torch with CUDA)."


@click.command("detect")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--templates",
    "templates_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Template-set JSON (mcf templates select / from-points).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder (created if needed).",
)
@click.option("--color-names", default=None, help=_COLOR_HELP)
@device_option(_DEVICE_HELP)
@click.option(
    "--resume",
    is_flag=True,
    help="Skip images whose outputs in --out are complete, from the same input and settings.",
)
@quiet_option()
def detect(
    templates_path: str,
    inputs: tuple[str, ...],
    out_dir: str,
    color_names: str | None,
    device: str,
    resume: bool,
    quiet: bool,
) -> None:
    """Detect nuclei in IMAGE_OR_DIR... with the filter bank of a template set.

    Writes <name>.csv (y,x,score), <name>_response.png, <name>_pseudo.png (0 unknown,
    128 background, 255 nucleus) and <name>_overlay.png per image into --out.
    Grayscale, RGBA, 16-bit and float images are converted (see mcf_fast.io.images).
    Each image's four files appear together once all are written.  An image that cannot
    be read is reported and the others are processed; the command then exits with
    status 1, naming every bad file.
    """
    from mcf_fast.cli.common import collect_images, raise_failures, run_batch
    from mcf_fast.detection.detector import Detector
    from mcf_fast.io.images import read_image
    from mcf_fast.io.outputs import OutputFolder, file_digest
    from mcf_fast.io.templates import TemplateSet

    files = collect_images(inputs)
    settings = {"command": "detect", "templates": file_digest(templates_path)}
    settings["color_names"] = color_names or "builtin"
    with OutputFolder(out_dir, settings=settings) as out:
        det = Detector(TemplateSet.load(templates_path), _config(color_names), device=device)
        total, skipped = 0, 0

        def one(f: Path) -> None:
            nonlocal total, skipped
            if resume and out.is_done(f.stem, f):
                skipped += 1
                return
            image = read_image(f)
            result = det.detect(image)
            out.write_set(f.stem, f, lambda d: write_outputs(d, f.stem, image, result))
            total += len(result.centres)

        failed = run_batch(files, one, desc="detect", quiet=quiet)
    done = len(files) - len(failed)
    resumed = f", {skipped} already done" if skipped else ""
    click.echo(
        f"{total} nuclei in {done - skipped} image(s){resumed}; outputs in {out.path}", err=True
    )
    raise_failures(failed, len(files))


def demo_points() -> tuple[np.ndarray, np.ndarray]:
    """The packaged template points (N, 2) and sizes (N,) for the demo image."""
    text = resources.files("mcf_fast").joinpath("data", DEMO_POINTS).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    pts = np.array([[float(r["y"]), float(r["x"])] for r in rows])
    sizes = np.array([int(r["size"]) for r in rows])
    return pts, sizes
