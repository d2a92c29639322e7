"""Shared fixtures: where the MoNuSeg data lives, small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    """The shared data folder: ``$MCF_DATA`` or ``../shared/data``; None when absent."""
    env = os.environ.get("MCF_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root if (root / "monuseg").is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("MoNuSeg data not found (set MCF_DATA or place it at ../shared/data)")
    return root


@pytest.fixture(scope="session")
def monuseg(shared_data: Path) -> Path:
    return shared_data / "monuseg"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests are opt-in: they run only when ``-m`` names the marker."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: opt in with `-m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
