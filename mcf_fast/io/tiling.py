"""Tiles with a halo, an ownership rule and slide-wide instance ids.

A slide of shape (H, W) is cut into a grid of square *cores* of side ``tile`` (the last row
and column may be smaller).  The cores partition the slide: every pixel lies in exactly one.
Each tile is predicted on its *read region*: the core grown by ``margin`` pixels on every
side, clipped to the slide.  The margin must cover the predictor's reach (how far a pixel's
result depends on its neighbours: filter size, smoothing, local-maximum window) plus the
radius of the largest nucleus, so that inside the core, and for every nucleus whose centre
lies in the core, the tile sees what the whole image sees.

Centres here are pixel-index coordinates (the centre of pixel (r, c) is (r, c)); the pixel
that holds a centre (y, x) is ``floor(y + 0.5), floor(x + 0.5)`` (:func:`centre_pixel`),
which is ``floor`` of the same point in the pixel-corner coordinates of the CSV and GeoJSON
outputs.

Ownership: a nucleus belongs to the one tile whose core holds its centre pixel.
Neighbouring tiles also see it (in their margin) and drop it from their tables.

Instance ids are slide-wide and need no coordination between tiles: a nucleus whose centre
lies in pixel (r, c) gets ``id = r * W + c + 1`` (int64; 0 is background).  Every tile
therefore gives a nucleus it sees the same id, so each tile can write the labels of its
*core* (including the parts of neighbours' nuclei that reach into it) and the cores fit
together without seams.  :func:`id_to_yx` recovers the centre pixel from an id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcf_fast.errors import InputError

__all__ = [
    "Tile",
    "tile_grid",
    "owned",
    "instance_ids",
    "id_to_yx",
    "centre_pixel",
    "associate",
    "TileLabels",
    "tile_labels",
]

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)


@dataclass(frozen=True)
class Tile:
    """One tile of a grid.

    Attributes
    ----------
    index : int
        Position in row-major order, 0-based.
    row, col : int
        Grid position.
    core : tuple of int
        ``(y0, x0, y1, x1)``, end exclusive: the pixels this tile writes.
    read : tuple of int
        ``(y0, x0, y1, x1)``: the pixels this tile reads (core plus margin, clipped).
    """

    index: int
    row: int
    col: int
    core: Box
    read: Box

    @property
    def read_shape(self) -> tuple[int, int]:
        return self.read[2] - self.read[0], self.read[3] - self.read[1]

    @property
    def core_in_read(self) -> tuple[slice, slice]:
        """Slices that cut the core out of an array covering the read region."""
        return (
            slice(self.core[0] - self.read[0], self.core[2] - self.read[0]),
            slice(self.core[1] - self.read[1], self.core[3] - self.read[1]),
        )


def tile_grid(shape: tuple[int, int], *, tile: int, margin: int) -> list[Tile]:
    """Cut an image of ``shape`` into tiles.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the slide level.
    tile : int
        Side of a core, >= 16.
    margin : int
        Halo in pixels on each side, >= 0.

    Returns
    -------
    list of Tile
        Row-major; cores partition the image.

    Raises
    ------
    InputError
        For a non-positive shape, a tile below 16 or a negative margin.

    Examples
    --------
    >>> [t.core for t in tile_grid((100, 150), tile=64, margin=8)][:3]
    [(0, 0, 64, 64), (0, 64, 64, 128), (0, 128, 64, 150)]
    """
    H, W = (int(s) for s in shape)
    if H < 1 or W < 1:
        raise InputError(f"tile_grid: shape must be positive, got {shape}")
    if not isinstance(tile, (int, np.integer)) or tile < 16:
        raise InputError(f"tile: expected an integer >= 16, got {tile!r}")
    if not isinstance(margin, (int, np.integer)) or margin < 0:
        raise InputError(f"margin: expected an integer >= 0, got {margin!r}")
    tiles = []
    n_cols = -(-W // tile)
    for r, y0 in enumerate(range(0, H, tile)):
        for c, x0 in enumerate(range(0, W, tile)):
            y1, x1 = min(y0 + tile, H), min(x0 + tile, W)
            read = (
                max(0, y0 - margin),
                max(0, x0 - margin),
                min(H, y1 + margin),
                min(W, x1 + margin),
            )
            tiles.append(Tile(r * n_cols + c, r, c, (y0, x0, y1, x1), read))
    return tiles


def centre_pixel(centres: np.ndarray) -> np.ndarray:
    """The pixels (N, 2) int64 that hold centres (N, 2) given in pixel-index coordinates.

    Pixel ``(r, c)`` covers ``[r - 0.5, r + 0.5) x [c - 0.5, c + 0.5)``.
    """
    return np.floor(np.asarray(centres, dtype=np.float64).reshape(-1, 2) + 0.5).astype(np.int64)


def owned(centres: np.ndarray, core: Box) -> np.ndarray:
    """Which centres (slide coordinates) lie in ``core``: the ownership rule.

    Parameters
    ----------
    centres : ndarray, shape (N, 2)
        (y, x), float or int.
    core : tuple of int

    Returns
    -------
    ndarray, shape (N,), bool
    """
    c = centre_pixel(centres)
    y0, x0, y1, x1 = core
    return (c[:, 0] >= y0) & (c[:, 0] < y1) & (c[:, 1] >= x0) & (c[:, 1] < x1)


def instance_ids(centres: np.ndarray, width: int) -> np.ndarray:
    """Slide-wide ids ``r * width + c + 1`` of centres (slide coordinates) in pixel (r, c).

    The pixel is :func:`centre_pixel`'s.

    Returns
    -------
    ndarray, shape (N,), int64
    """
    c = centre_pixel(centres)
    return c[:, 0] * np.int64(width) + c[:, 1] + 1


def id_to_yx(ids: np.ndarray, width: int) -> np.ndarray:
    """The centre pixels (N, 2) int64 of ids made by :func:`instance_ids`."""
    i = np.asarray(ids, dtype=np.int64) - 1
    return np.stack([i // width, i % width], axis=-1)


def associate(
    labels: np.ndarray, centres: np.ndarray, *, ordered: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Relabel an instance map so that label ``k`` is the nucleus of ``centres[k - 1]``.

    Predictors return instance labels and centres; this pairs them up. A centre takes the
    label under it (the first centre wins when several fall on one label); a label no centre
    claims keeps its pixels and gets its centroid as centre (appended); a centre on
    background, or on a label an earlier centre took, gets its own pixel as a one-pixel mask
    (when that pixel is background) so every detection has a shape.

    Parameters
    ----------
    labels : ndarray, shape (H, W), integer
    centres : ndarray, shape (N, 2), (y, x) within the image
    ordered : bool
        The centres are already in label order (``centres[k - 1]`` belongs to label ``k``,
        e.g. the centroids of the instances, which may fall outside a concave shape): keep
        that pairing; only labels above ``N`` are treated as unclaimed.

    Returns
    -------
    labels : ndarray, shape (H, W), int32
    centres : ndarray, shape (M, 2), float64, M >= N

    Raises
    ------
    InputError
        If `labels` is not 2-D or a centre lies outside it.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"labels: expected a 2-D instance map, got shape {lab.shape}")
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    H, W = lab.shape
    ci = centre_pixel(c)
    if ci.size and (ci.min() < 0 or (ci[:, 0] >= H).any() or (ci[:, 1] >= W).any()):
        raise InputError(f"centres: some lie outside the {H}x{W} label image")
    lab = lab.astype(np.int64, copy=False)
    n_lab = int(lab.max()) if lab.size else 0
    lut = np.zeros(n_lab + 1, np.int64)
    out_centres = [c]
    extra_pixels = []
    if ordered:
        k = min(n_lab, len(c))
        lut[1 : k + 1] = np.arange(1, k + 1)
        present_ = np.zeros(max(n_lab, len(c)) + 1, bool)
        present_[np.unique(lab)] = True
        extra_pixels = [j for j in range(len(c)) if not present_[j + 1]]
    else:
        under = lab[ci[:, 0], ci[:, 1]] if len(ci) else np.zeros(0, np.int64)
        for k, v in enumerate(under):
            if v > 0 and lut[v] == 0:
                lut[v] = k + 1
            else:
                extra_pixels.append(k)
    n = len(c)
    present = np.zeros(n_lab + 1, bool)
    present[np.unique(lab)] = True
    present[0] = False
    orphans = np.nonzero(present & (lut == 0))[0]
    if orphans.size:
        from scipy import ndimage as ndi

        cent = np.asarray(ndi.center_of_mass(np.ones_like(lab, dtype=np.float64), lab, orphans))
        cent = cent.reshape(-1, 2)
        boxes = ndi.find_objects(lab)
        # the centroid may fall outside a concave shape: use the label's pixel nearest to it
        for j, v in enumerate(orphans):
            sy, sx = boxes[v - 1]
            ys, xs = np.nonzero(lab[sy, sx] == v)
            ys, xs = ys + sy.start, xs + sx.start
            d = (ys - cent[j, 0]) ** 2 + (xs - cent[j, 1]) ** 2
            m = int(np.argmin(d))
            cent[j] = (ys[m], xs[m])
        lut[orphans] = np.arange(n + 1, n + 1 + orphans.size)
        out_centres.append(cent)
    out = lut[lab].astype(np.int32)
    for k in extra_pixels:
        y, x = ci[k]
        if out[y, x] == 0:
            out[y, x] = k + 1
    return out, np.concatenate(out_centres, axis=0)


@dataclass(frozen=True)
class TileLabels:
    """What one tile contributes, in slide coordinates.

    Attributes
    ----------
    core : ndarray, shape (core height, core width), int64
        Slide-wide ids of every nucleus pixel in the core (owned or not).
    labels : ndarray, shape (read height, read width), int32
        The owned nuclei over the whole read region, numbered compactly: label ``j`` is
        nucleus ``ids[j - 1]`` (0 elsewhere, including nuclei owned by other tiles).
    ids : ndarray, shape (n,), int64
        Ids of the owned nuclei.
    centres : ndarray, shape (n, 2), float64
        Their centres, slide coordinates.
    """

    core: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    centres: np.ndarray


def tile_labels(labels: np.ndarray, centres: np.ndarray, tile: Tile, *, width: int) -> TileLabels:
    """Turn a prediction on ``tile.read`` into slide-wide ids and apply the ownership rule.

    Parameters
    ----------
    labels : ndarray, shape tile.read_shape, integer
        Instance labels where label ``k`` belongs to ``centres[k - 1]`` (see
        :func:`associate`).
    centres : ndarray, shape (N, 2)
        (y, x) in read-region coordinates.
    tile : Tile
    width : int
        Width of the slide level (for the ids).

    Returns
    -------
    TileLabels

    Raises
    ------
    InputError
        If `labels` does not cover the read region or has labels above ``len(centres)``.
    """
    lab = np.asarray(labels)
    if lab.shape != tile.read_shape:
        raise InputError(
            f"labels: expected shape {tile.read_shape} for tile {tile.index}, got {lab.shape}"
        )
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if lab.size and int(lab.max()) > len(c):
        raise InputError(
            f"labels: label {int(lab.max())} has no centre ({len(c)} centres); "
            "pair them with mcf_fast.io.tiling.associate"
        )
    slide_c = c + np.array([tile.read[0], tile.read[1]], dtype=np.float64)
    gid = instance_ids(slide_c, width)
    mine = owned(slide_c, tile.core)
    lut = np.concatenate([[0], gid]).astype(np.int64)
    full = lut[lab]
    core = np.ascontiguousarray(full[tile.core_in_read])
    compact = np.zeros(len(c) + 1, np.int32)
    compact[1:][mine] = np.arange(1, int(mine.sum()) + 1, dtype=np.int32)
    return TileLabels(core=core, labels=compact[lab], ids=gid[mine], centres=slide_c[mine])
