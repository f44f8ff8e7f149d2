"""Experiments as data: a grid file (TOML) names a task, its parameters and their axes; its cells are
the product.

A grid file::

    name = "figure3"                     # the store remembers it: one store, one grid
    description = "The paper's Figure 3, reduced to two cores."
    store = "../results/figure3"         # where its results go, relative to this file

    [defaults]                           # every cell; a list is an axis
    seed = [0, 1, 2]
    task = ["HalfCheetah", "Hopper", "Walker2d", "Ant"]
    algorithm = ["em", "end_to_end", "kmeans", "random"]
    n_agents = 100
    budget_per_representative = 100_000

    [[cells]]                            # a block of cells: the defaults, overridden; blocks run in order
    k = 5
    [[cells]]
    k = [1, 2, 10]

Within a block the product runs in the order the keys are written, the first varying slowest: the
defaults' keys in their order (a key the block overrides keeps its place), then the block's own. A
value that is itself a list (a network's layers) is written as a list of one list: ``net_arch = [[64, 64]]``.

Every cell is resolved to its full config (each parameter of its task's :class:`Experiment`, defaults
filled in; a parameter of another algorithm blanked to ``None``) and keyed by a hash of it
(:func:`cell_key`), so a store knows which cells are done whatever the order or file they came from.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: the top-level keys of a grid file
GRID_KEYS = ("name", "description", "store", "defaults", "cells")


class GridError(ValueError):
    """A grid file or a grid's cell that cannot be run; the message names the problem and the fix."""


@dataclass(frozen=True)
class Param:
    """One parameter of an experiment's cells.

    :param kind: the Python type of its values (``int``, ``float``, ``str``, ``bool``, ``list``).
    :param default: the value of a cell that does not set it.
    :param choices: the values allowed, or ``None`` for any of ``kind``.
    :param minimum: the smallest value allowed (numbers), or ``None``.
    :param algorithms: the algorithms it applies to (``None``: every one); in the cells of the others
        it is blanked to ``None``, so that it never splits their keys.
    :param keyed_default: whether it enters the cell key while it holds its default. A parameter added
        to an experiment after stores were written sets ``False``, so that their cells keep their keys.
    :param help: one line for the docs.
    """

    kind: type
    default: Any
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    algorithms: tuple[str, ...] | None = None
    keyed_default: bool = True
    help: str = ""

    def check(self, name: str, value: Any, where: str) -> Any:
        """``value`` as this parameter's kind; :class:`GridError` naming ``where`` if it is not one."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or (self.kind in (int, float) and isinstance(value, bool)):
            raise GridError(
                f"{where}: {name} = {value!r} is a {type(value).__name__}; write a {self.kind.__name__}"
                + (f" (one of {list(self.choices)})" if self.choices else "")
                + "."
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise GridError(f"{where}: {name} = {value!r}; write a finite number.")
        if self.choices is not None and value not in self.choices:
            raise GridError(f"{where}: unknown {name} {value!r}; choose one of {list(self.choices)}.")
        if self.minimum is not None and isinstance(value, (int, float)) and value < self.minimum:
            raise GridError(f"{where}: {name} = {value!r}; it must be at least {self.minimum}.")
        return value


@dataclass(frozen=True)
class Experiment:
    """What a grid's cells run: one family of tasks, its parameters and its cell function.

    :param name: the experiment (``"velocity"``); it enters every cell key.
    :param tasks: the task names a grid's ``task`` may take (``"HalfCheetah"``...).
    :param params: every parameter besides ``task``, with its default.
    :param run: ``config -> metrics``: trains and evaluates one cell (config: ``task`` and every param).
    :param env_steps: ``config -> int``: the env steps a cell takes (training and evaluation), for
        ``--dry-run``'s estimate.
    :param steps_per_second: a planning rate per task (env steps per second on one core), used by
        ``--dry-run`` until the store holds measured cells of the task.
    :param shares_k1: at ``k = 1`` every algorithm trains the same single policy (bit for bit), so the
        cells of one k = 1 config that differ only in ``algorithm`` run once and share the row.
    :param metrics: the metric columns a row has, in the store's column order.
    """

    name: str
    tasks: tuple[str, ...]
    params: Mapping[str, Param]
    run: Callable[[dict[str, Any]], dict[str, Any]]
    env_steps: Callable[[dict[str, Any]], int]
    steps_per_second: Mapping[str, float]
    shares_k1: bool = False
    metrics: tuple[str, ...] = ()


_EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Make ``experiment``'s tasks available to grid files.

    :raises ValueError: for a task another experiment has, or a parameter named as a metric (a store row
        holds both in one column each).
    """
    clash = sorted(set(experiment.params) & set(experiment.metrics or ()))
    if clash:
        raise ValueError(
            f"experiment {experiment.name!r}: {clash} are both parameters and metrics; rename one."
        )
    for task in experiment.tasks:
        if task in _TASKS and _TASKS[task] != experiment.name:
            raise ValueError(f"task {task!r} is already registered by {_TASKS[task]!r}")
        _TASKS[task] = experiment.name
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


_TASKS: dict[str, str] = {}


def _load_builtin() -> None:
    # The built-in experiments register themselves on import; importing them here keeps this module free
    # of torch (they import the algorithms only inside their cell functions).
    from sb3_rmdp.experiments import committee, resource_gathering, velocity  # noqa: F401


def tasks() -> dict[str, str]:
    """``{task: experiment name}`` of every registered task."""
    _load_builtin()
    return dict(_TASKS)


def experiment_of(task: str) -> Experiment:
    """The experiment that runs ``task``; :class:`GridError` listing the tasks if it is unknown."""
    known = tasks()
    if task not in known:
        raise GridError(f"unknown task {task!r}; choose one of {sorted(known)}.")
    return _EXPERIMENTS[known[task]]


def resolve(values: Mapping[str, Any], where: str = "cell") -> dict[str, Any]:
    """The full config of one cell: ``task``, then every parameter of its experiment, checked.

    :raises GridError: on a missing or unknown task, an unknown key, or a bad value.
    """
    if "task" not in values:
        raise GridError(f"{where}: no task; add task = one of {sorted(tasks())} to [defaults] or the block.")
    experiment = experiment_of(values["task"]) if isinstance(values["task"], str) else None
    if experiment is None:
        raise GridError(f"{where}: task = {values['task']!r}; write a task name, one of {sorted(tasks())}.")
    unknown = sorted(set(values) - {"task"} - set(experiment.params))
    if unknown:
        raise GridError(
            f"{where}: unknown key(s) {unknown} for task {values['task']!r} "
            f"(experiment {experiment.name!r}); "
            f"its keys are {sorted(experiment.params)}."
        )
    config: dict[str, Any] = {"task": values["task"]}
    for name, param in experiment.params.items():
        config[name] = param.check(name, values[name], where) if name in values else param.default
    algorithm = config.get("algorithm")
    for name, param in experiment.params.items():
        if param.algorithms is not None and algorithm not in param.algorithms:
            config[name] = None
    return config


def _keyed(config: Mapping[str, Any]) -> dict[str, Any]:
    experiment = experiment_of(config["task"])
    keyed = {"experiment": experiment.name, "task": config["task"]}
    for name, param in experiment.params.items():
        if param.keyed_default or config[name] != param.default:
            keyed[name] = config[name]
    return keyed


def _digest(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_key(config: Mapping[str, Any]) -> str:
    """The 16-hex-digit key of a resolved cell config: a SHA-256 of its canonical JSON."""
    return _digest(_keyed(config))


def run_key(config: Mapping[str, Any]) -> str:
    """The key of the training run a cell needs: its :func:`cell_key`, except that k = 1 cells of an
    experiment that :attr:`~Experiment.shares_k1` share one run whatever their algorithm."""
    experiment = experiment_of(config["task"])
    if not (experiment.shares_k1 and config.get("k") == 1):
        return cell_key(config)
    keyed = _keyed(config)
    keyed["algorithm"] = "*"
    for name, param in experiment.params.items():
        if param.algorithms is not None:
            keyed.pop(name, None)
    return _digest(keyed)


@dataclass(frozen=True)
class Cell:
    """One resolved cell of a grid: its key, its run's key and its full config."""

    key: str
    run_key: str
    config: dict[str, Any] = field(hash=False)

    @classmethod
    def of(cls, values: Mapping[str, Any], where: str = "cell") -> Cell:
        """The cell of ``values`` (a task and some parameters), resolved and keyed."""
        resolved = resolve(values, where)
        return cls(cell_key(resolved), run_key(resolved), resolved)

    @property
    def experiment(self) -> Experiment:
        return experiment_of(self.config["task"])

    def env_steps(self) -> int:
        return self.experiment.env_steps(self.config)

    def label(self) -> str:
        """``"HalfCheetah em k=5 seed=0"``: the axes a reader tells cells apart by."""
        parts = [str(self.config["task"])]
        for name in ("algorithm", "k", "n_agents", "seed"):
            if self.config.get(name) is not None:
                parts.append(str(self.config[name]) if name == "algorithm" else f"{name}={self.config[name]}")
        return " ".join(parts)


@dataclass(frozen=True)
class Grid:
    """A grid file, read: its name, description, default store folder and cells (in run order)."""

    name: str
    description: str
    store: Path | None
    cells: tuple[Cell, ...]
    source: Path | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> Grid:
        """Read and resolve a grid file; :class:`GridError` names the file and what to fix."""
        path = Path(path)
        if not path.is_file():
            raise GridError(f"grid file {str(path)!r} not found; give the path of a .toml grid file.")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise GridError(f"{path}: not valid TOML ({error}); fix the line it names.") from None
        grid = cls.from_dict(data, where=str(path))
        store = Path(data["store"]) if "store" in data else None
        if store is not None and not store.is_absolute():
            store = path.parent / store
        return cls(grid.name, grid.description, store, grid.cells, source=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "grid") -> Grid:
        """A grid from the parsed TOML (see the module docstring for its keys)."""
        unknown = sorted(set(data) - set(GRID_KEYS))
        if unknown:
            raise GridError(
                f"{where}: unknown top-level key(s) {unknown}; a grid file has {list(GRID_KEYS)}."
            )
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise GridError(f'{where}: no name; add name = "..." (the store remembers the grid by it).')
        defaults = data.get("defaults", {})
        blocks = data.get("cells", [{}])
        if not isinstance(defaults, dict) or not isinstance(blocks, list) or not blocks:
            raise GridError(f"{where}: write [defaults] as a table and each block of cells as [[cells]].")
        cells: dict[str, Cell] = {}
        for number, block in enumerate(blocks, 1):
            for values in _product({**defaults, **block}):
                cell = Cell.of(values, f"{where}, [[cells]] block {number}")
                cells.setdefault(cell.key, cell)
        return cls(name, str(data.get("description", "")), None, tuple(cells.values()))

    def runs(self) -> dict[str, list[Cell]]:
        """The training runs the cells need, in cell order: ``{run key: its cells}``."""
        groups: dict[str, list[Cell]] = {}
        for cell in self.cells:
            groups.setdefault(cell.run_key, []).append(cell)
        return groups


def _product(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the list-valued entries of ``values`` (the first key varies slowest)."""
    axes: list[Sequence[Any]] = [v if isinstance(v, list) else [v] for v in values.values()]
    return [dict(zip(values, combination)) for combination in itertools.product(*axes)]
