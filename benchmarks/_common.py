"""Helpers shared by the welfare benchmarks: mean and standard error, CSV writing."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    if len(array) == 0:
        return float("nan"), float("nan")
    se = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else 0.0
    return float(array.mean()), se


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per cell; keys starting with ``_`` (in-memory extras such as paths) are left out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [f for f in rows[0] if not f.startswith("_")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def save_welfare_vs_k(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """``sb3_rmdp.plotting.plot_welfare_vs_k`` on a log k axis, saved as a PNG."""
    from sb3_rmdp.plotting import plot_welfare_vs_k

    fig = plot_welfare_vs_k(rows, title=title)
    fig.set_size_inches(6.5, 4.2)
    ax = fig.axes[0]
    ks = sorted({int(r["k"]) for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def write_results(
    rows: list[dict[str, Any]],
    out: Path,
    meta: dict[str, Any],
    plot: Callable[[list[dict[str, Any]], Path], None],
) -> None:
    """``out.csv`` (the rows), ``out.json`` (the command line and date, then ``meta``: machine, versions,
    seeds, wall time, notes...) and ``out.png`` (``plot(rows, path)``)."""
    write_csv(rows, out.with_suffix(".csv"))
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    with open(out.with_suffix(".json"), "w") as f:
        json.dump({**header, **meta}, f, indent=2)
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.csv')}, .json and .png")
