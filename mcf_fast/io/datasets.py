"""Folder datasets: images with optional instance masks, loaded lazily.

Layout of a dataset folder ``root``::

    root/images/<name>.png|.tif|.tiff|.jpg|...   RGB (or grayscale) images
    root/masks/<name>.png|.tif|.tiff              instance labels (uint16 or uint8), 0 = background
    root/annotations_xml/<name>.xml               optional: MoNuSeg / Aperio XML polygons

A sample is named by the file stem of its image.  Its mask is ``masks/<name>.*`` when present,
otherwise ``annotations_xml/<name>.xml`` (rasterised on load by
:func:`mcf_fast.io.monuseg_xml.xml_to_labels`), otherwise none.  Listing the folder reads no
pixels; :meth:`FolderDataset.load_image` and :meth:`FolderDataset.load_mask` read one file each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcf_fast.errors import DataError, InputError
from mcf_fast.io.images import IMAGE_SUFFIXES, read_image, read_labels

__all__ = [
    "MASK_SUFFIXES",
    "Sample",
    "FolderDataset",
    "image_shape",
    "as_instance_labels",
]

#: suffixes of label images, in order of preference when several exist
MASK_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset and the file of its instance mask (None when it has none)."""

    name: str
    image_path: Path
    mask_path: Path | None


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file, read from its header without decoding the pixels.

    Raises
    ------
    FormatError
        If the file is not a readable image.
    """
    from mcf_fast.errors import FormatError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tf:
                shape = tf.series[0].shape
                axes = tf.series[0].axes
            h = shape[axes.index("Y")]
            w = shape[axes.index("X")]
            return int(h), int(w)
        from PIL import Image

        with Image.open(p) as im:
            w, h = im.size
        return int(h), int(w)
    except Exception as exc:
        raise FormatError(f"{p}: not a readable image ({type(exc).__name__}: {exc})") from exc


def as_instance_labels(labels: np.ndarray, *, name: str = "labels") -> np.ndarray:
    """Instance labels from an instance map or a binary mask.

    A map whose only values are ``{0, v}`` for a single ``v`` (a binary mask, e.g. 0/1 or
    0/255) is split into its 4-connected components, numbered 1..N in raster order.  Any
    other map is taken as instance ids and returned unchanged (as int32; ids beyond the
    int32 range are renumbered 1..N in ascending order).

    Parameters
    ----------
    labels : ndarray, shape (H, W), integer or bool
    name : str
        How to name the array in error messages.

    Returns
    -------
    ndarray, shape (H, W), int32

    Raises
    ------
    InputError
        If the array is not 2-D, not integer or bool, or holds negative values.
    """
    a = np.asarray(labels)
    if a.ndim != 2:
        raise InputError(f"{name}: expected a 2-D label image, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name}: labels must be integers or bool, got {a.dtype}")
    if a.size and a.min() < 0:
        raise InputError(f"{name}: negative labels")
    nonzero = a[a != 0]
    if nonzero.size and nonzero.min() == nonzero.max():
        from scipy import ndimage

        out, _ = ndimage.label(a != 0)
        return out.astype(np.int32, copy=False)
    if nonzero.size and int(nonzero.max()) > np.iinfo(np.int32).max:
        # ids beyond int32: renumber 1..N in ascending order of the old ids
        _, inv = np.unique(a, return_inverse=True)
        inv = inv.reshape(a.shape)
        return (inv + (0 if a.min() == 0 else 1)).astype(np.int32)
    return a.astype(np.int32, copy=False)


def _files_by_stem(folder: Path, suffixes: tuple[str, ...], kind: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in suffixes:
            continue
        if p.stem in found:
            raise DataError(
                f"{folder}: two {kind} files share the name {p.stem!r} "
                f"({found[p.stem].name} and {p.name}); keep one"
            )
        found[p.stem] = p
    return found


class FolderDataset:
    """A folder of images with optional instance masks (see the module docstring).

    Parameters
    ----------
    root : str or PathLike
        Folder holding ``images/`` and optionally ``masks/`` (or ``annotations_xml/``).
    require_masks : bool
        If True, every image must have a mask.

    Attributes
    ----------
    root : Path
    names : list of str
        Sorted image file stems.

    Raises
    ------
    DataError
        If ``root/images`` is missing or holds no images, if two files share a stem, if a
        mask has no image, or (with ``require_masks``) if an image has no mask.

    Examples
    --------
    >>> ds = FolderDataset("monuseg/test", require_masks=True)  # doctest: +SKIP
    >>> image, mask = ds.load_image(ds.names[0]), ds.load_mask(ds.names[0])  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, *, require_masks: bool = False) -> None:
        self.root = Path(root)
        images_dir = self.root / "images"
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        if not images_dir.is_dir():
            raise DataError(
                f"{self.root}: no images/ folder (expected images/<name>.png and masks/<name>.png)"
            )
        images = _files_by_stem(images_dir, IMAGE_SUFFIXES, "image")
        if not images:
            raise DataError(f"{images_dir}: no images found (suffixes {', '.join(IMAGE_SUFFIXES)})")
        masks: dict[str, Path] = {}
        masks_dir = self.root / "masks"
        if masks_dir.is_dir():
            masks = _files_by_stem(masks_dir, MASK_SUFFIXES, "mask")
            orphans = sorted(set(masks) - set(images))
            if orphans:
                raise DataError(
                    f"{masks_dir}: {len(orphans)} mask(s) without an image in {images_dir}, "
                    f"e.g. {masks[orphans[0]].name}"
                )
        xml_dir = self.root / "annotations_xml"
        if xml_dir.is_dir():
            for stem, p in _files_by_stem(xml_dir, (".xml",), "annotation").items():
                if stem in images and stem not in masks:
                    masks[stem] = p
        self.names: list[str] = sorted(images)
        if require_masks:
            missing = [n for n in self.names if n not in masks]
            if missing:
                raise DataError(
                    f"{self.root}: {len(missing)} image(s) without a mask, e.g. "
                    f"{images[missing[0]].name} has no masks/{missing[0]}.png"
                )
        self._samples = {
            n: Sample(name=n, image_path=images[n], mask_path=masks.get(n)) for n in self.names
        }

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Sample]:
        return (self._samples[n] for n in self.names)

    def __getitem__(self, key: int | str) -> Sample:
        if isinstance(key, str):
            try:
                return self._samples[key]
            except KeyError:
                raise DataError(f"{self.root}: no image named {key!r}") from None
        if isinstance(key, (int, np.integer)):
            return self._samples[self.names[int(key)]]
        raise TypeError(f"index a FolderDataset by int or name, not {type(key).__name__}")

    def __repr__(self) -> str:
        n_masks = sum(s.mask_path is not None for s in self._samples.values())
        return f"FolderDataset({str(self.root)!r}, {len(self)} images, {n_masks} masks)"

    def load_image(self, name: str | int) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        return read_image(self[name].image_path)

    def load_mask(self, name: str | int) -> np.ndarray:
        """The instance labels as (H, W) int32, 0 = background.

        A binary mask is split into connected components (:func:`as_instance_labels`).

        Raises
        ------
        DataError
            If the sample has no mask, or the mask's size differs from its image's.
        FormatError
            If the mask file is not a readable label image.
        """
        s = self[name]
        if s.mask_path is None:
            raise DataError(f"{s.image_path}: no mask for this image in {self.root / 'masks'}")
        shape = image_shape(s.image_path)
        if s.mask_path.suffix.lower() == ".xml":
            from mcf_fast.io.monuseg_xml import xml_to_labels

            return xml_to_labels(s.mask_path, shape)
        labels = read_labels(s.mask_path)
        if labels.shape != shape:
            raise DataError(
                f"{s.mask_path}: mask size {labels.shape[0]}x{labels.shape[1]} differs from "
                f"its image {s.image_path} ({shape[0]}x{shape[1]})"
            )
        return as_instance_labels(labels, name=str(s.mask_path))
