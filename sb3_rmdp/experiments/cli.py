"""``sb3-rmdp bench``: run a grid file into its store, resume it, estimate it, report it.

    sb3-rmdp bench run benchmarks/grids/figure3.toml --n-jobs 2          # local worker processes
    sb3-rmdp bench run benchmarks/grids/figure3.toml --dry-run           # cells left, env steps, core-hours
    sb3-rmdp bench run benchmarks/grids/figure3_full.toml --executor ray --address auto
    sb3-rmdp bench report benchmarks/grids/figure3.toml                  # tables (markdown) and figures

A rerun of the same grid file skips the cells its store holds; a killed run loses only the cells that
were running. User errors end with exit code 2 and one line naming the fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sb3_rmdp.experiments.grid import Grid, GridError
from sb3_rmdp.experiments.runner import (
    EXECUTORS,
    CellsFailed,
    default_n_jobs,
    describe,
    make_executor,
    run_grid,
)
from sb3_rmdp.experiments.store import Store

PROG = "sb3-rmdp bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the published experiments from their grid files, resumably, locally or on Ray.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", help="run the grid's unfinished cells, appending each to its store")
    run.add_argument("grid", type=Path, help="a grid file (.toml)")
    _store_option(run)
    run.add_argument("--executor", choices=EXECUTORS, default="local", help="where the cells run")
    run.add_argument(
        "--address",
        default=None,
        help="with --executor ray: auto (this node's cluster), ray://HOST:10001 or HOST:6379; "
        "none: a local Ray instance of --n-jobs CPUs",
    )
    run.add_argument(
        "--n-jobs", type=int, default=default_n_jobs(), help="worker processes (local) or CPUs of a local Ray"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the cells left, their env steps and core-hours; run none",
    )
    report = commands.add_parser("report", help="tables (markdown) and figures (PNG) from a grid's store")
    report.add_argument("grid", type=Path, help="the grid file whose store to report")
    _store_option(report)
    report.add_argument(
        "--out", type=Path, default=None, help="the folder for report.md and the figures (default: the store)"
    )
    report.add_argument(
        "--embed",
        type=Path,
        nargs="*",
        default=[],
        metavar="MARKDOWN",
        help="also write headline.md into these files, between <!-- bench: GRID --> and <!-- /bench -->",
    )
    return parser


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", type=Path, default=None, help="the store folder (default: the grid file's `store`)"
    )


def open_store(grid: Grid, folder: Path | None) -> Store:
    """The store of ``grid``: ``folder``, or the one its file names."""
    folder = folder or grid.store
    if folder is None:
        raise GridError(
            f'grid {grid.name!r} names no store; pass --store DIR or add store = "DIR" to its file.'
        )
    return Store(folder, grid.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sb3-rmdp bench`` with ``argv``; 0 on success, 1 if some cells failed (the others are in the
    store), 2 on a user error, 130 on Ctrl-C."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        grid = Grid.from_file(args.grid)
        store = open_store(grid, args.store)
        if args.command == "report":
            from sb3_rmdp.experiments.report import embed, write_report

            written = write_report(grid, store, args.out or store.folder)
            for path in written:
                print(f"wrote {os.path.normpath(path)}")
            headline = next((p for p in written if p.name == "headline.md"), None)
            for markdown in args.embed:
                if headline is not None and embed(markdown, grid.name, headline.read_text()):
                    print(f"wrote the headline into {markdown}")
            return 0
        if args.dry_run:
            describe(grid, store)
            return 0
        executor = make_executor(args.executor, args.n_jobs, args.address)
        run_grid(grid, store, executor)
        return 0
    except GridError as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except CellsFailed as error:
        print(f"{PROG} {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; the finished cells are in the store, rerun the same command to resume.",
            file=sys.stderr,
        )
        return 130
