"""Experiments as data: grid files, a resumable results store, local and Ray executors, reports.

``sb3-rmdp bench run GRID.toml`` runs a grid's unfinished cells (:mod:`sb3_rmdp.experiments.runner`)
into its store (:mod:`sb3_rmdp.experiments.store`); ``sb3-rmdp bench report GRID.toml`` writes its
tables and figures (:mod:`sb3_rmdp.experiments.report`). The experiments a grid may name:
:mod:`~sb3_rmdp.experiments.velocity` (MuJoCo velocity populations),
:mod:`~sb3_rmdp.experiments.resource_gathering` and :mod:`~sb3_rmdp.experiments.committee` (PACMAN).
"""

from sb3_rmdp.experiments.grid import Cell, Experiment, Grid, GridError, Param, cell_key, tasks
from sb3_rmdp.experiments.runner import LocalExecutor, RayExecutor, make_executor, plan, run_grid
from sb3_rmdp.experiments.store import Store, StoreError

__all__ = [
    "Cell",
    "Experiment",
    "Grid",
    "GridError",
    "LocalExecutor",
    "Param",
    "RayExecutor",
    "Store",
    "StoreError",
    "cell_key",
    "make_executor",
    "plan",
    "run_grid",
    "tasks",
]
