"""Whole-slide throughput and peak memory of ``run_slide`` with 1 and 2 dask workers.

Builds a synthetic pyramidal TIFF by tiling MoNuSeg images (written to a temporary folder,
never to the repository), then runs the slide pipeline on it (or on a square region of it)
with a LocalCluster of 1 and then 2 worker processes, and prints a Markdown table:
throughput in megapixels of tissue-tile cores per second, the peak resident memory of the
client and of the largest worker, and the scaling efficiency ``(T1 / T2) / 2``.

Usage::

    nice -n 10 python benchmarks/slide_throughput.py --size 20000 --region 8192 \\
        --model blob --workers 1 2 --json /tmp/slide_bench.json

``--model`` is ``blob`` (the classical stand-in: measures the slide machinery), a
template-set JSON (the filter-bank detector) or a model bundle.  ``--templates N`` builds an
N-template set from the MoNuSeg train split (the paper's selection protocol) into the
temporary folder and uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    env = os.environ.get("MCF_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if not (root / "monuseg").is_dir():
        sys.exit(f"MoNuSeg data not found under {root} (set MCF_DATA)")
    return root / "monuseg"


class Mosaic:
    """A deterministic slide made of MoNuSeg tiles (flipped and rotated), on white glass.

    Tissue fills an ellipse covering about 60 % of the slide; outside it is glass.
    """

    def __init__(self, size: int, images: list[np.ndarray], seed: int = 0) -> None:
        self.size = size
        self.cell = images[0].shape[0]
        rng = np.random.default_rng(seed)
        n = -(-size // self.cell) + 1  # one more: tiles reach past the last cell
        self.choice = rng.integers(0, len(images), (n, n))
        self.turn = rng.integers(0, 8, (n, n))
        self.images = images

    def _cell(self, i: int, j: int) -> np.ndarray:
        img = self.images[self.choice[i, j]]
        t = self.turn[i, j]
        img = np.rot90(img, t % 4)
        return img[:, ::-1] if t >= 4 else img

    def region(self, y0: int, x0: int, h: int, w: int, step: int = 1) -> np.ndarray:
        """Pixels ``[y0:y0+h*step:step, x0:x0+w*step:step]`` of the level-0 mosaic."""
        ys = y0 + step * np.arange(h)
        xs = x0 + step * np.arange(w)
        out = np.full((h, w, 3), 242, np.uint8)
        c = self.cell
        for i in np.unique(ys // c):
            ry = (ys // c) == i
            for j in np.unique(xs // c):
                rx = (xs // c) == j
                cell = self._cell(int(i), int(j))
                out[np.ix_(ry, rx)] = cell[np.ix_(ys[ry] % c, xs[rx] % c)]
        s = self.size
        yy = (ys[:, None] - s / 2) / (0.46 * s)
        xx = (xs[None, :] - s / 2) / (0.40 * s)
        glass = (yy**2 + xx**2) > 1
        out[glass] = (242, 242, 242)
        out[(ys[:, None] >= s) | (xs[None, :] >= s)] = 255
        return out


def write_slide(
    path: Path, mosaic: Mosaic, *, mpp: float = 0.25, tile: int = 512, levels: int = 4
) -> None:
    """A JPEG-compressed pyramidal TIFF, written tile by tile (bounded memory)."""
    import tifffile

    size = mosaic.size

    def tiles(step: int):
        n = -(-size // step)
        for y in range(0, n, tile):
            for x in range(0, n, tile):
                yield mosaic.region(y * step, x * step, tile, tile, step)

    opts = dict(
        tile=(tile, tile),
        compression="jpeg",
        compressionargs={"level": 90},
        photometric="rgb",
        dtype=np.uint8,
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            tiles(1),
            shape=(size, size, 3),
            subifds=levels - 1,
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
            **opts,
        )
        for k in range(1, levels):
            n = -(-size // 2**k)
            tw.write(tiles(2**k), shape=(n, n, 3), subfiletype=1, **opts)


class Region:
    """A square window of a slide reader, as a reader (pickled by value to the workers)."""

    def __init__(self, reader, y0: int, x0: int, side: int) -> None:
        from mcf_fast.io.slides import SlideReader

        assert isinstance(reader, SlideReader)
        self.reader, self.y0, self.x0 = reader, y0, x0
        self.shape = (min(side, reader.shape[0] - y0), min(side, reader.shape[1] - x0))

    def make(self):
        from mcf_fast.io.slides import SlideReader

        outer = self

        class RegionReader(SlideReader):
            shape = outer.shape
            mpp = outer.reader.mpp
            downsample = outer.reader.downsample
            name = f"{outer.reader.name}[{outer.y0}:{outer.y0 + outer.shape[0]}]"

            def _read(self, y, x, h, w):
                return outer.reader.read_region(outer.y0 + y, outer.x0 + x, h, w)

        return RegionReader()


def _peak_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _reset_peak() -> None:
    """Reset VmHWM (Linux: writing 5 to clear_refs), so a peak belongs to one run."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_once(reader, model, out: Path, workers: int, tile: int) -> dict:
    from distributed import Client, LocalCluster

    from mcf_fast.slide.run import run_slide

    threads = str(max(1, (os.cpu_count() or 1) // workers))
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env={"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads},
        ) as cl,
        Client(cl) as client,
    ):
        _reset_peak()
        cpu0 = sum(client.run(_cpu_seconds).values())
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        report = run_slide(reader, model, out, tile=tile, client=client, progress=True)
        wall = time.perf_counter() - t0
        worker_cpu = sum(client.run(_cpu_seconds).values()) - cpu0
        worker_peak = max(client.run(_peak_mib).values())
        client_peak = _peak_mib()
        load1 = os.getloadavg()[0]
    return {
        "workers": workers,
        "tiles": report.n_tissue,
        "of_tiles": report.n_tiles,
        "nuclei": report.n_nuclei,
        "megapixels": round(report.megapixels, 2),
        "seconds": round(report.seconds, 2),
        "wall_seconds": round(wall, 2),
        "export_seconds": report.export_seconds,
        "mpx_per_s": round(report.megapixels_per_second, 4),
        "worker_peak_mib": round(worker_peak, 1),
        "client_peak_mib": round(client_peak, 1),
        "worker_cpu_seconds": round(worker_cpu, 1),
        "mpx_per_cpu_s": round(report.megapixels / worker_cpu, 4) if worker_cpu else 0.0,
        "load_average": [round(load0, 2), round(load1, 2)],
        "failed": len(report.failed),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000, help="slide side in pixels")
    ap.add_argument(
        "--region",
        type=int,
        default=0,
        help="process only a centred square of this side (0: the whole slide)",
    )
    ap.add_argument("--model", default="blob")
    ap.add_argument(
        "--templates",
        type=int,
        default=0,
        help="build an N-template set from MoNuSeg train and use it",
    )
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from mcf_fast.io.images import read_image
    from mcf_fast.io.slides import open_slide

    mon = _data_root()
    tmp = Path(tempfile.mkdtemp(prefix="mcf_slide_bench_"))
    try:
        images = [read_image(p) for p in sorted((mon / "train" / "images").glob("*.png"))]
        images = [im[:1000, :1000] for im in images if min(im.shape[:2]) >= 1000]
        slide_path = tmp / f"mosaic_{args.size}.tif"
        t0 = time.perf_counter()
        write_slide(slide_path, Mosaic(args.size, images))
        t_write = time.perf_counter() - t0
        del images
        print(
            f"wrote {slide_path} ({slide_path.stat().st_size / 2**20:.0f} MiB) in {t_write:.1f} s",
            file=sys.stderr,
        )
        model = args.model
        if args.templates:
            from mcf_fast.detection.selection import select_templates

            model = str(tmp / "templates.json")
            select_templates(mon / "train", n=args.templates, seed=0).save(model)
        reader = open_slide(slide_path)
        if args.region:
            off = max(0, (args.size - args.region) // 2)
            reader = Region(reader, off, off, args.region).make()
        rows = []
        for w in args.workers:
            out = tmp / f"out_{w}"
            rows.append(run_once(reader, model, out, w, args.tile))
            print(json.dumps(rows[-1]), file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)
        base = rows[0]["mpx_per_s"] / rows[0]["workers"]
        for r in rows:
            r["efficiency"] = round(r["mpx_per_s"] / (base * r["workers"]), 3) if base else 0
        result = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
            "command": "python benchmarks/slide_throughput.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "slide": f"{args.size}x{args.size}",
            "region": args.region or args.size,
            "model": args.model if not args.templates else f"{args.templates} templates",
            "tile": args.tile,
            "write_seconds": round(t_write, 1),
            "runs": rows,
        }
        print(
            "| workers | tissue tiles | Mpx | seconds | Mpx/s | efficiency | Mpx per worker "
            "CPU-s | worker peak MiB | client peak MiB | load avg |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['workers']} | {r['tiles']} / {r['of_tiles']} | {r['megapixels']} | "
                f"{r['seconds']} | {r['mpx_per_s']} | {r['efficiency']} | "
                f"{r['mpx_per_cpu_s']} | {r['worker_peak_mib']} | {r['client_peak_mib']} | "
                f"{r['load_average'][0]}-{r['load_average'][1]} |"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
