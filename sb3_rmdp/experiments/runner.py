"""Run a grid's unfinished cells on an executor and append each finished cell to the store.

Executors:

- ``local`` (the default): a pool of worker processes on this machine, one fresh process per cell
  (``spawn``, one torch thread), no server;
- ``ray``: tasks of one CPU each on a Ray cluster (``address="auto"`` on a cluster node, or
  ``"ray://host:10001"``), or on a local Ray instance of ``n_jobs`` CPUs when no address is given. The
  cluster's nodes need ``sb3-rmdp`` installed (the cell function is sent by reference).

A cell is deterministic given its config (seeded), so both executors write the same row; only the
``wall_s``, ``executor``, ``machine`` and ``finished_at`` columns say where and when it ran.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlparse

from sb3_rmdp.experiments.grid import Cell, Grid, GridError, experiment_of
from sb3_rmdp.experiments.provenance import machine_summary, versions_summary
from sb3_rmdp.experiments.store import Store

EXECUTORS = ("local", "ray")


def run_cell(config: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one cell in this process: its metrics, wall time, machine and versions."""
    import torch as th

    th.set_num_threads(1)
    start = time.perf_counter()
    metrics = experiment_of(config["task"]).run(config)
    return {
        **metrics,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine_summary(),
        "versions": versions_summary(),
    }


#: ``(index of the config, its metrics, or the exception its cell raised)``
Result = tuple[int, dict[str, Any] | Exception]


class CellsFailed(RuntimeError):
    """Some cells raised; the others finished and are in the store. The message lists the failures."""


class LocalExecutor:
    """A pool of ``n_jobs`` worker processes on this machine; each cell runs in a fresh process."""

    name = "local"

    def __init__(self, n_jobs: int = 1):
        if n_jobs < 1:
            raise GridError(f"n_jobs={n_jobs}: run at least one worker (--n-jobs 1 or more).")
        self.n_jobs = n_jobs

    def map_unordered(
        self, function: Callable[[dict[str, Any]], dict[str, Any]], configs: Sequence[dict[str, Any]]
    ) -> Iterator[Result]:
        """``(index, function(configs[index]))`` as each finishes; at most ``n_jobs`` run at a time."""
        context = multiprocessing.get_context("spawn")
        # a fresh process per cell (Python 3.11+): no state, memory or MuJoCo log carried between cells
        if sys.version_info >= (3, 11):
            pool = ProcessPoolExecutor(self.n_jobs, mp_context=context, max_tasks_per_child=1)
        else:  # pragma: no cover - Python 3.10
            pool = ProcessPoolExecutor(self.n_jobs, mp_context=context)
        with pool:
            pending = {pool.submit(function, config): i for i, config in enumerate(configs)}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        index = pending.pop(future)
                        try:
                            yield index, future.result()
                        except Exception as error:  # the cell's own error: the grid goes on
                            yield index, error
            finally:
                for future in pending:
                    future.cancel()


class RayExecutor:
    """Cells as Ray tasks of one CPU each.

    :param address: ``"auto"`` (the cluster this node belongs to), ``"ray://host:port"`` (Ray Client),
        ``"host:port"`` (a head node's GCS), or ``None``: a local Ray instance of ``n_jobs`` CPUs.
    :raises GridError: if ``ray`` is not installed or the cluster cannot be reached.
    """

    name = "ray"

    def __init__(self, address: str | None = None, n_jobs: int | None = None):
        try:
            import ray
        except ImportError:
            raise GridError(
                "--executor ray needs Ray: pip install 'sb3-rmdp[ray]' (or pip install ray)."
            ) from None
        self.ray = ray
        self.address = address
        self.n_jobs = n_jobs
        if address not in (None, "auto"):
            _check_reachable(address)

    def map_unordered(
        self, function: Callable[[dict[str, Any]], dict[str, Any]], configs: Sequence[dict[str, Any]]
    ) -> Iterator[Result]:
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            try:
                if self.address is None:
                    ray.init(num_cpus=self.n_jobs, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=self.address, log_to_driver=False)
            except ConnectionError as error:
                raise GridError(
                    f"cannot reach a Ray cluster at {self.address!r} ({error}); start one with "
                    "`ray start --head` "
                    "and pass --address auto on its nodes, or ray://HEAD:10001 from elsewhere, or leave "
                    "--address out for a local Ray instance."
                ) from None
        try:
            task = ray.remote(num_cpus=1, max_retries=0)(function)
            pending = {task.remote(config): i for i, config in enumerate(configs)}
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        index = pending.pop(ref)
                        try:
                            yield index, ray.get(ref)
                        except Exception as error:  # the cell's own error (a RayTaskError): the grid goes on
                            yield index, error
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)
        finally:
            if started_here:
                ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once, with the fix, when nothing listens at a Ray address (Ray itself retries for long)."""
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    if parsed.scheme not in ("ray", "gcs") or not parsed.hostname or parsed.port is None:
        raise GridError(
            f"--address {address!r}: write auto, ray://HOST:PORT (Ray Client, port 10001 by default) or "
            "HOST:PORT (the head node's GCS, port 6379)."
        )
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            pass
    except OSError as error:
        raise GridError(
            f"cannot reach the Ray cluster at {address!r} ({error.strerror or error}); start it with "
            "`ray start --head` (and `--ray-client-server-port 10001` for ray://), check the host and port, "
            "or leave --address out for a local Ray instance."
        ) from None


def make_executor(name: str, n_jobs: int = 1, address: str | None = None) -> LocalExecutor | RayExecutor:
    """The executor called ``name`` (:data:`EXECUTORS`)."""
    if name == "local":
        if address is not None:
            raise GridError("--address is for --executor ray; the local executor needs none.")
        return LocalExecutor(n_jobs)
    if name == "ray":
        return RayExecutor(address, n_jobs)
    raise GridError(f"unknown executor {name!r}; choose one of {list(EXECUTORS)}.")


@dataclass(frozen=True)
class Plan:
    """What a grid still has to do against its store."""

    left: tuple[Cell, ...]
    """cells without a row"""
    runs: tuple[Cell, ...]
    """one cell per training run still needed (the others of its run share its row)"""
    copies: tuple[tuple[Cell, str], ...]
    """cells whose run already finished in the store: (cell, the finished cell's key)"""
    orphans: int
    """rows in the store that are no cell of this grid (a changed parameter or an older grid file)"""


def plan(grid: Grid, store: Store) -> Plan:
    """Which of ``grid``'s cells ``store`` lacks, and the training runs they need."""
    done = store.finished()
    keys = {cell.key for cell in grid.cells}
    left, runs, copies = [], [], []
    for cells in grid.runs().values():
        finished = next((c for c in cells if c.key in done), None)
        todo = [c for c in cells if c.key not in done]
        left += todo
        if not todo:
            continue
        if finished is not None:
            copies += [(c, finished.key) for c in todo]
        else:
            runs.append(todo[0])
    return Plan(tuple(left), tuple(runs), tuple(copies), len(done - keys))


def steps_per_second(store: Store, task: str) -> float:
    """The median measured rate of ``task``'s finished cells in ``store`` (env steps per wall second
    of one worker), or its experiment's planning rate."""
    rates = []
    for row in store.rows():
        if row.get("task") == task and not row.get("shared_with") and row.get("wall_s"):
            try:
                rates.append(Cell.of(_parsed(row)).env_steps() / float(row["wall_s"]))
            except (GridError, ValueError, ZeroDivisionError):
                continue
    return statistics.median(rates) if rates else experiment_of(task).steps_per_second[task]


def _parsed(row: dict[str, str]) -> dict[str, Any]:
    """A store row's config as a grid would give it (strings parsed by the task's parameter kinds)."""
    experiment = experiment_of(row["task"])
    config: dict[str, Any] = {"task": row["task"]}
    for name, param in experiment.params.items():
        text = row.get(name, "")
        if text == "":
            continue
        config[name] = text == "True" if param.kind is bool else param.kind(text)
    return config


def describe(grid: Grid, store: Store, out: TextIO | None = None) -> Plan:
    """Print what is left (``--dry-run``, to ``out`` or stdout): cells and runs per task, env steps and
    core-hours. Writes nothing."""
    out = out or sys.stdout
    todo = plan(grid, store)
    print(
        f"grid {grid.name!r}: {len(grid.cells)} cells, {len(grid.cells) - len(todo.left)} finished in "
        f"{os.path.normpath(store.folder)}",
        file=out,
    )
    if todo.orphans:
        print(
            f"  ({todo.orphans} rows of the store are no cell of this grid: kept, not reported as its cells)",
            file=out,
        )
    total_steps, total_hours = 0, 0.0
    for task in dict.fromkeys(c.config["task"] for c in grid.cells):
        left = [c for c in todo.left if c.config["task"] == task]
        runs = [c for c in todo.runs if c.config["task"] == task]
        steps = sum(c.env_steps() for c in runs)
        rate = steps_per_second(store, task)
        hours = steps / rate / 3600
        total_steps, total_hours = total_steps + steps, total_hours + hours
        print(
            f"  {task:<18} {len(left):>5} cells left, {len(runs):>5} runs, {steps:>15,} env steps, "
            f"{hours:>8.1f} core-hours at {rate:,.0f} steps/s",
            file=out,
        )
    print(
        f"  {'total':<18} {len(todo.left):>5} cells left, {len(todo.runs):>5} runs, {total_steps:>15,} "
        f"env steps, {total_hours:>8.1f} core-hours",
        file=out,
    )
    return todo


def run_grid(
    grid: Grid,
    store: Store,
    executor: LocalExecutor | RayExecutor,
    out: TextIO | None = None,
) -> int:
    """Run every cell of ``grid`` that ``store`` lacks; each row is in the store as soon as its cell ends.

    A cell that raises is reported and left out of the store; the grid goes on with the others.

    :param out: where the progress lines go (default: stdout).
    :return: the number of rows appended.
    :raises CellsFailed: after the last cell, if any cell raised (naming each and its error).
    """
    out = out or sys.stdout
    todo = plan(grid, store)
    appended = 0
    for cell, source in todo.copies:
        store.append([_shared_row(cell, store.row(source) or {}, executor.name)])
        appended += 1
    if not todo.runs:
        print(f"grid {grid.name!r}: all {len(grid.cells)} cells are in {store.path}", file=out)
        return appended
    sharers = {run.run_key: [c for c in todo.left if c.run_key == run.run_key] for run in todo.runs}
    print(
        f"grid {grid.name!r}: {len(todo.runs)} runs for {len(todo.left)} cells left "
        f"({len(grid.cells) - len(todo.left)} finished) on {executor.name}",
        file=out,
        flush=True,
    )
    started = time.perf_counter()
    configs = [run.config for run in todo.runs]
    failures: list[str] = []
    for done, (index, result) in enumerate(executor.map_unordered(run_cell, configs), 1):
        run = todo.runs[index]
        elapsed = time.perf_counter() - started
        if isinstance(result, Exception):
            failures.append(f"{run.label()} ({run.key}): {type(result).__name__}: {result}")
            print(f"[{done}/{len(todo.runs)}] {run.label()}: FAILED, {failures[-1]}", file=out, flush=True)
            continue
        rows = []
        for cell in sharers[run.run_key]:
            row = {"cell": cell.key, **cell.config, **result, "executor": executor.name}
            row["shared_with"] = "" if cell is run else run.config.get("algorithm", "")
            row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            rows.append(row)
        store.append(rows)
        appended += len(rows)
        welfare = result.get("welfare")
        eta = elapsed / done * (len(todo.runs) - done)
        print(
            f"[{done}/{len(todo.runs)}] {run.label()}: welfare {welfare} in {result['wall_s']:.0f}s "
            f"(elapsed {elapsed / 60:.0f} min, about {math.ceil(eta / 60)} min left)",
            file=out,
            flush=True,
        )
    if failures:
        raise CellsFailed(
            f"{len(failures)} of {len(todo.runs)} runs failed (their cells are not in {store.path}; the "
            "others are): " + "; ".join(failures) + ". Fix the cause, then rerun the same command: it runs "
            "only the cells left."
        )
    return appended


def _shared_row(cell: Cell, source: dict[str, str], executor: str) -> dict[str, Any]:
    """``cell``'s row copied from the finished row of its shared run."""
    experiment = cell.experiment
    metrics = {name: source.get(name, "") for name in experiment.metrics}
    carried = {name: source.get(name, "") for name in ("wall_s", "machine", "versions")}
    return {
        "cell": cell.key,
        **cell.config,
        **metrics,
        **carried,
        "shared_with": source.get("shared_with") or source.get("algorithm", ""),
        "executor": executor,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def default_n_jobs() -> int:
    """One worker per core."""
    return os.cpu_count() or 1
