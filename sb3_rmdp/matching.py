"""The E-step's assignment: each agent to a representative (or its outside option), under capacity limits.

Without limits each agent takes its best representative, which maximizes every increasing welfare
objective at once (:mod:`sb3_rmdp.objectives`); an agent with an outside option ``u_i`` declines every
representative that does not beat it. With at most ``c_max`` and/or at least ``c_min`` agents per
representative it is an assignment problem: a hard assignment's welfare under the utilitarian, Nash
and alpha-fair objectives is a sum over agents of ``f(Q[i, a_i])``, linear in the 0/1 choices, and its
linear program over the bipartite agent-representative graph has an integral optimum (the constraint
matrix is totally unimodular), which HiGHS's simplex returns. The egalitarian objective (the minimum)
is a bottleneck assignment: the largest threshold that a feasible assignment keeps every agent at or
above, found by bisection over the table's values, then the utilitarian best among those assignments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sb3_rmdp.objectives import DEFAULT_TEMPERATURE, ZERO_FLOOR, WelfareObjective, welfare_objective
from sb3_rmdp.welfare import OPT_OUT

__all__ = ["OPT_OUT", "AssignmentLimits", "best_assignment", "check_capacities"]


def check_capacities(n_agents: int, k: int, c_min: int | None, c_max: int | None, outside: bool) -> None:
    """Fail with the fix when no assignment can meet the limits.

    :raises ValueError: for negative or inverted limits, ``k * c_min > n_agents``, or (without outside
        options, where every agent is served) ``k * c_max < n_agents``.
    """
    for name, value in (("c_min", c_min), ("c_max", c_max)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0
        ):
            raise ValueError(f"{name}={value!r}: a capacity is a whole number of agents >= 0 (or None).")
    if c_min is not None and c_max is not None and c_min > c_max:
        raise ValueError(f"c_min={c_min} > c_max={c_max}: at least c_min agents cannot fit in c_max.")
    if c_min is not None and k * c_min > n_agents:
        raise ValueError(
            f"infeasible capacities: k * c_min = {k} * {c_min} = {k * c_min} > {n_agents} agents; lower "
            f"c_min to at most {n_agents // k}."
        )
    if c_max is not None and not outside and k * c_max < n_agents:
        raise ValueError(
            f"infeasible capacities: k * c_max = {k} * {c_max} = {k * c_max} < {n_agents} agents, and every "
            f"agent must be served; raise c_max to at least {-(-n_agents // k)}, or give outside options."
        )


def best_assignment(
    table: np.ndarray,
    welfare: str | tuple[str, float] | WelfareObjective = "utilitarian",
    c_min: int | None = None,
    c_max: int | None = None,
    outside: np.ndarray | None = None,
) -> np.ndarray:
    """The welfare-maximizing hard assignment of a table, under capacity limits and outside options.

    :param table: ``(n_agents, k)``: ``Q[i, j]``, agent i's return under representative j.
    :param welfare: the objective (see :func:`sb3_rmdp.objectives.welfare_objective`); it matters only
        under capacity limits.
    :param c_min: at least this many agents per representative (``None``: no minimum).
    :param c_max: at most this many agents per representative (``None``: no maximum).
    :param outside: ``(n_agents,)`` each agent's outside value ``u_i``, or ``None``: an agent is assigned
        only where that beats ``u_i`` (without limits), or where the objective gains.
    :return: ``(n_agents,)``: each agent's representative, or :data:`OPT_OUT` (``-1``) for an agent that
        takes its outside option. Without limits, ties go to the lowest index and to serving the agent.
    :raises ValueError: on bad shapes, non-finite values or infeasible limits.
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or 0 in table.shape:
        raise ValueError(f"table of shape {table.shape}: pass (n_agents, k).")
    if not np.all(np.isfinite(table)):
        raise ValueError("the table holds NaN or inf: every (agent, representative) return must be finite.")
    n_agents, k = table.shape
    if outside is not None:
        outside = np.asarray(outside, dtype=np.float64)
        if outside.shape != (n_agents,):
            raise ValueError(
                f"outside of shape {outside.shape}: give one outside value per agent, ({n_agents},) "
                "(a constant for all: np.full(n_agents, u))."
            )
        if not np.all(np.isfinite(outside)):
            raise ValueError("outside values must be finite.")
    check_capacities(n_agents, k, c_min, c_max, outside is not None)
    objective = welfare_objective(welfare)
    if c_min in (None, 0) and c_max is None:
        assignment = table.argmax(axis=1)
        if outside is not None:
            assignment = np.where(table.max(axis=1) > outside, assignment, OPT_OUT)
        return assignment
    if objective.name == "egalitarian":
        return _bottleneck(table, c_min or 0, c_max, outside)
    # an agent at 0 counts at a floor, as in the M-step's weights (log 0 would rule out every assignment)
    floor = ZERO_FLOOR * max(float(np.abs(table).mean()), np.finfo(np.float64).tiny)
    gains = _transform(objective, table, floor)
    assert gains is not None  # a table in, a table out
    return _linear(gains, c_min or 0, c_max, _transform(objective, outside, floor))


def _transform(objective: WelfareObjective, values: np.ndarray | None, floor: float) -> np.ndarray | None:
    """``f(values)`` elementwise: the per-agent term whose sum the objective maximizes over hard choices
    (values below ``floor`` count as ``floor`` for the objectives that need positive values)."""
    if values is None or objective.is_utilitarian:
        return values
    if objective.positive:
        objective.value(values.reshape(-1))  # the check for negative values, with its message
        values = np.maximum(values, floor)
    if objective.name == "nash" or (objective.name == "alpha_fair" and objective.alpha == 1.0):
        return np.log(values)
    if objective.name == "alpha_fair":
        alpha = float(objective.alpha or 0.0)
        return values ** (1.0 - alpha) / (1.0 - alpha)
    raise ValueError(
        f"welfare={objective.name!r}: a user objective has no per-agent form for capacity limits; use "
        "'utilitarian', 'egalitarian', 'nash' or ('alpha_fair', alpha) with c_min / c_max."
    )


def _linear(
    gains: np.ndarray,
    c_min: int,
    c_max: int | None,
    outside: np.ndarray | None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Maximize ``sum_i gains[i, a_i]`` (``outside[i]`` for an opt-out) under the limits.

    The transportation LP over ``x[i, c]`` (agent i's choice c: a representative, or its outside option
    as the last column), whose simplex optimum is integral. ``allowed`` ``(n, k + 1)`` masks the choices.

    :raises ValueError: if no assignment meets the limits with the allowed choices.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, vstack

    n, k = gains.shape
    columns = k + (1 if outside is not None else 0)
    value = np.column_stack([gains, outside]) if outside is not None else gains
    agent, choice = np.divmod(np.arange(n * columns), columns)
    once = coo_matrix((np.ones(n * columns), (agent, np.arange(n * columns))), shape=(n, n * columns))
    served = choice < k
    load = coo_matrix(
        (np.ones(int(served.sum())), (choice[served], np.flatnonzero(served))), shape=(k, n * columns)
    )
    limits, bounds = [], []
    if c_max is not None:
        limits.append(load)
        bounds.append(np.full(k, float(c_max)))
    if c_min > 0:
        limits.append(-load)
        bounds.append(np.full(k, -float(c_min)))
    upper = np.ones(n * columns) if allowed is None else allowed[:, :columns].reshape(-1).astype(np.float64)
    result = linprog(
        -value.reshape(-1),
        A_ub=vstack(limits).tocsr() if limits else None,
        b_ub=np.concatenate(bounds) if bounds else None,
        A_eq=once.tocsr(),
        b_eq=np.ones(n),
        bounds=np.column_stack([np.zeros(n * columns), upper]),
        method="highs-ds",
    )
    if result.status != 0:
        raise ValueError(f"no assignment meets the limits (c_min={c_min}, c_max={c_max}): {result.message}")
    x = result.x.reshape(n, columns)
    picked = x.argmax(axis=1)
    if not np.allclose(x[np.arange(n), picked], 1.0, atol=1e-6):  # the integral optimum, checked
        raise RuntimeError("the assignment LP returned a fractional optimum; please report this table.")
    return np.where(picked < k, picked, OPT_OUT)


def _bottleneck(table: np.ndarray, c_min: int, c_max: int | None, outside: np.ndarray | None) -> np.ndarray:
    """Maximize the minimum value under the limits, then the sum among the assignments that reach it."""
    values = table if outside is None else np.column_stack([table, outside])
    thresholds = np.unique(values)

    def feasible(threshold: float) -> np.ndarray | None:
        allowed = values >= threshold
        if not np.all(allowed.any(axis=1)):
            return None
        if outside is None:
            allowed = np.column_stack([allowed, np.zeros(len(table), dtype=bool)])
        try:
            return _linear(table, c_min, c_max, outside, allowed=allowed)
        except ValueError:
            return None

    low, high = 0, len(thresholds) - 1  # thresholds[0] (the smallest value) is always feasible
    best = feasible(thresholds[0])
    if best is None:
        raise ValueError(f"no assignment meets the limits (c_min={c_min}, c_max={c_max}).")
    while low < high:
        middle = (low + high + 1) // 2
        found = feasible(thresholds[middle])
        if found is None:
            high = middle - 1
        else:
            low, best = middle, found
    return best


@dataclass(frozen=True)
class AssignmentLimits:
    """What a model asks of every assigner: its welfare objective, capacity limits and outside options.

    The model hands it to its assigner when it binds it (:meth:`~sb3_rmdp.assigners.Assigner.bind`);
    EM's E-step solves :func:`best_assignment` under it, K-means and random respect the capacities, and
    every assigner lets an agent take its outside option where no estimate beats it.

    :param welfare: the objective spec (:func:`~sb3_rmdp.objectives.welfare_objective`).
    :param temperature: the egalitarian smooth minimum's temperature.
    :param c_min: at least this many agents per representative (``None``: no minimum).
    :param c_max: at most this many agents per representative (``None``: no maximum).
    :param outside: ``(n_agents,)`` outside values ``u_i``, or ``None`` (every agent is served).
    """

    welfare: Any = "utilitarian"
    temperature: float = DEFAULT_TEMPERATURE
    c_min: int | None = None
    c_max: int | None = None
    outside: np.ndarray | None = None

    @property
    def objective(self) -> WelfareObjective:
        """The welfare objective."""
        return welfare_objective(self.welfare, self.temperature)

    @property
    def has_capacities(self) -> bool:
        """Whether some representative has a minimum or maximum number of agents."""
        return (self.c_min not in (None, 0)) or self.c_max is not None

    @property
    def constrains(self) -> bool:
        """Whether the limits change the unconstrained greedy E-step (capacities or outside options)."""
        return self.has_capacities or self.outside is not None

    def assign(self, table: np.ndarray) -> np.ndarray:
        """The welfare-maximizing hard assignment of ``table`` ``(n_agents, k)`` under the limits."""
        return best_assignment(table, self.objective, self.c_min, self.c_max, self.outside)


def check_limits(
    n_agents: int,
    k: int,
    welfare: Any = "utilitarian",
    temperature: float = DEFAULT_TEMPERATURE,
    c_min: int | None = None,
    c_max: int | None = None,
    outside: Any = None,
) -> AssignmentLimits:
    """The model's limits, checked: each bad argument fails naming the fix.

    :param outside: a number (the same outside value for every agent) or ``(n_agents,)`` values.
    :raises ValueError: for an unknown objective, infeasible capacities or outside values of the wrong
        shape.
    """
    if isinstance(welfare, list):  # a tuple read back from a file's JSON
        welfare = tuple(welfare)
    welfare_objective(welfare, temperature)  # its own errors
    outside_values = None
    if outside is not None:
        outside_values = np.asarray(outside, dtype=np.float64)
        if outside_values.ndim == 0:
            outside_values = np.full(n_agents, float(outside_values))
        if outside_values.shape != (n_agents,):
            raise ValueError(
                f"outside values of shape {outside_values.shape}: give one per agent, ({n_agents},), or one "
                "number for all."
            )
        if not np.all(np.isfinite(outside_values)):
            raise ValueError("outside values must be finite numbers (a NaN or inf was given).")
    check_capacities(n_agents, k, c_min, c_max, outside_values is not None)
    return AssignmentLimits(
        welfare,
        float(temperature),
        None if c_min is None else int(c_min),
        None if c_max is None else int(c_max),
        outside_values,
    )


def capacity_assignment(cost: np.ndarray, c_min: int | None, c_max: int | None) -> np.ndarray:
    """The min-cost hard assignment of ``cost`` ``(n_agents, k)`` with every group's size in limits.

    What K-means uses to respect capacities (cost: each agent's distance to each centroid).
    """
    return best_assignment(-np.asarray(cost, dtype=np.float64), "utilitarian", c_min, c_max)
