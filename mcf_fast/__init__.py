"""mcf_fast: few-shot nuclei detection and segmentation in pathology images.

An implementation of the Mutual-Complementing Framework (Feng et al., ICCV 2021): a bank of
correlation filters built from about ten template nuclei detects nuclei and yields pseudo
masks; a U-Net trained on them segments; the two branches complement each other.

Heavy parts (torch, dask) are imported only when used, so ``import mcf_fast`` stays quick.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from mcf_fast.errors import ConfigError, DataError, FormatError, InputError, McfError

try:
    __version__ = version("mcf-fast")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it; resolved on first access
_LAZY = {
    "DetectionConfig": "mcf_fast.config",
    "SegmentationConfig": "mcf_fast.config",
    "MCFConfig": "mcf_fast.config",
    "Template": "mcf_fast.io.templates",
    "TemplateSet": "mcf_fast.io.templates",
    "Detector": "mcf_fast.detection.detector",
    "Detection": "mcf_fast.detection.detector",
    "MCF": "mcf_fast.framework.fit",
    "MCFModel": "mcf_fast.framework.model",
    "Prediction": "mcf_fast.framework.model",
    "read_image": "mcf_fast.io.images",
}

__all__ = [
    "McfError",
    "InputError",
    "ConfigError",
    "FormatError",
    "DataError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mcf_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
