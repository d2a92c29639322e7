"""Named configurations for ``--preset``.

- ``quick``: sized so that a whole ``mcf evaluate`` on MoNuSeg (fit on the 30 train images,
  predict the 14 test images) runs in about half an hour on 2 CPU cores: a narrower U-Net,
  smaller crops, fewer steps, at most two rounds.
- ``paper``: the paper's settings (sec. 3; every threshold and detection parameter at its
  default) with a full-size U-Net and the longer schedule; meant for a GPU, or a CPU with
  hours to spare.

The step counts of ``quick`` were calibrated on a 2-core CPU (docs/performance.md).
"""

from __future__ import annotations

from mcf_fast.config import DetectionConfig, MCFConfig, SegmentationConfig

__all__ = ["PRESETS", "get_preset"]

PRESETS: dict[str, MCFConfig] = {
    "quick": MCFConfig(
        detection=DetectionConfig(),
        segmentation=SegmentationConfig(
            width=16, depth=4, crop_size=128, batch_size=8, steps=300, self_steps=100,
            lr=2e-3, max_rounds=2,
        ),
    ),
    "paper": MCFConfig(
        detection=DetectionConfig(),
        segmentation=SegmentationConfig(
            width=32, depth=4, crop_size=256, batch_size=8, steps=3000, self_steps=1000,
            lr=1e-3, max_rounds=3,
        ),
    ),
}


def get_preset(name: str) -> MCFConfig:
    """The preset called ``name``.

    Raises
    ------
    ConfigError
        For an unknown name.
    """
    from mcf_fast.errors import ConfigError

    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset = {name!r}: expected one of {sorted(PRESETS)}") from None
