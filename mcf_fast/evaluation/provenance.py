"""Provenance of a result: the machine it ran on and the mcf_fast source it ran."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["machine_description", "machine_line", "source_version"]


def machine_description(device: str = "cpu") -> dict[str, Any]:
    """The machine a run happened on: OS, CPU model and count, library versions, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "os": platform.platform(terse=True),
        "cpu": cpu,
        "cpu_cores": n_cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if "torch" in sys.modules or device != "cpu":
        import torch

        info["torch"] = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def source_version() -> str:
    """mcf_fast's version, plus the git commit (and '+dirty') when run from a checkout."""
    import subprocess

    from mcf_fast import __version__

    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "mcf_fast",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return __version__
    flag = "+dirty" if dirty.stdout.strip() else ""
    return f"{__version__} (git {commit.stdout.strip()}{flag})"


def machine_line(m: dict[str, Any]) -> str:
    s = f"{m['cpu']} ({m['cpu_cores']} cores), {m['os']}, Python {m['python']}"
    if "gpu" in m:
        s += f", GPU {m['gpu']}"
    return s
