"""A shape-aware training target: each nucleus' distance map, from pseudo instances.

Nuclei are compact, mostly convex and often touch.  A network that learns only "nucleus or
not" draws one blob over two touching nuclei and leaves the split to the distance transform
of its own mask, whose ridges follow the blob's outline.  With
``SegmentationConfig.target = "distance"`` it also learns, for every confident nucleus
pixel, the distance to the edge of the nucleus it belongs to, divided by that nucleus'
largest distance: 1 at each nucleus' centre, falling towards its edge and to 0 where two
nuclei meet.  The instances come from the pseudo mask, split at the detected centres
(:func:`mcf_fast.ops.instances.pseudo_instances`); the predicted map then gives one
peak per nucleus, the seeds of the watershed (``instance_seeds = "shape"``,
:mod:`mcf_fast.ops.instances`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mcf_fast.errors import InputError

__all__ = ["distance_target"]


def distance_target(instances: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The distance-map target of :data:`SegmentationConfig.target` ``= "distance"``.

    Parameters
    ----------
    instances : ndarray, shape (H, W), int
        0 outside nuclei, one positive id per nucleus (touching nuclei allowed).
    known : ndarray, shape (H, W), bool
        Pixels whose label is known (confident nucleus or confident background); the others
        get NaN and are ignored by the loss.

    Returns
    -------
    ndarray, shape (H, W), float32
        Inside each nucleus its Euclidean distance to the nearest pixel outside it (another
        nucleus counts as outside), divided by its largest such distance, so 1 at its
        centre; 0 on known pixels outside nuclei; NaN where the label is unknown.

    Examples
    --------
    >>> lab = np.zeros((5, 7), np.int32); lab[1:4, 1:6] = 1
    >>> distance_target(lab, np.ones((5, 7), bool))[2]
    array([0. , 0.5, 1. , 1. , 1. , 0.5, 0. ], dtype=float32)
    """
    lab = np.asarray(instances)
    k = np.asarray(known, dtype=bool)
    if lab.ndim != 2 or k.shape != lab.shape:
        raise InputError(
            f"instances and known: expected two 2-D maps of one shape, got {lab.shape}, {k.shape}"
        )
    out = np.zeros(lab.shape, np.float32)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        # one pixel of margin, so that the box's edge counts as outside the nucleus
        ys = slice(max(sl[0].start - 1, 0), sl[0].stop + 1)
        xs = slice(max(sl[1].start - 1, 0), sl[1].stop + 1)
        inside = lab[ys, xs] == i
        pad = (
            (int(sl[0].start == 0), int(sl[0].stop == lab.shape[0])),
            (int(sl[1].start == 0), int(sl[1].stop == lab.shape[1])),
        )
        d = ndimage.distance_transform_edt(np.pad(inside, pad))
        d = d[pad[0][0] : d.shape[0] - pad[0][1], pad[1][0] : d.shape[1] - pad[1][1]]
        top = d.max()
        if top > 0:
            out[ys, xs][inside] = (d[inside] / top).astype(np.float32)
    out[~k & (lab == 0)] = np.nan
    return out
