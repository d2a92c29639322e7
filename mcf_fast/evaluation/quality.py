"""How good a detector's pseudo labels are, scored against masks the fit never sees."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mcf_fast.errors import InputError

__all__ = ["pseudo_label_quality"]


def pseudo_label_quality(
    pseudo_masks: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
) -> dict[str, float]:
    """How well pseudo masks {-1 unknown, 0 background, 1 nucleus} agree with true masks.

    Pooled over the images (sums of pixel counts, then ratios):

    - ``nucleus_precision``: share of nucleus labels on true nucleus pixels;
    - ``nucleus_coverage``: share of true nucleus pixels labelled nucleus;
    - ``background_precision``: share of background labels on true background;
    - ``tissue_background_precision``: the same on tissue pixels only (white space,
      :func:`mcf_fast.ops.tissue.white_space`, excluded): the hard negatives;
    - ``tissue_background_coverage``: share of the true background *tissue* pixels
      (stroma, cytoplasm, red cells) labelled background;
    - ``confident``: share of all pixels labelled nucleus or background.

    Parameters
    ----------
    pseudo_masks, truths, images : sequences of (H, W) int8, (H, W) labels, (H, W, 3) uint8

    Returns
    -------
    dict of str to float

    Raises
    ------
    InputError
        For sequences of different lengths or arrays of different shapes.
    """
    from mcf_fast.ops.tissue import white_space

    if not (len(pseudo_masks) == len(truths) == len(images)):
        raise InputError(
            f"pseudo_label_quality: {len(pseudo_masks)} pseudo masks, {len(truths)} masks, "
            f"{len(images)} images"
        )
    c = np.zeros(9, np.int64)
    for i, (pm, gt, img) in enumerate(zip(pseudo_masks, truths, images, strict=True)):
        pm, gt = np.asarray(pm), np.asarray(gt) > 0
        if pm.shape != gt.shape or np.asarray(img).shape[:2] != gt.shape:
            raise InputError(f"pseudo_label_quality: item {i} has mismatched shapes")
        tis = ~white_space(img)
        nuc, bg = pm == 1, pm == 0
        c += [
            (nuc & gt).sum(),
            nuc.sum(),
            gt.sum(),
            (bg & ~gt).sum(),
            bg.sum(),
            (bg & ~gt & tis).sum(),
            (bg & tis).sum(),
            (~gt & tis).sum(),
            pm.size,
        ]

    def ratio(a: int, b: int) -> float:
        return float(a / b) if b else float("nan")

    return {
        "nucleus_precision": ratio(c[0], c[1]),
        "nucleus_coverage": ratio(c[0], c[2]),
        "background_precision": ratio(c[3], c[4]),
        "tissue_background_precision": ratio(c[5], c[6]),
        "tissue_background_coverage": ratio(c[5], c[7]),
        "confident": ratio(c[1] + c[4], c[8]),
    }
