"""Template sets: the few example nuclei that supervise the method.

A template is a square RGB crop of side ``size`` centred on pixel ``(y, x)`` of an image
named ``image``.  A :class:`TemplateSet` is saved as one self-contained, versioned JSON file
that carries the crops (PNG, base64) beside their coordinates, so it travels with a model and
needs none of the source images.  The format is described in ``docs/formats.md``.

Crop geometry and padding
-------------------------
The crop covers rows ``y - size // 2 .. y - size // 2 + size - 1`` (columns likewise), so for
an odd size the centre pixel is the middle one and for an even size it is at index
``size // 2``.  Where the square reaches past the image border, the missing pixels are filled
by mirror reflection about the edge pixel (numpy ``mode="reflect"``: ``... 2 1 | 0 1 2 ...``),
repeated as often as needed for tiny images.  The centre itself must lie inside the image.

Three ways to build a set: :meth:`TemplateSet.from_points` (points from a CSV or QuPath
GeoJSON file and a size), :func:`~mcf_fast.detection.selection.select_templates` (the
deterministic few-shot protocol on a dataset with masks), or by hand in the JSON format.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast._validate import as_int, check_version
from mcf_fast.errors import FormatError, InputError
from mcf_fast.io.images import as_rgb_uint8, atomic_path

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MIN_SELECT_SIZE",
    "Template",
    "TemplateSet",
    "crop_template",
    "read_points_csv",
    "restain_templates",
    "read_points",
    "contact_sheet",
]

#: value of the ``format`` field of a template-set file
FORMAT_NAME = "mcf_fast.template_set"
#: the version this module writes; :meth:`TemplateSet.load` reads only this version
FORMAT_VERSION = 1
#: smallest crop side chosen by :func:`~mcf_fast.detection.selection.select_templates`
MIN_SELECT_SIZE = 16


def crop_template(image: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """Cut a ``size`` x ``size`` crop centred on pixel ``(y, x)``.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3) or (H, W)
        Converted with :func:`mcf_fast.io.images.as_rgb_uint8`.
    y, x : int
        Centre pixel; must lie inside the image.
    size : int
        Side of the square, >= 1.

    Returns
    -------
    ndarray, shape (size, size, 3), uint8
        Rows ``y - size // 2`` to ``y - size // 2 + size - 1``; pixels outside the image are
        mirror-reflected about the edge pixel (see the module docstring).

    Raises
    ------
    InputError
        If ``size`` < 1 or the centre lies outside the image.

    Examples
    --------
    >>> img = np.zeros((10, 10, 3), np.uint8)
    >>> crop_template(img, 0, 0, 5).shape
    (5, 5, 3)
    """
    img = as_rgb_uint8(image)
    size = as_int(size, "size")
    y = as_int(y, "y")
    x = as_int(x, "x")
    if size < 1:
        raise InputError(f"size: expected a crop side >= 1, got {size}")
    h, w = img.shape[:2]
    if not (0 <= y < h and 0 <= x < w):
        raise InputError(f"template centre (y={y}, x={x}) lies outside the {h}x{w} image")
    top, left = y - size // 2, x - size // 2
    bottom, right = top + size, left + size
    pad = (
        (max(0, -top), max(0, bottom - h)),
        (max(0, -left), max(0, right - w)),
        (0, 0),
    )
    window = img[max(0, top) : min(h, bottom), max(0, left) : min(w, right)]
    if any(p for pair in pad for p in pair):
        window = np.pad(window, pad, mode="reflect")
    return np.ascontiguousarray(window)


@dataclass(frozen=True, eq=False)
class Template:
    """One template: a crop of ``size`` x ``size`` pixels centred on ``(y, x)`` of ``image``.

    Attributes
    ----------
    image : str
        Name of the source image (its file stem, or any label).
    y, x : int
        Centre pixel in the source image.
    size : int
        Side of the square crop.
    crop : ndarray, shape (size, size, 3), uint8
        The pixels (read-only).
    """

    image: str
    y: int
    x: int
    size: int
    crop: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.image, str):
            raise InputError(f"Template.image: expected a str, got {type(self.image).__name__}")
        for name in ("y", "x", "size"):
            object.__setattr__(self, name, as_int(getattr(self, name), f"Template.{name}"))
        if self.size < 1:
            raise InputError(f"Template.size: expected >= 1, got {self.size}")
        crop = np.asarray(self.crop)
        if crop.shape != (self.size, self.size, 3) or crop.dtype != np.uint8:
            raise InputError(
                f"Template.crop: expected a ({self.size}, {self.size}, 3) uint8 array, got "
                f"{crop.shape} {crop.dtype}"
            )
        crop = np.array(crop, copy=True, order="C")
        crop.flags.writeable = False
        object.__setattr__(self, "crop", crop)

    def __repr__(self) -> str:
        return f"Template(image={self.image!r}, y={self.y}, x={self.x}, size={self.size})"


class TemplateSet:
    """An ordered, immutable collection of :class:`Template` with free-form metadata.

    Parameters
    ----------
    templates : sequence of Template
        At least one.
    meta : dict, optional
        JSON-serialisable metadata (how the set was made).

    Raises
    ------
    InputError
        If ``templates`` is empty or holds something other than Template.
    """

    def __init__(self, templates: Sequence[Template], *, meta: dict | None = None) -> None:
        templates = tuple(templates)
        if not templates:
            raise InputError("a template set needs at least one template")
        for i, t in enumerate(templates):
            if not isinstance(t, Template):
                raise InputError(f"templates[{i}]: expected a Template, got {type(t).__name__}")
        self.templates: tuple[Template, ...] = templates
        self.meta: dict = dict(meta or {})

    def __len__(self) -> int:
        return len(self.templates)

    def __iter__(self) -> Iterator[Template]:
        return iter(self.templates)

    def __getitem__(self, i: int) -> Template:
        return self.templates[i]

    def __repr__(self) -> str:
        sizes = sorted({t.size for t in self.templates})
        return f"TemplateSet({len(self)} templates, sizes {sizes})"

    def crops(self) -> list[np.ndarray]:
        """The crops, in order, each (size, size, 3) uint8."""
        return [t.crop for t in self.templates]

    def add(self, templates: Sequence[Template]) -> TemplateSet:
        """A new set with ``templates`` appended (the metadata is kept)."""
        return TemplateSet(self.templates + tuple(templates), meta=self.meta)

    # ------------------------------------------------------------------ file format
    def to_dict(self) -> dict:
        """The JSON document written by :meth:`save`."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "meta": self.meta,
            "templates": [
                {
                    "image": t.image,
                    "y": t.y,
                    "x": t.x,
                    "size": t.size,
                    "crop_png": _encode_png(t.crop),
                }
                for t in self.templates
            ],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set as versioned JSON (sorted keys, crops embedded), atomically.

        The same set always gives the same bytes: no timestamps, keys sorted.

        Raises
        ------
        InputError
            If ``meta`` is not JSON-serialisable.
        """
        final = Path(path)
        try:
            text = json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{final}: template-set metadata is not JSON-serialisable: {exc}"
            ) from exc
        with atomic_path(final) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        return final

    @classmethod
    def load(cls, path: str | os.PathLike) -> TemplateSet:
        """Read a set written by :meth:`save` (or by hand in the same format).

        Raises
        ------
        FormatError
            If the file is not JSON, not a template set, of an unknown version, or a template
            entry is malformed; the message names the file (and the entry).
        InputError
            If the file does not exist.
        """
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such template-set file")
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise FormatError(f"{p}: not a JSON template-set file ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise FormatError(f'{p}: not a template-set file (expected "format": "{FORMAT_NAME}")')
        check_version(doc.get("version"), FORMAT_VERSION, f"{p}: template-set format version")
        entries = doc.get("templates")
        if not isinstance(entries, list) or not entries:
            raise FormatError(f'{p}: "templates" must be a non-empty list')
        meta = doc.get("meta", {})
        if not isinstance(meta, dict):
            raise FormatError(f'{p}: "meta" must be an object')
        templates = []
        for i, e in enumerate(entries):
            try:
                if not isinstance(e, dict):
                    raise InputError("expected an object")
                missing = [k for k in ("image", "y", "x", "size", "crop_png") if k not in e]
                if missing:
                    raise InputError(f"missing field(s) {', '.join(missing)}")
                crop = _decode_png(e["crop_png"])
                templates.append(
                    Template(image=e["image"], y=e["y"], x=e["x"], size=e["size"], crop=crop)
                )
            except InputError as exc:
                raise FormatError(f"{p}: templates[{i}]: {exc}") from exc
        return cls(templates, meta=meta)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_points(
        cls,
        image: np.ndarray,
        points: np.ndarray | Sequence[Sequence[float]],
        *,
        size: int | Sequence[int],
        image_name: str,
    ) -> TemplateSet:
        """Crop one template around each point of one image.

        Parameters
        ----------
        image : ndarray, shape (H, W, 3)
        points : array_like, shape (N, 2)
            (y, x) centres in pixel-index coordinates; rounded half up to the nearest pixel.
        size : int or sequence of N ints
            Crop side, for all points or per point.
        image_name : str
            Recorded as each template's ``image``.

        Raises
        ------
        InputError
            If there are no points, a point lies outside the image, or the sizes do not match.
        """
        img = as_rgb_uint8(image, name=image_name)
        pts = np.asarray(points, dtype=np.float64)
        if pts.size == 0:
            raise InputError(f"{image_name}: no points to make templates from")
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise InputError(f"points: expected an (N, 2) array of y, x, got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise InputError("points: contains NaN or infinite coordinates")
        sizes = np.broadcast_to(np.asarray(size), (len(pts),)) if np.ndim(size) == 0 else size
        if len(sizes) != len(pts):
            raise InputError(f"size: {len(sizes)} sizes for {len(pts)} points")
        h, w = img.shape[:2]
        templates = []
        for i, ((py, px), s) in enumerate(zip(pts, sizes, strict=True)):
            y, x = int(math.floor(py + 0.5)), int(math.floor(px + 0.5))
            if not (0 <= y < h and 0 <= x < w):
                raise InputError(
                    f"{image_name}: point {i} (y={py:g}, x={px:g}) lies outside the {h}x{w} image"
                )
            s = as_int(s, f"size[{i}]")
            templates.append(
                Template(image=image_name, y=y, x=x, size=s, crop=crop_template(img, y, x, s))
            )
        return cls(templates, meta={"source": "points", "image": image_name})


def _encode_png(crop: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop), mode="RGB").save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode_png(text: Any) -> np.ndarray:
    from PIL import Image

    if not isinstance(text, str):
        raise InputError("crop_png: expected a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise InputError(f"crop_png: not a base64-encoded PNG ({type(exc).__name__})") from exc


def restain_templates(
    templates: TemplateSet,
    transform: Callable[[np.ndarray], np.ndarray],
    images: Mapping[str, np.ndarray],
) -> TemplateSet:
    """The same templates in a stain-normalised colour space.

    A template whose image (by file stem) is in `images`, the already-normalised images,
    is cut again from it; any other crop is passed through `transform` (the normaliser's).

    Returns
    -------
    TemplateSet
        Same positions, sizes and ``meta``.
    """
    out = []
    for t in templates:
        img = images.get(Path(t.image).stem)
        if img is not None and 0 <= t.y < img.shape[0] and 0 <= t.x < img.shape[1]:
            crop = crop_template(img, t.y, t.x, t.size)
        else:
            crop = as_rgb_uint8(transform(t.crop))
        out.append(Template(image=t.image, y=t.y, x=t.x, size=t.size, crop=crop))
    return TemplateSet(out, meta=templates.meta)


# ---------------------------------------------------------------------- points files
def read_points_csv(path: str | os.PathLike) -> np.ndarray:
    """Read (y, x) points from a CSV file with a header row naming columns ``y`` and ``x``.

    Other columns are ignored; column names are matched case-insensitively.  A file with
    only the header gives an empty (0, 2) array.  The file's coordinates have pixel corners
    on integers, as every CSV and GeoJSON that mcf_fast writes (and QuPath): the centre of
    pixel (row r, column c) is (r + 0.5, c + 0.5), and any point inside that pixel, e.g.
    the integers (r, c), stands for it.  0.5 is subtracted to give pixel-index coordinates.

    Returns
    -------
    ndarray, shape (N, 2), float64
        (y, x) in pixel-index coordinates (row, column of the pixel centre).

    Raises
    ------
    FormatError
        If the header lacks ``y`` or ``x`` or a value is not a finite number.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such points file")
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise FormatError(f"{p}: not a text CSV file") from exc
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise FormatError(f"{p}: empty file; expected a header row with columns y,x")
    header = [c.strip().lower() for c in rows[0]]
    if "y" not in header or "x" not in header:
        raise FormatError(f"{p}: expected a header row with columns y and x, got {rows[0]!r}")
    iy, ix = header.index("y"), header.index("x")
    out = np.empty((len(rows) - 1, 2), dtype=np.float64)
    for k, r in enumerate(rows[1:]):
        try:
            out[k] = float(r[iy]), float(r[ix])
        except (ValueError, IndexError):
            raise FormatError(
                f"{p}: line {k + 2}: expected numbers in columns y, x, got {r!r}"
            ) from None
        if not np.all(np.isfinite(out[k])):
            raise FormatError(f"{p}: line {k + 2}: non-finite coordinate {r!r}")
    return out - 0.5


def read_points(path: str | os.PathLike) -> np.ndarray:
    """Points from a ``.csv`` (:func:`read_points_csv`) or a QuPath ``.geojson``/``.json``.

    Returns
    -------
    ndarray, shape (N, 2), float64, (y, x) pixel-index coordinates
    """
    p = Path(path)
    if p.suffix.lower() in (".geojson", ".json"):
        from mcf_fast.io.geojson import read_geojson_points

        return read_geojson_points(p)
    if p.suffix.lower() in (".csv", ".txt"):
        return read_points_csv(p)
    raise FormatError(f"{p}: unknown points format (expected .csv, .geojson or .json)")


# ---------------------------------------------------------------------- contact sheet
def contact_sheet(
    tset: TemplateSet, *, cell: int = 96, columns: int = 5, captions: bool = True
) -> np.ndarray:
    """Draw the crops on a grid with their index, image name and size.

    Each crop is scaled (nearest neighbour) to fit a ``cell`` x ``cell`` square.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
    """
    from PIL import Image, ImageDraw, ImageFont

    if cell < 8 or columns < 1:
        raise InputError(
            f"contact sheet: cell must be >= 8 and columns >= 1, got {cell}, {columns}"
        )
    font = ImageFont.load_default()
    cap_h = 28 if captions else 0
    pad = 6
    cols = min(columns, len(tset))
    rows = math.ceil(len(tset) / cols)
    cw = max(cell, 150 if captions else cell) + pad
    sheet = Image.new("RGB", (cols * cw + pad, rows * (cell + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, t in enumerate(tset):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * cw, pad + r * (cell + cap_h + pad)
        scale = cell / t.size
        tw = max(1, round(t.size * scale))
        im = Image.fromarray(np.ascontiguousarray(t.crop)).resize((tw, tw), Image.NEAREST)
        sheet.paste(im, (x0, y0))
        mid = x0 + tw // 2, y0 + tw // 2
        draw.line([(mid[0] - 3, mid[1]), (mid[0] + 3, mid[1])], fill=(0, 255, 0))
        draw.line([(mid[0], mid[1] - 3), (mid[0], mid[1] + 3)], fill=(0, 255, 0))
        if captions:
            name = t.image if len(t.image) <= 24 else t.image[:11] + ".." + t.image[-11:]
            draw.text(
                (x0, y0 + cell + 2), f"#{i} {t.size}px y{t.y} x{t.x}", fill="black", font=font
            )
            draw.text((x0, y0 + cell + 14), name, fill=(60, 60, 60), font=font)
    return np.asarray(sheet)
