"""Benchmarks read MoNuSeg tiles from ``$MCF_DATA`` or ``../shared/data`` and skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def monuseg() -> Path:
    env = os.environ.get("MCF_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if not (root / "monuseg").is_dir():
        pytest.skip("MoNuSeg data not found (set MCF_DATA or place it at ../shared/data)")
    return root / "monuseg"
