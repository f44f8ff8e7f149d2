"""Resource Gathering as an r-MDP (paper section 4.1), and its exact optimal welfare for any budget k.

A character walks on an empty ``size x size`` grid from its home cell ``(size - 1, size // 2)``. Agent
``a`` owns the resource on cell ``(a // size, a % size)``. The episode ends on the first return home (or
at the step cutoff); if it ends at home after ``T`` steps, every agent whose cell was visited gets
``100 - T`` (times ``reward_scale``). So each deterministic policy is a closed walk from home and each
agent wants a short walk through its own cell: with ``k`` representatives the walks must split the grid.

:func:`optimal_welfare` gives the exact best utilitarian welfare that ``k`` deterministic policies can
reach (each agent served by its best policy), and :func:`optimal_paths` the action sequences of such
policies, to compare learned policies with the optimum.
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: (row, col) offset of each action: 0 up, 1 down, 2 left, 3 right
ACTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))


class ResourceGathering(gym.Env[np.ndarray, np.int64]):
    """The Resource Gathering r-MDP: ``n_agents = size * size`` agents, one per grid cell.

    * Actions ``Discrete(4)``: 0 up (row - 1), 1 down (row + 1), 2 left (col - 1), 3 right (col + 1);
      a move off the grid leaves the character in place.
    * Start and home: cell ``(size - 1, size // 2)``, ``(4, 2)`` on the default 5x5 grid.
    * Termination: on the first step that ends at home (an action that stays at home, a "bump", ends
      the episode at ``T = 1``), or after ``max_steps`` steps. The step cutoff also sets
      ``terminated=True``, never ``truncated``: it is part of the task (the reward is 0 after it and
      there is nothing to bootstrap), so value targets must not bootstrap past it.
    * Reward: a vector ``(n_agents,)`` of float32, zero on every step except the last step of an
      episode that ends at home after ``T`` steps; then every agent whose cell was visited (home
      included) gets ``reward_scale * (100 - T)``. An episode cut off away from home pays 0 to everyone.
    * Observation: float32 ``(2 + n_agents,)``: ``(row, col)`` of the character, then the 0/1 visited
      flag of every agent's cell, in agent order.
    * ``agent_params``: ``(n_agents, 2)`` float, the ``(row, col)`` of each agent's cell.

    The dynamics are deterministic; ``info["position"]`` is the ``(row, col)`` of the character.

    :param size: side of the square grid.
    :param max_steps: step cutoff of an episode.
    :param reward_scale: factor of every reward (1.0 gives the paper's ``100 - T``).
    :param render_mode: ``None`` or ``"ansi"`` (a text grid).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        size: int = 5,
        max_steps: int = 40,
        reward_scale: float = 1.0,
        render_mode: str | None = None,
    ):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}.")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
        if not (np.isfinite(reward_scale) and reward_scale > 0):
            raise ValueError(f"reward_scale must be a positive finite number, got {reward_scale}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}.")
        self.size = int(size)
        self.max_steps = int(max_steps)
        self.reward_scale = float(reward_scale)
        self.render_mode = render_mode
        self.n_agents = self.size * self.size
        self.home: tuple[int, int] = (self.size - 1, self.size // 2)
        self.action_space = spaces.Discrete(len(ACTIONS))
        self.observation_space = spaces.Box(
            0.0, float(max(self.size - 1, 1)), shape=(2 + self.n_agents,), dtype=np.float32
        )
        self.reward_space = spaces.Box(
            0.0, 100.0 * self.reward_scale, shape=(self.n_agents,), dtype=np.float32
        )
        cells = np.arange(self.n_agents)
        self.agent_params = np.stack([cells // self.size, cells % self.size], axis=1).astype(np.float64)
        self._row, self._col = self.home
        self._steps = 0
        self._done = True
        self._obs = np.zeros(2 + self.n_agents, dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Put the character home with only the home cell visited.

        :return: the observation ``(2 + n_agents,)`` and ``info`` with the ``position``.
        """
        super().reset(seed=seed)
        self._row, self._col = self.home
        self._steps = 0
        self._done = False
        self._obs[:] = 0.0
        self._obs[0], self._obs[1] = self._row, self._col
        self._obs[2 + self._row * self.size + self._col] = 1.0
        return self._obs.copy(), {"position": (self._row, self._col)}

    def step(self, action: Any) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
        """Move one cell (or stay at a wall) and pay the visited agents if the walk is back home.

        :param action: 0 up, 1 down, 2 left, 3 right.
        :return: ``(obs (2 + n_agents,), rewards (n_agents,), terminated, truncated=False, info)``.
        """
        if self._done:
            raise RuntimeError("The episode is over (or never started): call reset() before step().")
        if not self.action_space.contains(action):
            raise ValueError(f"Invalid action {action!r}: expected an int in [0, {len(ACTIONS) - 1}].")
        d_row, d_col = ACTIONS[int(action)]
        row, col = self._row + d_row, self._col + d_col
        if 0 <= row < self.size and 0 <= col < self.size:
            self._row, self._col = row, col
        self._steps += 1
        self._obs[0], self._obs[1] = self._row, self._col
        self._obs[2 + self._row * self.size + self._col] = 1.0
        rewards = np.zeros(self.n_agents, dtype=np.float32)
        terminated = False
        if (self._row, self._col) == self.home:
            terminated = True
            rewards[self._obs[2:] > 0] = self.reward_scale * (100 - self._steps)
        elif self._steps >= self.max_steps:
            terminated = True
        self._done = terminated
        return self._obs.copy(), rewards, terminated, False, {"position": (self._row, self._col)}

    def render(self) -> str | None:
        """The grid as text (``render_mode="ansi"``): ``@`` character, ``H`` home, ``*`` visited."""
        if self.render_mode != "ansi":
            return None
        visited = self._obs[2:].reshape(self.size, self.size)
        lines = []
        for row in range(self.size):
            chars = []
            for col in range(self.size):
                if (row, col) == (self._row, self._col):
                    chars.append("@")
                elif (row, col) == self.home:
                    chars.append("H")
                else:
                    chars.append("*" if visited[row, col] else ".")
            lines.append("".join(chars))
        return "\n".join(lines) + "\n"


class MaskedResourceGathering(ResourceGathering):
    """:class:`ResourceGathering` with invalid action masking: moves off the grid are masked.

    ``action_masks()`` returns ``(4,)`` booleans (True: the move stays on the grid), the method
    sb3-contrib's ``MaskablePPO`` and :class:`~sb3_rmdp.ppo_mask.RMDPMaskablePPO` read. The dynamics,
    rewards and optimal welfare are those of the unmasked task; a bump into a wall (a wasted step) is
    what the masks rule out. Registered as ``sb3_rmdp/MaskedResourceGathering-v0``.
    """

    def action_masks(self) -> np.ndarray:
        """``(4,)`` bool: up, down, left, right, True where the move stays on the grid."""
        return np.array([self._row > 0, self._row < self.size - 1, self._col > 0, self._col < self.size - 1])


# ---------------------------------------------------------------------------------------------------
# Exact optimal welfare of k deterministic policies
# ---------------------------------------------------------------------------------------------------


def optimal_welfare(
    k: int,
    size: int = 5,
    max_steps: int = 40,
    welfare: str | tuple[str, float] = "utilitarian",
    c_min: int | None = None,
    c_max: int | None = None,
    time_limit: float = 10.0,
) -> float:
    """Exact best welfare of ``k`` deterministic policies in :class:`ResourceGathering`.

    The welfare combines the ``n_agents = size * size`` agents' returns, in units of ``100 - T``
    (``reward_scale = 1``); without capacity limits each agent is served by its best policy. From the
    fixed start, a deterministic policy is a closed walk from home that does not pass home before its
    end, of length ``T <= max_steps``, or the ``T = 1`` bump; every agent on the walk gets ``100 - T``.

    **Utilitarian (the default): proven exact for every k** (no heuristic step), by a branch and bound
    over walks:

    1. *Walks.* Only the set ``C`` of covered cells and the length ``T`` of a walk matter, and a walk is
       useless if another one covers ``C' ⊇ C`` in ``T' <= T`` steps. A breadth-first search over
       ``(position, visited set)`` states, layer by layer in time, drops a state only when a kept state
       at the same position with a superset of visited cells was reached no later (whatever the
       dropped state does next, that state can do as well, sooner), so the walks it closes at home
       include an undominated walk for every ``(C, T)``. Steps into a wall are never useful (except the
       bump) and walks longer than the shortest one covering the whole grid are dominated by it.
    2. *Search.* Every set of ``k`` walks is searched in increasing ``T``: a cell's value is then fixed
       by the first walk covering it. A branch is cut when an upper bound on what the remaining walks
       can add cannot beat the best set found (so the search is exhaustive up to provably worse
       branches).
    3. *Bound.* A walk's distance to home changes by exactly 1 per step and is positive between its
       ends: if it crosses from distance ``d`` to ``d + 1`` ``u_d`` times (``u_0 = 1``), it has
       half-length ``h = sum u_d``, visits distance ``d`` ``u_{d-1} + u_d`` times, so it covers at most
       that many of the uncovered cells at that distance, each worth ``100 - 2h``. The best such
       relaxation for the remaining walks, which only depends on the number of uncovered cells at each
       distance, is computed exactly by a memoized recursion (taking walks by increasing ``h``, each
       serving as many cells as it can, loses nothing).

    For ``k >= n_agents`` it is the closed form: each agent gets ``100 - 2 * distance(home)`` (99 for
    the home agent, via the bump). On the 5x5 grid with ``max_steps = 40``: k=1 74.00, 2 86.00,
    3 89.28, 4 90.40, 5 91.04, 6 91.52, 7 91.76, 8 92.00, 9 92.16, 10 92.32, n 93.56; about 1.5 s for
    all k together, most of it shared (results are cached). The values were also cross-checked against
    an integer program over an exhaustive enumeration of walks on 2x2 to 5x5 grids for many cutoffs.
    The cost grows exponentially with ``size``: grids above 5x5 are not practical.

    **Fair objectives without capacity limits: exact**, by the same walks (step 1 only uses that every
    objective increases in each agent's value) and searches:

    * ``"egalitarian"`` (the worst-off agent). Its optimum is ``100 - L*``, with ``L*`` the least length
      such that ``k`` walks of length ``<= L*`` cover every cell (0 if no ``k`` walks of ``<= max_steps``
      do): every agent then gets at least ``100 - L*``, and if all got more, walks shorter than ``L*``
      would cover the grid. Whether ``k`` walks of length ``<= L`` cover the grid is the search of step
      2 with every cell worth 1 if first covered by a walk of length ``<= L`` and 0 otherwise (the
      bound of step 3 holds for any value that does not increase with ``h``): it reaches ``n_agents``
      exactly when they do. ``L`` runs over the walk lengths from ``2 * max distance`` up.
    * ``"nash"`` (the geometric mean) and ``("alpha_fair", alpha)``: a hard assignment's welfare is a
      sum over agents of an increasing ``f(value)`` (``log`` for Nash and ``alpha = 1``,
      ``v^(1 - alpha) / (1 - alpha)`` otherwise), so it is step 2's search with a cell worth
      ``f(100 - T) - f(0)``, positive and non-increasing in ``T``. Where ``f(0) = -inf`` (Nash,
      ``alpha >= 1``: every agent must be served) the search first values an unserved agent as
      ``f(1)``; if its optimum serves every agent it is the optimum (it equals the true welfare there
      and bounds it elsewhere), else every served cell gets a bonus ``n_agents * (f(99) - f(1))``
      that makes serving all agents come first. With no ``k`` walks serving everyone, the Nash welfare
      is 0 and the alpha-fair one (``alpha >= 1``) ``-inf``. Exact up to floating-point rounding.

    **Capacity limits** (``c_min`` / ``c_max``: at least / at most that many agents per policy; each agent
    is assigned to exactly one of the ``k`` walks and gets ``100 - T`` if that walk covers its cell, else
    0): an integer program, exact, solved by HiGHS to a zero gap (refused, with a ``ValueError``, if it
    does not close within ``time_limit`` seconds, never answered by a heuristic). Its variables: ``y_w``,
    the whole number of copies of each walk of step 1 among the ``k`` (replacing a policy's walk by one
    that dominates it loses no agent anything, so these walks suffice); ``x_{i,w}``, agent ``i`` served
    by a copy of ``w`` covering it; ``u_i`` agent ``i`` assigned to a walk that does not cover it (value
    0, only where ``f(0)`` is finite), ``z_w`` their number per walk; loads ``c_min y_w <= sum_i x_{i,w} +
    z_w <= c_max y_w``. For whole ``y`` the rest is a flow problem with whole capacities, so its linear
    optimum is integral: the program's optimum is the optimum. The egalitarian one is the least ``L``
    whose walks of length ``<= L`` admit a feasible assignment (feasibility only grows with ``L``; the
    scan starts at the unlimited optimum's ``L*``). The chosen walks are then assigned again by
    :func:`sb3_rmdp.matching.best_assignment` (its bottleneck program for the minimum, its utilitarian
    one on ``f`` of the returns otherwise), and that assignment's welfare is returned. On the 5x5 grid
    the program has about 110,000 agent-walk pairs: see the measured times below.

    Measured on the 5x5 grid, ``max_steps = 40`` (all exact; the fair searches take 0.1 s or less each):

    ====  ===========  ===========  =======
    k     utilitarian  egalitarian  Nash
    ====  ===========  ===========  =======
    1     74.00        74           74.0000
    2     86.00        86           86.0000
    3     89.28        88           89.2607
    4     90.40        88           90.3630
    5     91.04        88           91.0080
    ====  ===========  ===========  =======

    With capacities (``c_max * k >= 25`` is needed), single-threaded HiGHS:

    ===================  ====================  ===================  ====================
    k, c_max             utilitarian           egalitarian          Nash
    ===================  ====================  ===================  ====================
    5, 5                 90.80 (110 s)         88 (1.8 s)           90.7682 (160 s)
    5, 6                 91.04 (28 s)          88 (0.3 s)           91.0080 (66 s)
    4, 7                 90.40 (56 s)          88 (0.6 s)           90.3630 (31 s)
    ===================  ====================  ===================  ====================

    so on the 5x5 grid the capacitated utilitarian / Nash / alpha-fair programs need
    ``time_limit`` of a few minutes (the default 10 s refuses them); the egalitarian ones and every
    capacitated program on grids up to 4x4 close in about a second.

    :param k: number of policies, ``>= 1``.
    :param size: side of the grid.
    :param max_steps: step cutoff of an episode.
    :param welfare: ``"utilitarian"`` (the mean), ``"egalitarian"`` (the minimum), ``"nash"`` (the
        geometric mean) or ``("alpha_fair", alpha)`` (see :func:`sb3_rmdp.objectives.welfare_objective`).
    :param c_min: at least this many agents per policy (``None``: no minimum).
    :param c_max: at most this many agents per policy (``None``: no maximum).
    :param time_limit: seconds the capacitated program may run before it is refused (capacities only).
    :return: the optimal welfare, as :meth:`~sb3_rmdp.objectives.WelfareObjective.value` reports it for
        the agents' returns (the mean for the utilitarian objective).
    :raises ValueError: for an unknown objective, infeasible capacities, or a capacitated program that
        does not close in time.
    """
    if _is_default(welfare, c_min, c_max):
        return _optimum(k, size, max_steps)[0]
    return _fair_optimum(k, size, max_steps, *_objective_key(welfare), c_min or None, c_max, time_limit)[0]


def optimal_paths(
    k: int,
    size: int = 5,
    max_steps: int = 40,
    welfare: str | tuple[str, float] = "utilitarian",
    c_min: int | None = None,
    c_max: int | None = None,
    time_limit: float = 10.0,
) -> list[list[int]]:
    """Action sequences of ``k`` deterministic policies reaching :func:`optimal_welfare`.

    Driving :class:`ResourceGathering` with each sequence from ``reset`` ends its episode at home; the
    welfare of the agents' returns (each agent served by its best policy, or, under capacity limits, as
    :func:`sb3_rmdp.matching.best_assignment` assigns them) is then ``optimal_welfare`` of the same
    arguments. When fewer than ``k`` walks are needed, the list is padded with copies of the first one.

    :return: ``k`` lists of actions (0 up, 1 down, 2 left, 3 right).
    """
    if _is_default(welfare, c_min, c_max):
        walks = _optimum(k, size, max_steps)[1]
    else:
        walks = _fair_optimum(k, size, max_steps, *_objective_key(welfare), c_min or None, c_max, time_limit)[
            1
        ]
    paths = [list(_solver(size, max_steps).actions(walk)) for walk in walks]
    return paths + [list(paths[0]) for _ in range(k - len(paths))]


def _is_default(welfare: Any, c_min: int | None, c_max: int | None) -> bool:
    return isinstance(welfare, str) and welfare == "utilitarian" and not c_min and c_max is None


def _objective_key(welfare: Any) -> tuple[str, float | None]:
    """``(name, alpha)`` of a named objective; a hand-made :class:`WelfareObjective` is refused."""
    from sb3_rmdp.objectives import WelfareObjective, welfare_objective

    if isinstance(welfare, WelfareObjective):
        raise ValueError(
            f"welfare={welfare.name!r} object: optimal_welfare needs a per-agent form; pass 'utilitarian', "
            "'egalitarian', 'nash' or ('alpha_fair', alpha)."
        )
    objective = welfare_objective(welfare)  # validates the name and alpha, with its message
    return objective.name, objective.alpha


@functools.cache
def _optimum(k: int, size: int, max_steps: int) -> tuple[float, tuple[int, ...]]:
    """``(welfare, walk indices)`` of the optimum with ``k`` policies (see :func:`optimal_welfare`)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if size < 1 or max_steps < 1:
        raise ValueError(f"size and max_steps must be >= 1, got size={size}, max_steps={max_steps}.")
    solver = _solver(size, max_steps)
    total, walks = solver.closed_form() if k >= solver.grid.n else solver.solve(k)
    return total / solver.grid.n, walks


def _term(name: str, alpha: float | None) -> Any:
    """The per-agent term ``f(value)`` whose sum over agents a hard assignment's welfare increases with."""
    if name == "utilitarian" or (name == "alpha_fair" and alpha == 0.0):
        return lambda v: float(v)
    if name == "nash" or (name == "alpha_fair" and alpha == 1.0):
        return lambda v: float(np.log(v)) if v > 0 else -np.inf
    a = float(alpha or 0.0)
    return lambda v: v ** (1.0 - a) / (1.0 - a) if v > 0 else (-np.inf if a > 1 else 0.0)


def _welfare_of(name: str, alpha: float | None, values: np.ndarray) -> float:
    """The objective's value of the agents' returns ``(n_agents,)``; 0 (Nash) or -inf where it needs > 0."""
    from sb3_rmdp.objectives import welfare_objective

    objective = welfare_objective(name if name != "alpha_fair" else ("alpha_fair", float(alpha or 0.0)))
    if objective.positive and values.min() <= 0:
        if name == "alpha_fair" and float(alpha or 0.0) < 1.0:  # v^(1 - alpha) is 0 at 0
            return float(np.mean(np.vectorize(_term(name, alpha))(values)))
        return 0.0 if name == "nash" else -np.inf
    return objective.value(values)


@functools.cache
def _fair_optimum(
    k: int,
    size: int,
    max_steps: int,
    name: str,
    alpha: float | None,
    c_min: int | None,
    c_max: int | None,
    time_limit: float = 10.0,
) -> tuple[float, tuple[int, ...]]:
    """``(welfare, walk indices)`` of a fair or capacitated optimum (see :func:`optimal_welfare`)."""
    from sb3_rmdp.matching import check_capacities

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if size < 1 or max_steps < 1:
        raise ValueError(f"size and max_steps must be >= 1, got size={size}, max_steps={max_steps}.")
    check_capacities(size * size, k, c_min, c_max, outside=False)
    solver = _solver(size, max_steps)
    if max(solver.lengths) >= 100:
        raise ValueError(f"walks of {max(solver.lengths)} >= 100 steps pay nothing: lower max_steps.")
    if c_min is not None or c_max is not None:
        return _capacitated(solver, k, name, alpha, c_min, c_max, time_limit)
    n = solver.grid.n
    if k >= n:
        walks = tuple(solver._single_walks())
    elif name == "utilitarian" or (name == "alpha_fair" and alpha == 0.0):
        walks = _optimum(k, size, max_steps)[1]
    elif name == "egalitarian":
        walks = _egalitarian_walks(solver, k)
    else:
        walks = _additive_walks(solver, k, _term(name, alpha))
    return _welfare_of(name, alpha, solver.values(walks)), walks


def _search(solver: _Solver, k: int, gain: list[Any]) -> tuple[Any, tuple[int, ...]]:
    """Step 2's branch and bound of ``solver``'s walks with a cell first covered at length T worth gain[T]."""
    search = copy.copy(solver)  # shares the walks and gain-free caches, not the bound's memo
    search.set_gains(gain)
    return search.solve(k)


def _egalitarian_walks(solver: _Solver, k: int) -> tuple[int, ...]:
    """Walks of the least ``L`` such that ``k`` walks of length ``<= L`` cover every cell."""
    g = solver.grid
    if g.n == 1:
        return (0,)  # the bump
    lowest = 2 * max(g.level)
    walks: tuple[int, ...] = ()
    for length in sorted({t for t in solver.lengths if t >= lowest}):
        covered, walks = _search(solver, k, [int(t <= length) for t in range(solver.max_steps + 1)])
        if covered == g.n:
            return walks
    return walks  # no k walks cover the grid: some agent gets 0


def _additive_walks(solver: _Solver, k: int, term: Any) -> tuple[int, ...]:
    """Walks maximizing ``sum_i f(value_i)`` (see the Nash and alpha-fair item of ``optimal_welfare``)."""
    served_only = np.isinf(term(0.0))
    base = term(1.0) if served_only else term(0.0)
    gain = [term(100.0 - t) - base if t < 100 else 0.0 for t in range(solver.max_steps + 1)]
    _, walks = _search(solver, k, gain)
    if served_only and solver.values(walks).min() <= 0:
        bonus = solver.grid.n * (term(99.0) - base)
        _, walks = _search(solver, k, [value + bonus if value > 0 else 0.0 for value in gain])
    return walks


def _capacitated(
    solver: _Solver,
    k: int,
    name: str,
    alpha: float | None,
    c_min: int | None,
    c_max: int | None,
    time_limit: float,
) -> tuple[float, tuple[int, ...]]:
    """The integer program of ``optimal_welfare``'s capacity item, then ``best_assignment`` of its walks."""
    lengths = np.array(solver.lengths)
    from sb3_rmdp.matching import best_assignment

    program = functools.partial(_capacity_program, solver, k, c_min=c_min, c_max=c_max, time_limit=time_limit)
    counts: np.ndarray | None = None
    if name == "egalitarian":
        # Feasibility only grows with L, and no L below the unlimited optimum's serves everyone.
        lowest = 100 - int(_fair_optimum(k, solver.grid.size, solver.max_steps, name, None, None, None)[0])
        for length in sorted({t for t in solver.lengths if t >= lowest}):
            counts = program(None, max_length=length)
            if counts is not None:
                break
    else:
        counts = program(_term(name, alpha))
    if counts is None:  # no assignment serves every agent: the welfare is 0 or -inf, any feasible walks do
        counts = program(_term("utilitarian", None))
        assert counts is not None  # check_capacities passed, and unserved agents are allowed here
    walks = tuple(int(w) for w in np.repeat(np.arange(len(counts)), counts))
    table = np.where(solver._member[list(walks)].T, 100.0 - lengths[list(walks)][None, :], 0.0)  # (n, k)
    if name == "egalitarian":
        assignment = best_assignment(table, "egalitarian", c_min, c_max)
    else:
        # The welfare of a hard assignment is sum_i f(value_i): best_assignment's utilitarian program on
        # f of the table. Where f(0) = -inf (Nash, alpha >= 1) an unserved agent costs more than any
        # assignment serving everyone can lose elsewhere, so one is left unserved only if all must be.
        term = np.vectorize(_term(name, alpha))
        covered = table > 0
        gains = term(np.where(covered, table, 1.0))
        if np.isinf(_term(name, alpha)(0.0)):
            span = _term(name, alpha)(99.0) - gains[covered].min() if covered.any() else 0.0
            gains = np.where(
                covered, gains, gains[covered].min() - len(table) * span - 1.0 if covered.any() else 0.0
            )
        else:
            gains = np.where(covered, gains, _term(name, alpha)(0.0))
        assignment = best_assignment(gains, "utilitarian", c_min, c_max)
    values = table[np.arange(len(table)), assignment]
    return _welfare_of(name, alpha, values), walks


def _capacity_program(
    solver: _Solver,
    k: int,
    term: Any,
    c_min: int | None,
    c_max: int | None,
    max_length: int | None = None,
    time_limit: float = 10.0,
) -> np.ndarray | None:
    """Copies ``y_w`` of each walk in an optimum of the capacitated program, or None if it is infeasible.

    ``term`` is the per-agent ``f``; ``None`` with ``max_length``: only feasibility, every agent served by
    a walk of length ``<= max_length``.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    n, n_walks = solver.grid.n, len(solver.masks)
    lengths = np.array(solver.lengths)
    usable = np.ones(n_walks, dtype=bool) if max_length is None else lengths <= max_length
    walk_of, agent_of = np.nonzero(solver._member & usable[:, None])
    n_pairs = len(walk_of)
    unserved_ok = term is not None and np.isfinite(term(0.0))
    # columns: y (n_walks), x (n_pairs), u (n), z (n_walks)
    n_vars = 2 * n_walks + n_pairs + n
    cost = np.zeros(n_vars)
    if term is not None:
        gain = np.array([term(100.0 - t) for t in lengths])
        cost[n_walks : n_walks + n_pairs] = -gain[walk_of]
        cost[n_walks + n_pairs : n_walks + n_pairs + n] = -term(0.0) if unserved_ok else 0.0
    pairs = np.arange(n_pairs)
    walk_ids = np.arange(n_walks)
    y = coo_matrix((np.ones(n_walks), (walk_ids, walk_ids)), (n_walks, n_vars))
    x_by_walk = coo_matrix((np.ones(n_pairs), (walk_of, n_walks + pairs)), (n_walks, n_vars))
    z = coo_matrix((np.ones(n_walks), (walk_ids, n_walks + n_pairs + n + walk_ids)), (n_walks, n_vars))
    x_by_agent = coo_matrix((np.ones(n_pairs), (agent_of, n_walks + pairs)), (n, n_vars))
    u = coo_matrix((np.ones(n), (np.arange(n), n_walks + n_pairs + np.arange(n))), (n, n_vars))
    load = x_by_walk + z
    constraints = [
        LinearConstraint(y.sum(axis=0), k, k),  # k policies
        LinearConstraint(x_by_agent + u, 1.0, 1.0),  # each agent assigned once
        LinearConstraint(u.sum(axis=0) - z.sum(axis=0), 0.0, 0.0),  # the unserved sit on some walk
        # c_max = n where unlimited: an unused walk serves nobody
        LinearConstraint(load - (c_max if c_max is not None else n) * y, -np.inf, 0.0),
        # x_iw <= y_w: not needed for correctness, it tightens the linear relaxation
        LinearConstraint(
            coo_matrix((np.ones(n_pairs), (pairs, n_walks + pairs)), (n_pairs, n_vars))
            - coo_matrix((np.ones(n_pairs), (pairs, walk_of)), (n_pairs, n_vars)),
            -np.inf,
            0.0,
        ),
    ]
    if c_min:
        constraints.append(LinearConstraint(load - c_min * y, 0.0, np.inf))
    high = np.concatenate(
        [np.full(n_walks, k), np.ones(n_pairs), np.full(n, 1.0 if unserved_ok else 0.0), np.full(n_walks, n)]
    )
    high[:n_walks][~usable] = 0
    result = milp(
        cost,
        integrality=np.concatenate([np.ones(n_walks), np.zeros(n_vars - n_walks)]),
        bounds=Bounds(np.zeros(n_vars), high),
        constraints=constraints,
        options={"mip_rel_gap": 0.0, "time_limit": time_limit},
    )
    if result.status == 2:  # infeasible
        return None
    if result.status != 0:
        raise ValueError(
            f"the capacitated program (c_min={c_min}, c_max={c_max}, k={k}, {solver.grid.size}x"
            f"{solver.grid.size} grid) did not close within {time_limit:.0f} s ({result.message}); "
            "exact capacitated optima are supported on grids up to 4x4 (and on 5x5 where it closes): "
            "lower size or drop c_min / c_max."
        )
    return np.rint(result.x[:n_walks]).astype(np.int64)


@functools.lru_cache(maxsize=8)
def _solver(size: int, max_steps: int) -> _Solver:
    if size > 6:
        raise ValueError(f"optimal_welfare supports grids up to 6x6 (practical up to 5x5), got size={size}.")
    return _Solver(_Grid.build(size), max_steps)


@dataclass(frozen=True)
class _Grid:
    """Cells ``0..n-1`` (row-major), their neighbours, the effect of each action and the distance to home."""

    size: int
    n: int
    home: int
    moves: tuple[tuple[int, ...], ...]  # moves[cell][action] -> cell (same cell off-grid)
    neighbors: tuple[tuple[int, ...], ...]  # distinct in-grid neighbours
    level: tuple[int, ...]  # Manhattan distance to home

    @staticmethod
    def build(size: int) -> _Grid:
        n = size * size
        home_row, home_col = size - 1, size // 2
        moves, neighbors, level = [], [], []
        for cell in range(n):
            row, col = divmod(cell, size)
            targets = []
            for d_row, d_col in ACTIONS:
                r, c = row + d_row, col + d_col
                targets.append(r * size + c if 0 <= r < size and 0 <= c < size else cell)
            moves.append(tuple(targets))
            neighbors.append(tuple(t for t in targets if t != cell))
            level.append(abs(row - home_row) + abs(col - home_col))
        return _Grid(size, n, home_row * size + home_col, tuple(moves), tuple(neighbors), tuple(level))


class _Solver:
    """Walk family, relaxation and branch and bound of one ``(size, max_steps)`` (see ``optimal_welfare``)."""

    def __init__(self, grid: _Grid, max_steps: int):
        self.grid = grid
        self.max_steps = max_steps
        self.n_levels = max(grid.level)
        self._rlx: dict[tuple[tuple[int, ...], int, int], Any] = {}
        self._walks()
        self._tables()
        self._serve: dict[tuple[tuple[int, ...], int], tuple[tuple[int, ...], ...]] = {}
        self._decoded: dict[int, tuple[int, ...]] = {}

    # --- 1. walks ------------------------------------------------------------------------------------

    def _walks(self) -> None:
        """Closed walks (T, covered mask) dominating every walk; see step 1 of ``optimal_welfare``."""
        g = self.grid
        n, size, home = g.n, g.size, g.home
        full = (1 << n) - 1
        not_left = not_right = full
        for row in range(size):
            not_left &= ~(1 << (row * size))
            not_right &= ~(1 << (row * size + size - 1))

        def frontier(mask: int) -> int:
            grown = (mask << size) | (mask >> size) | ((mask & not_left) >> 1) | ((mask & not_right) << 1)
            return grown & full & ~mask

        # A state is the int ``visited_mask << 6 | position``; ``parent`` links kept states.
        steps = [[(q, 1 << q) for q in g.neighbors[p] if q != home] for p in range(n)]
        next_to_home = set(g.neighbors[home])
        seen: list[set[int]] = [set() for _ in range(n)]
        parent: dict[int, int] = {}
        closed: dict[int, tuple[int, int]] = {}  # mask -> (T, last state before home)
        layer = [(1 << home) << 6 | home]
        for t in range(1, self.max_steps + 1):
            for state in layer:
                if state & 63 in next_to_home and state >> 6 not in closed:
                    closed[state >> 6] = (t, state)
            if full in closed or t == self.max_steps:
                break  # longer walks are dominated by the one covering the whole grid
            fresh: list[int] = []
            wasted: dict[int, int] = {}
            for state in layer:
                mask = state >> 6
                for q, bit in steps[state & 63]:
                    new_mask = mask | bit
                    new = new_mask << 6 | q
                    if new_mask.bit_count() > t:  # no step wasted so far: never dominated
                        if new not in parent:
                            parent[new] = state
                            fresh.append(new)
                            seen[q].add(new_mask)
                    elif new not in wasted:
                        wasted[new] = state
            # A state that wasted w steps can only be dominated by one with at most w more cells.
            for new in sorted(wasted, reverse=True, key=lambda s: (s >> 6).bit_count()):
                mask, q = new >> 6, new & 63
                known = seen[q]
                if mask in known:
                    continue
                grow = frontier(mask)
                rest = grow
                while rest:
                    bit = rest & -rest
                    if (mask | bit) in known:
                        break
                    rest ^= bit
                if rest or (t - mask.bit_count() >= 1 and self._has_superset2(mask, grow, known, frontier)):
                    continue
                known.add(mask)
                parent[new] = wasted[new]
                fresh.append(new)
            layer = fresh
        bump = (1, 1 << home)
        found = sorted(
            ((t, mask) for mask, (t, _) in closed.items()), key=lambda w: (w[0], -w[1].bit_count())
        )
        family = [bump] if self.max_steps >= 1 else []
        best_by_mask: set[int] = {1 << home}
        for t, mask in found:  # keep walks not dominated by one extra cell at no greater length
            f = frontier(mask)
            dominated = False
            while f:
                bit = f & -f
                f ^= bit
                if (mask | bit) in best_by_mask:
                    dominated = True
                    break
            best_by_mask.add(mask)
            if not dominated and mask != 1 << home:
                family.append((t, mask))
        family.sort(key=lambda w: (w[0], -w[1].bit_count(), w[1]))
        self.lengths = [t for t, _ in family]
        self.masks = [mask for _, mask in family]
        self._parent = parent
        self._last = {mask: last for mask, (_, last) in closed.items()}
        self.max_half = max(self.lengths) // 2

    @staticmethod
    def _has_superset2(mask: int, f1: int, known: set[int], frontier: Any) -> bool:
        """Whether ``known`` holds ``mask`` plus 2 connected cells (``f1``: cells next to ``mask``)."""
        rest = f1
        while rest:
            bit = rest & -rest
            rest ^= bit
            plus = mask | bit
            more = (f1 & ~((bit << 1) - 1)) | (frontier(plus) & ~f1)  # each pair once
            while more:
                bit2 = more & -more
                more ^= bit2
                if (plus | bit2) in known:
                    return True
        return False

    def actions(self, walk: int) -> list[int]:
        """Action sequence of family walk number ``walk``."""
        g = self.grid
        mask = self.masks[walk]
        if self.lengths[walk] == 1:
            return [next(a for a in range(len(ACTIONS)) if g.moves[g.home][a] == g.home)]
        cells = [g.home]
        state = self._last[mask]
        while state & 63 != g.home:
            cells.append(state & 63)
            state = self._parent[state]
        cells.append(g.home)
        cells.reverse()
        return [g.moves[a].index(b) for a, b in itertools.pairwise(cells)]

    # --- 2. search -----------------------------------------------------------------------------------

    def _tables(self) -> None:
        """numpy views of the family and byte tables giving (#cells, #cells per distance) of a mask."""
        g = self.grid
        self.bits = max(g.n.bit_length(), 1)
        self.n_bytes = (g.n + 7) // 8
        tables = np.zeros((self.n_bytes, 256), dtype=np.uint64)
        for j in range(self.n_bytes):
            for byte in range(256):
                packed = 0
                for b in range(8):
                    cell = 8 * j + b
                    if byte >> b & 1 and cell < g.n:
                        packed += 1 << (self.bits * g.level[cell])  # field 0 (home) counts all cells
                        if cell != g.home:
                            packed += 1
                tables[j, byte] = packed
        self._byte_tables = tables
        self._np_masks = np.array(self.masks, dtype=np.uint64)
        self.set_gains([100 - t for t in range(self.max_steps + 1)])
        self._np_half = (np.array(self.lengths, dtype=np.int64) + 1) // 2
        self._field = (1 << self.bits) - 1
        cells = np.arange(g.n, dtype=np.uint64)
        self._member = ((self._np_masks[:, None] >> cells) & np.uint64(1)).astype(bool)  # (walks, n)

    def set_gains(self, gain_of_length: list[int] | list[float]) -> None:
        """Value of a cell first covered by a walk of length ``T``: ``gain_of_length[T]``, non-increasing.

        ``100 - T`` (ints) is the utilitarian search; a fair objective's search gives its own per-agent
        term (floats), which must be positive where a walk may be used and 0 where it may not.
        """
        self._gain = gain_of_length
        # the value bound of a cell served by a walk of half-length h >= 1 (length >= 2h, or the bump)
        self._half_gain = [gain_of_length[min(2 * h, self.max_steps)] for h in range(self.max_half + 2)]
        self._np_values = np.array([gain_of_length[t] for t in self.lengths])
        self._rlx = {}

    def _histogram(self, masks: np.ndarray) -> np.ndarray:
        """Packed ``sum_levels`` histograms of ``masks``: field 0 = #cells, field d = #cells at distance d."""
        out = np.zeros(masks.shape, dtype=np.uint64)
        for j in range(self.n_bytes):
            out += self._byte_tables[j][((masks >> np.uint64(8 * j)) & np.uint64(255)).astype(np.intp)]
        return out

    def _levels(self, packed: int) -> tuple[int, ...]:
        """Counts per distance ``1..n_levels`` of a packed histogram without its field 0."""
        levels = self._decoded.get(packed)
        if levels is None:
            levels = tuple((packed >> (self.bits * d)) & self._field for d in range(self.n_levels))
            self._decoded[packed] = levels
        return levels

    def values(self, walks: tuple[int, ...]) -> np.ndarray:
        """Each agent's best return ``(n_agents,)`` over the given family walks (0 where none covers it)."""
        returns = np.where(
            self._member[list(walks)], 100.0 - np.array(self.lengths)[list(walks)][:, None], 0.0
        )
        return returns.max(axis=0) if len(walks) else np.zeros(self.grid.n)

    def closed_form(self) -> tuple[int, tuple[int, ...]]:
        """Every agent on its own shortest walk: ``100 - 2 * distance`` each, 99 for home (k >= n)."""
        g = self.grid
        total = 99 if self.max_steps >= 1 else 0
        for cell in range(g.n):
            if cell != g.home and 2 * g.level[cell] <= self.max_steps:
                total += 100 - 2 * g.level[cell]
        return total, tuple(self._single_walks())

    def _single_walks(self) -> list[int]:
        """For each cell, a family walk reaching it in ``2 * distance`` steps (the bump for home)."""
        g = self.grid
        walks = []
        for cell in range(g.n):
            length = 1 if cell == g.home else 2 * g.level[cell]
            if length > self.max_steps:
                continue
            walks.append(
                next(
                    i
                    for i, (t, m) in enumerate(zip(self.lengths, self.masks))
                    if t == length and m >> cell & 1
                )
            )
        return walks

    def solve(self, k: int) -> tuple[Any, tuple[int, ...]]:
        """Exact best total value of ``k`` walks (sum over agents) and their family indices."""
        best_total, best_walks = self._greedy(k)
        self._best = best_total
        self._best_walks = best_walks
        full = (1 << self.grid.n) - 1
        remaining = int(self._histogram(np.array([full], dtype=np.uint64))[0])
        self._branch(0, 0, remaining, 0, k, [])
        return self._best, tuple(self._best_walks)

    def _greedy(self, k: int) -> tuple[Any, list[int]]:
        """Incumbent: add k times the walk that raises the welfare most."""
        member = self._member
        value = np.zeros(self.grid.n, dtype=self._np_values.dtype)
        chosen: list[int] = []
        for _ in range(k):
            gains = (np.maximum(self._np_values[:, None] - value[None, :], 0) * member).sum(axis=1)
            best = int(np.argmax(gains))
            if gains[best] <= 0:
                break
            chosen.append(best)
            value = np.maximum(value, np.where(member[best], self._np_values[best], 0))
        return value.sum().item(), chosen

    def _branch(
        self, start: int, covered: int, remaining: int, value: Any, r: int, chosen: list[int]
    ) -> None:
        """Try every next walk (index >= start, so lengths increase); ``remaining`` = packed uncovered."""
        if value > self._best:
            self._best, self._best_walks = value, list(chosen)
        if r == 0 or start >= len(self.masks):
            return
        levels = self._levels(remaining >> self.bits)
        # Stop at the first length whose bound (walks all at least that long) cannot win.
        end = start
        lengths = self.lengths
        while end < len(lengths):
            t = lengths[end]
            home_bonus = self._gain[t] if covered == 0 else 0
            if value + home_bonus + self.relaxation(levels, r, (t + 1) // 2) <= self._best:
                break
            while end < len(lengths) and lengths[end] == t:
                end += 1
        if end == start:
            return
        masks = self._np_masks[start:end]
        new = masks & ~np.uint64(covered)
        hist = self._histogram(new)
        gains = self._np_values[start:end] * (hist & np.uint64(self._field)).astype(np.int64)
        child_remaining = np.uint64(remaining) - hist  # field 0 and level fields both shrink
        half = self._np_half[start:end]
        useful = np.flatnonzero(gains > 0)
        if useful.size == 0:
            return
        keys = ((child_remaining[useful] >> np.uint64(self.bits)) << np.uint64(6)) | half[useful].astype(
            np.uint64
        )
        unique, inverse = np.unique(keys, return_inverse=True)
        bound_of_key = np.array(
            [
                self.relaxation(self._levels(int(key) >> 6), r - 1, int(key) & 63) if r > 1 else 0
                for key in unique
            ],
            dtype=self._np_values.dtype,
        )
        bounds = value + gains[useful] + bound_of_key[inverse.reshape(-1)]
        for j in np.flatnonzero(bounds > self._best):
            if bounds[j] <= self._best:
                continue
            i = int(useful[j])
            walk = start + i
            chosen.append(walk)
            self._branch(
                walk + 1,
                covered | self.masks[walk],
                int(child_remaining[i]),
                value + gains[i].item(),
                r - 1,
                chosen,
            )
            chosen.pop()

    # --- 3. bound ------------------------------------------------------------------------------------

    def relaxation(self, levels: tuple[int, ...], r: int, h_min: int) -> Any:
        """Upper bound on what ``r`` walks of half-length ``>= h_min`` add to cells counted in ``levels``."""
        r = min(r, sum(levels))
        if r <= 0 or h_min > self.max_half:
            return 0
        key = (levels, r, h_min)
        cached = self._rlx.get(key)
        if cached is not None:
            return cached
        best = self.relaxation(levels, r, h_min + 1)
        worth = self._half_gain[h_min]
        if worth * sum(levels) > best:
            for served in self._servable(levels, h_min):
                count = sum(served)
                rest = tuple(a - b for a, b in zip(levels, served))
                total = worth * count + self.relaxation(rest, r - 1, h_min)
                if total > best:
                    best = total
        self._rlx[key] = best
        return best

    def _servable(self, levels: tuple[int, ...], h: int) -> tuple[tuple[int, ...], ...]:
        """Maximal vectors (cells served per distance) of one walk of half-length ``<= h``, most first.

        A walk crossing distance ``d -> d + 1`` ``u_d`` times (``u_0 = 1``, ``u_d >= 1`` below its top
        distance ``D``) visits distance ``d`` ``u_{d-1} + u_d`` times and has half-length ``sum u_d``.
        """
        key = (levels, h)
        cached = self._serve.get(key)
        if cached is not None:
            return cached
        n_levels = len(levels)
        found: set[tuple[int, ...]] = set()

        def extend(served: tuple[int, ...], u_prev: int, used: int) -> None:
            # served covers distances 1..D-1; close at top distance D = len(served) + 1 or climb.
            d = len(served) + 1  # current top distance, visited u_prev times if we stop here
            found.add((*served, min(u_prev, levels[d - 1])) + (0,) * (n_levels - d))
            if d == n_levels:
                return
            cap = max(1, levels[d - 1] - u_prev, levels[d])
            for u in range(1, min(cap, h - used) + 1):
                extend((*served, min(u_prev + u, levels[d - 1])), u, used + u)

        if h >= 1 and n_levels:
            extend((), 1, 1)
        ordered = sorted(found, key=lambda s: -sum(s))
        maximal: list[tuple[int, ...]] = []
        for s in ordered:
            if sum(s) and not any(all(a >= b for a, b in zip(m, s)) for m in maximal):
                maximal.append(s)
        result = tuple(maximal)
        self._serve[key] = result
        return result
