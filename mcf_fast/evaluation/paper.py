"""The paper's reference numbers and its Table 3 switches (Feng et al., ICCV 2021)."""

from __future__ import annotations

from typing import Any

__all__ = ["DETECTION_ABLATIONS", "PAPER", "SEGMENTATION_ABLATIONS"]

#: Table 3 detection switches -> DetectionConfig fields
DETECTION_ABLATIONS: dict[str, dict[str, Any]] = {
    "-CFF": {"use_cff": False},
    "-MFF": {"use_mff": False},
    "H=1": {"top_h": 1},
    "mean": {"fusion": "mean"},
    "-GDBP": {"use_gdbp": False},
}
#: Table 3 segmentation switches -> SegmentationConfig fields
SEGMENTATION_ABLATIONS: dict[str, dict[str, Any]] = {
    "-seg.": {"use_network": False},
    "-self.": {"use_self_finetune": False},
    "-syn.": {"use_synthetic": False},
    "CE": {"loss": "ce"},
    "+weig.": {"loss": "weighted"},
}

#: The paper's MICCAI18 (MoNuSeg) numbers, in percent, original test samples ("score 1").
PAPER: dict[str, Any] = {
    "source": "Feng et al., ICCV 2021, Tables 1-3 (MICCAI18 = MoNuSeg 2018, score 1)",
    "table1": {  # segmentation
        "Hou (unsupervised)": {
            "PA": 89.14,
            "MPA": 76.95,
            "IoU": 52.51,
            "FWIoU": 80.05,
            "Dice": 68.87,
        },
        "Mahmood (weakly sup.)": {
            "PA": 86.27,
            "MPA": 75.88,
            "IoU": 47.61,
            "FWIoU": 76.35,
            "Dice": 64.51,
        },
        "MedT": {"PA": 91.05, "MPA": 85.25, "IoU": 64.50, "FWIoU": 83.93, "Dice": 78.42},
        "FCN-based": {"PA": 85.41, "MPA": 81.83, "IoU": 52.87, "FWIoU": 76.12, "Dice": 69.17},
        "U-Net (supervised)": {
            "PA": 91.72,
            "MPA": 87.04,
            "IoU": 67.35,
            "FWIoU": 85.10,
            "Dice": 80.49,
        },
        "Mask R-CNN": {"PA": 89.78, "MPA": 80.85, "IoU": 57.98, "FWIoU": 81.57, "Dice": 73.40},
        "MCF": {"PA": 86.39, "MPA": 81.43, "IoU": 53.66, "FWIoU": 77.30, "Dice": 69.84},
        "Detection": {"PA": 72.50, "MPA": 76.70, "IoU": 41.05, "FWIoU": 60.33, "Dice": 58.21},
    },
    "table2": {  # detection; the matching radius is not stated in the paper
        "CAE": {"P": 43.71, "R": 64.14, "F": 51.99},
        "SSAE": {"P": 62.54, "R": 57.80, "F": 60.08},
        "Mask R-CNN": {"P": 82.73, "R": 79.31, "F": 80.98},
        "MCF": {"P": 65.40, "R": 78.99, "F": 71.56},
    },
    "table3_detection": {
        "-CFF": {"P": 59.92, "R": 79.57, "F": 68.36},
        "-MFF": {"P": 50.27, "R": 89.68, "F": 64.43},
        "H=1": {"P": 55.12, "R": 77.16, "F": 64.30},
        "mean": {"P": 53.84, "R": 76.33, "F": 63.14},
        "-GDBP": {"P": 64.36, "R": 71.82, "F": 67.89},
        "MCF": {"P": 65.40, "R": 78.99, "F": 71.56},
    },
    "table3_segmentation": {
        "-seg.": {"PA": 72.50, "MPA": 76.70, "IoU": 41.05, "FWIoU": 60.33, "Dice": 58.21},
        "-self.": {"PA": 85.56, "MPA": 78.71, "IoU": 50.01, "FWIoU": 75.95, "Dice": 66.68},
        "-syn.": {"PA": 84.38, "MPA": 79.62, "IoU": 49.71, "FWIoU": 74.63, "Dice": 66.41},
        "CE": {"PA": 86.32, "MPA": 69.47, "IoU": 38.63, "FWIoU": 61.39, "Dice": 55.73},
        "+weig.": {"PA": 73.69, "MPA": 77.52, "IoU": 40.99, "FWIoU": 61.98, "Dice": 58.14},
        "MCF": {"PA": 86.39, "MPA": 81.43, "IoU": 53.66, "FWIoU": 77.30, "Dice": 69.84},
    },
}
