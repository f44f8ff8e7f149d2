"""Helpers shared by the welfare benchmarks: mean and standard error, CSV writing."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def result_path(stem: Path, extension: str) -> Path:
    """The file ``stem`` + ``extension`` of a result set (``.csv``, ``.json``, ``.png``).

    ``stem`` names the set without extension and may hold dots (``..._lr0.01``), which
    ``Path.with_suffix`` would take for an extension; a stem given with one of the three extensions
    loses it first.
    """
    if stem.suffix in (".csv", ".json", ".png"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + extension)


def check_mergeable(rows: list[dict[str, Any]], cell: tuple[str, ...], same: tuple[str, ...]) -> None:
    """Refuse to pool rows of several runs that do not belong together.

    :param cell: the columns naming a cell (e.g. algorithm, k, seed): no cell may come twice.
    :param same: columns that must hold one value across the rows (e.g. the budget); empty values
        (a column a row does not use) are ignored.
    :raises ValueError: naming the column or the repeated cells.
    """
    for column in same:
        values = {str(r.get(column, "")) for r in rows} - {""}
        if len(values) > 1:
            raise ValueError(f"--merge combines runs of one {column}, got {sorted(values)}.")
    cells = [tuple(r[c] for c in cell) for r in rows]
    repeated = sorted({c for c in cells if cells.count(c) > 1})
    if repeated:
        raise ValueError(
            f"--merge: cells {repeated} ({', '.join(cell)}) appear in more than one run; merge runs of "
            "other seeds."
        )


#: Numeric columns of the welfare benchmarks' CSVs (parsed by :func:`read_rows` where present).
INT_COLUMNS = (
    "k",
    "n_agents",
    "seed",
    "budget_per_representative",
    "interval_breaks",
    "served",
    "served_interval_breaks",
)
FLOAT_COLUMNS = (
    "log_std_init",
    "end_to_end_lr",
    "end_to_end_init_scale",
    "end_to_end_mixing",
    "welfare_eval",
    "welfare_train",
    "welfare_eval_reassigned",
    "welfare_eval_argmax",
    "welfare_eval_best_response_latest",
    "interval_welfare_share",
    "optimal_welfare",
    "upper_bound",
    "fraction_of_bound",
    "wall_s",
)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A welfare results CSV's rows, with the numeric columns it has parsed."""
    with open(path, newline="") as f:
        rows: list[dict[str, Any]] = list(csv.DictReader(f))
    for row in rows:
        for key in INT_COLUMNS:
            if row.get(key) not in (None, ""):
                row[key] = int(row[key])
        for key in FLOAT_COLUMNS:
            if row.get(key) not in (None, ""):
                row[key] = float(row[key])
    return rows


def read_run(stem: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One earlier run of a welfare benchmark: its rows and its JSON sidecar (with the CSV's name)."""
    rows = read_rows(result_path(stem, ".csv"))
    sidecar = json.loads(result_path(stem, ".json").read_text())
    return rows, {"csv": result_path(stem, ".csv").name, **sidecar}


def run_header() -> dict[str, str]:
    """The first keys of every sidecar: the command line and the date."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def merged_meta(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The sidecar of a merge: :func:`run_header`, the ``machine`` and ``versions`` where every merged
    run has the same, each run's own sidecar and their total wall time."""
    meta: dict[str, Any] = run_header()
    for key in ("machine", "versions"):
        values = [run.get(key) for run in runs]
        if values and values[0] is not None and all(v == values[0] for v in values):
            meta[key] = values[0]
    meta["merged_runs"] = runs
    meta["wall_s"] = round(sum(float(run["wall_s"]) for run in runs), 1)
    return meta


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    if len(array) == 0:
        return float("nan"), float("nan")
    se = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else 0.0
    return float(array.mean()), se


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per cell; keys starting with ``_`` (in-memory extras such as paths) are left out.

    The columns are every row's keys in first-seen order (rows of merged runs may differ); a row
    without a column leaves it empty.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(f for row in rows for f in row if not f.startswith("_")))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval="")
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
    write_csv(rows, result_path(out, ".csv"))
    with open(result_path(out, ".json"), "w") as f:
        json.dump({**run_header(), **meta}, f, indent=2)
    plot(rows, result_path(out, ".png"))
    print(f"wrote {result_path(out, '.csv')}, .json and .png")
