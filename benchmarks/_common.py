"""What the throughput, threads and profile benchmarks share: writing a result set (CSV, JSON, PNG)."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def result_path(stem: Path, extension: str) -> Path:
    """The file ``stem`` + ``extension`` of a result set; ``stem`` may hold dots (``..._r9.5``)."""
    if stem.suffix in (".csv", ".json", ".png"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + extension)


def write_results(
    rows: list[dict[str, Any]],
    out: Path,
    meta: dict[str, Any],
    plot: Callable[[list[dict[str, Any]], Path], None],
) -> None:
    """``out.csv`` (the rows, every row's keys in first-seen order), ``out.json`` (the command line and
    date, then ``meta``: machine, versions, seeds, wall time...) and ``out.png`` (``plot(rows, path)``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(f for row in rows for f in row))
    with open(result_path(out, ".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    with open(result_path(out, ".json"), "w") as f:
        json.dump({**header, **meta}, f, indent=2)
    plot(rows, result_path(out, ".png"))
    print(f"wrote {result_path(out, '.csv')}, .json and .png")
