"""The results store of a grid: a folder with ``cells.csv`` (one row per finished cell) and ``store.json``.

A row is appended, flushed and synced as each cell finishes, so a grid killed at any moment keeps every
cell that finished; a rerun skips them. Rows are never rewritten, except to add a column that a new row
brings (the whole file is written beside and renamed into place, so a crash leaves the old one whole).
``store.json`` names the grid that writes the store: another grid is refused, so a store is never
overwritten by a different experiment.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sb3_rmdp.experiments.grid import GridError

CELLS = "cells.csv"
META = "store.json"
FORMAT = 1
#: the first columns of every row, in this order (the config columns follow, then the metrics)
LEAD_COLUMNS = ("cell", "task")
#: the last columns of every row: how and where the cell ran
TRAIL_COLUMNS = ("shared_with", "wall_s", "executor", "machine", "versions", "finished_at")


class StoreError(GridError):
    """A store folder that cannot be used for this grid; the message names the fix."""


def _text(value: Any) -> str:
    """A value as a CSV field: ``None`` empty, lists space-separated, the rest ``str``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class Store:
    """The finished cells of one grid, in ``folder``.

    :param folder: the store's folder (created if missing; an existing folder must be empty or a store of
        the same grid).
    :param grid_name: the grid that writes it (``name`` in its grid file).
    :raises StoreError: if the folder is a file, holds other files, or is the store of another grid.
    """

    def __init__(self, folder: str | Path, grid_name: str):
        self.folder = Path(folder)
        self.grid_name = grid_name
        if self.folder.exists() and not self.folder.is_dir():
            raise StoreError(f"store {str(self.folder)!r} is a file; give a folder (--store DIR).")
        meta = self.folder / META
        if meta.is_file():
            try:
                written_by = json.loads(meta.read_text()).get("grid")
            except json.JSONDecodeError:
                raise StoreError(f"{meta} is damaged (not JSON); restore it from version control.") from None
            if written_by != grid_name:
                raise StoreError(
                    f"store {str(self.folder)!r} holds the results of grid {written_by!r}, "
                    f"not {grid_name!r}; "
                    f"give this grid its own folder (--store DIR) or run the grid file that wrote it."
                )
        elif self.folder.is_dir() and any(self.folder.iterdir()):
            raise StoreError(
                f"{str(self.folder)!r} is not empty and is no store (no {META}); give an empty or new folder "
                "(--store DIR): a store is never written over other files."
            )
        self._columns: list[str] = []
        self._rows: list[dict[str, str]] = []
        self._read()

    @property
    def path(self) -> Path:
        """The rows' CSV file."""
        return self.folder / CELLS

    def _read(self) -> None:
        if not self.path.is_file():
            return
        text = self.path.read_text()
        if text and not text.endswith("\n"):
            # a row cut by a kill mid-write: the cell is not finished, its partial line is dropped
            text = text[: text.rfind("\n") + 1]
            _write_atomic(self.path, text)
        reader = csv.DictReader(io.StringIO(text))
        self._columns = list(reader.fieldnames or [])
        self._rows = list(reader)

    def rows(self) -> list[dict[str, str]]:
        """Every finished cell's row (strings, as in the CSV), in the order they finished."""
        return [dict(row) for row in self._rows]

    def finished(self) -> set[str]:
        """The keys of the finished cells."""
        return {row["cell"] for row in self._rows}

    def row(self, key: str) -> dict[str, str] | None:
        """The row of cell ``key``, or ``None``."""
        return next((dict(r) for r in self._rows if r["cell"] == key), None)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add finished cells' rows (each with a ``cell`` key not yet in the store) and write them to disk.

        :raises ValueError: if a cell is already in the store (its row is never replaced).
        """
        new = [{name: _text(value) for name, value in row.items()} for row in rows]
        done = self.finished()
        for row in new:
            if row["cell"] in done:
                raise ValueError(
                    f"cell {row['cell']} is already in {self.path}; a finished row is never replaced."
                )
            done.add(row["cell"])
        if not new:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / META).is_file():
            meta = {
                "grid": self.grid_name,
                "format": FORMAT,
                "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
            _write_atomic(self.folder / META, json.dumps(meta, indent=2) + "\n")
        columns = self._columns + [c for row in new for c in row if c not in self._columns]
        columns = list(dict.fromkeys(columns))
        if columns != self._columns and self._rows:
            # a new column: the whole file is written beside and renamed into place
            self._columns = self._order(columns)
            self._rows += new
            _write_atomic(self.path, self._render(self._rows, header=True))
            return
        self._columns = self._order(columns) if not self._rows else self._columns
        with open(self.path, "a", newline="") as f:
            f.write(self._render(new, header=not self._rows))
            f.flush()
            os.fsync(f.fileno())
        self._rows += new

    def _order(self, columns: list[str]) -> list[str]:
        lead = [c for c in LEAD_COLUMNS if c in columns]
        trail = [c for c in TRAIL_COLUMNS if c in columns]
        return lead + [c for c in columns if c not in lead and c not in trail] + trail

    def _render(self, rows: list[dict[str, str]], header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self._columns, restval="", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
