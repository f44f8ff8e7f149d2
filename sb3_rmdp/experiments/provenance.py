"""Where and with what a cell ran: the machine and the package versions recorded in every store row."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

#: distributions whose versions a store row records (those installed)
DISTRIBUTIONS = (
    "sb3-rmdp",
    "stable-baselines3",
    "sb3-contrib",
    "torch",
    "gymnasium",
    "mujoco",
    "numpy",
    "scikit-learn",
    "ray",
)


def versions() -> dict[str, str]:
    """``{"python": ..., distribution: version}`` for Python and each installed :data:`DISTRIBUTIONS`."""
    found = {"python": sys.version.split()[0]}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    """The platform, CPU model, core count and GPU of this machine (runs are CPU runs)."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": "none (CPU run)",
    }


def machine_summary() -> str:
    """One short line for a store row: ``"<cpu> x<cores>, <node>"``."""
    return f"{cpu_name()} x{os.cpu_count()}, {platform.node()}"


def versions_summary() -> str:
    """One short line for a store row: ``"python=3.11.7 sb3-rmdp=0.1.0 torch=2.13.0 ..."``."""
    return " ".join(f"{name}={version}" for name, version in versions().items())
