"""Velocity populations: n agents on one MuJoCo robot, each wanting its own forward speed (paper section 4.2).

Agent i has a target velocity ``v_i ~ U[0, b]`` drawn from ``seed``; per step it gets
``0.1 * clip(1 - |x_velocity - v_i| / w, 0, 1)`` with ``w = b / 20``, so tracking its target for the
1000 steps of an episode gives 100. The base env's reward is discarded (control and contact costs
off); Hopper and Walker2d keep their fall termination. ``agent_params`` are the targets ``(n, 1)``;
read them with :func:`sb3_rmdp.envs.agent_params_of` (``gym.make`` wraps the env, and gymnasium's
wrappers do not forward custom attributes).

Every agent's reward is a function of one number per step, the forward speed. With
``compact_rewards=True`` the env returns that speed (``info["agent_reward_statistic"]``) and the agents'
mean reward instead of the ``(n_agents,)`` vector, and the algorithm computes all env slots' reward
vectors at once with :meth:`VelocityPopulation.rewards_from_statistics`: the same float32 numbers as the
vectors (bit for bit), without n_agents work in every env of every step.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_rmdp.envs.contract import AGENT_REWARD_STATISTIC_KEY

#: upper end b of the target range of each robot, as in the paper and its reference code
TARGET_RANGES: dict[str, float] = {
    "HalfCheetah-v5": 4.0,
    "Ant-v5": 3.0,
    "Hopper-v5": 2.5,
    "Walker2d-v5": 2.5,
}

#: keyword arguments that turn off the base reward's costs (the base reward itself is discarded)
_BASE_KWARGS: dict[str, dict[str, Any]] = {
    "HalfCheetah-v5": {"ctrl_cost_weight": 0.0},
    "Ant-v5": {"ctrl_cost_weight": 0.0, "contact_cost_weight": 0.0, "healthy_z_range": (0.4, 1.0)},
    "Hopper-v5": {"ctrl_cost_weight": 0.0},
    "Walker2d-v5": {"ctrl_cost_weight": 0.0},
}

# MuJoCo 4 warns that HalfCheetah's model file uses a deprecated compiler attribute; gymnasium's file,
# not ours, and harmless. Only this message is silenced, only while our envs load.
_KNOWN_MUJOCO_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)


@contextlib.contextmanager
def _quiet_known_mujoco_warnings() -> Iterator[None]:
    """Swallow MuJoCo's known model-file deprecation warning (and its MUJOCO_LOG.TXT); re-raise others."""
    import mujoco

    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if not any(known in message for known in _KNOWN_MUJOCO_WARNINGS):
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def velocity_targets(n_agents: int, b: float, seed: int = 0) -> np.ndarray:
    """Target velocities ``(n_agents,)`` drawn uniformly from ``[0, b]`` by their own generator."""
    return np.random.default_rng(seed).uniform(0.0, b, size=n_agents)


def velocity_rewards(x_velocity: float, targets: np.ndarray, b: float) -> np.ndarray:
    """Every agent's reward for one step at forward speed ``x_velocity``.

    :param targets: ``(n_agents,)``.
    :return: ``(n_agents,)`` float32 in ``[0, 0.1]``.
    """
    width = b / 20.0
    speeds = np.asarray(x_velocity, dtype=np.float64)
    shape = np.broadcast_shapes(speeds.shape, np.shape(targets))
    out = np.empty(shape, dtype=np.float32)
    if len(shape) < 2:
        out[...] = 0.1 * np.clip(1.0 - np.abs(speeds - targets) / width, 0.0, 1.0)
        return out
    # Rows of speeds (m, 1) against targets (a,): the same float64 arithmetic in place, a block of rows at
    # a time, so that a rollout's (m, a) rewards never make float64 temporaries of their own size.
    rows = max(1, _BLOCK_ENTRIES // max(1, shape[-1]))
    for start in range(0, shape[0], rows):
        block = np.subtract(speeds[start : start + rows], targets)
        np.abs(block, out=block)
        np.divide(block, width, out=block)
        np.subtract(1.0, block, out=block)
        np.clip(block, 0.0, 1.0, out=block)
        np.multiply(0.1, block, out=block)
        out[start : start + rows] = block
    return out


#: float64 entries per block of :func:`velocity_rewards` (256 KiB: the block stays in the CPU's cache)
_BLOCK_ENTRIES = 32_768


def mean_velocity_reward(
    x_velocity: float, sorted_targets: np.ndarray, prefix: np.ndarray, b: float
) -> float:
    """The agents' mean reward for one step at ``x_velocity`` in ``O(log n_agents)``, equal to
    ``velocity_rewards(...).mean()`` up to rounding: the tents that reach ``x_velocity`` are two
    linear pieces, summed from the prefix sums of the sorted targets.

    :param sorted_targets: ``(n_agents,)`` ascending.
    :param prefix: ``(n_agents + 1,)`` cumulative sums of ``sorted_targets``, starting at 0.
    """
    width = b / 20.0
    low, mid, high = np.searchsorted(sorted_targets, [x_velocity - width, x_velocity, x_velocity + width])
    below, above = mid - low, high - mid  # targets within one width, at or below / above the speed
    total = below * (1.0 - x_velocity / width) + (prefix[mid] - prefix[low]) / width
    total += above * (1.0 + x_velocity / width) - (prefix[high] - prefix[mid]) / width
    return float(0.1 * total / len(sorted_targets))


def _tent_sums(points: np.ndarray, weights: np.ndarray, queries: np.ndarray, b: float) -> np.ndarray:
    """``sum_p weights[p] * 0.1 * clip(1 - |q - points[p]| / w, 0, 1)`` for each query q, ``w = b / 20``.

    The tents that reach q are two linear pieces in ``points[p]``, summed from prefix sums.

    :param points: ``(p,)`` ascending.
    :param weights: ``(p,)``.
    :param queries: ``(q,)``.
    :return: ``(q,)`` float64.
    """
    width = b / 20.0
    q = np.asarray(queries, dtype=np.float64).reshape(-1)
    total = np.concatenate(([0.0], np.cumsum(weights)))
    moment = np.concatenate(([0.0], np.cumsum(weights * points)))
    low = np.searchsorted(points, q - width, side="right")
    mid = np.searchsorted(points, q, side="right")
    high = np.searchsorted(points, q + width, side="left")
    below = (total[mid] - total[low]) * (1.0 - q / width) + (moment[mid] - moment[low]) / width
    above = (total[high] - total[mid]) * (1.0 + q / width) - (moment[high] - moment[mid]) / width
    return 0.1 * (below + above)


class VelocityPopulation(gym.Wrapper):
    """An r-MDP over a MuJoCo env: ``n_agents`` agents, each rewarded for moving at its target speed.

    :param env: a MuJoCo env whose ``info`` carries ``x_velocity``.
    :param b: targets lie in ``[0, b]``; the reward's width is ``b / 20``.
    :param n_agents: population size (ignored if ``targets`` is given).
    :param seed: seed of the targets' generator.
    :param targets: explicit targets ``(n_agents,)`` instead of drawing them.
    :param compact_rewards: return the agents' mean reward and the forward speed in
        ``info["agent_reward_statistic"]`` instead of the reward vector (see the module notes).
    """

    def __init__(
        self,
        env: gym.Env,
        b: float,
        n_agents: int = 100,
        seed: int = 0,
        targets: np.ndarray | None = None,
        compact_rewards: bool = False,
    ):
        super().__init__(env)
        if targets is None:
            if n_agents < 1:
                raise ValueError(f"n_agents={n_agents}: a population needs at least one agent.")
            targets = velocity_targets(n_agents, b, seed)
        self.b = float(b)
        self.targets = np.asarray(targets, dtype=np.float64).reshape(-1)
        self.n_agents = len(self.targets)
        self.agent_params = self.targets[:, None]
        self.reward_space = spaces.Box(0.0, 0.1, shape=(self.n_agents,), dtype=np.float32)
        self.compact_rewards = bool(compact_rewards)
        self._sorted_targets = np.sort(self.targets)
        self._prefix = np.concatenate(([0.0], np.cumsum(self._sorted_targets)))

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, _, terminated, truncated, info = self.env.step(action)
        if self.compact_rewards:
            speed = float(info["x_velocity"])
            info[AGENT_REWARD_STATISTIC_KEY] = speed
            return (
                obs,
                mean_velocity_reward(speed, self._sorted_targets, self._prefix, self.b),
                terminated,
                truncated,
                info,
            )
        return obs, velocity_rewards(info["x_velocity"], self.targets, self.b), terminated, truncated, info

    def __getstate__(self) -> dict[str, Any]:
        """The wrapper's attributes and the MuJoCo env's simulator state and random generator.

        Gymnasium's MuJoCo envs pickle as their constructor arguments (``EzPickle``): a copy would restart
        from a fresh simulator. The copy gets the integration state (``mj_getState`` with
        ``mjSTATE_INTEGRATION``: positions, velocities, actuator activations, time, warm start) and the
        reset generator, so that a VecEnv pickled at save time continues bit for bit.
        """
        state = self.__dict__.copy()
        base = self.unwrapped
        if hasattr(base, "model") and hasattr(base, "data"):
            import mujoco

            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            physics = np.empty(mujoco.mj_stateSize(base.model, spec))
            mujoco.mj_getState(base.model, base.data, physics, spec)
            state["_simulator"] = (physics, base._np_random, getattr(base, "_np_random_seed", None))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        simulator = state.pop("_simulator", None)
        self.__dict__.update(state)
        if simulator is not None:
            import mujoco

            physics, generator, seed = simulator
            base: Any = self.unwrapped
            mujoco.mj_setState(base.model, base.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
            base._np_random, base._np_random_seed = generator, seed

    def rewards_from_statistics(self, statistics: np.ndarray, agents: np.ndarray | None = None) -> np.ndarray:
        """Every agent's reward at each of ``statistics`` (forward speeds ``(m,)``): ``(m, n_agents)``
        float32, row e equal bit for bit to ``velocity_rewards(statistics[e], targets, b)``; with
        ``agents`` ``(a,)``, those agents' columns only, ``(m, a)``."""
        speeds = np.asarray(statistics, dtype=np.float64).reshape(-1, 1)
        targets = self.targets if agents is None else self.targets[agents]
        return velocity_rewards(speeds, targets, self.b)  # type: ignore[arg-type]

    def weighted_rewards_from_statistics(self, statistics: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``sum_i weights[i] * reward_i`` at each of ``statistics`` ``(m,)``, in ``O((n + m) log n)``.

        A representative's aggregate reward under its assignment column: equal, up to rounding, to
        ``rewards_from_statistics(statistics) @ weights``, without the ``(m, n_agents)`` array.

        :param weights: ``(n_agents,)``.
        :return: ``(m,)`` float64.
        """
        order = np.argsort(self.targets, kind="stable")
        return _tent_sums(self.targets[order], np.asarray(weights, np.float64)[order], statistics, self.b)

    def episode_returns_from_statistics(self, statistics: np.ndarray) -> np.ndarray:
        """Every agent's undiscounted return over the steps of ``statistics`` (an episode's speeds ``(T,)``),
        ``(n_agents,)`` float64, in ``O((n + T) log T)``; equal, up to rounding, to the sum of the reward
        vectors. (The tent is symmetric: agent i's return is the tent sum of the speeds at its target.)"""
        speeds = np.sort(np.asarray(statistics, dtype=np.float64).reshape(-1))
        return _tent_sums(speeds, np.ones(len(speeds)), self.targets, self.b)


def make_velocity_env(
    base_id: str, n_agents: int = 100, seed: int = 0, compact_rewards: bool = False, **kwargs: Any
) -> VelocityPopulation:
    """A velocity population over gymnasium's ``base_id`` (one of :data:`TARGET_RANGES`).

    :param compact_rewards: see :class:`VelocityPopulation`.
    :param kwargs: extra keyword arguments for the base env (on top of the cost-free defaults).
    """
    if base_id not in TARGET_RANGES:
        raise ValueError(f"No velocity population for {base_id!r}; choose one of {sorted(TARGET_RANGES)}.")
    with _quiet_known_mujoco_warnings():
        env = gym.make(base_id, **{**_BASE_KWARGS[base_id], **kwargs})
    return VelocityPopulation(
        env, TARGET_RANGES[base_id], n_agents=n_agents, seed=seed, compact_rewards=compact_rewards
    )


def half_cheetah_velocity(n_agents: int = 100, seed: int = 0, **kwargs: Any) -> VelocityPopulation:
    """``sb3_rmdp/HalfCheetahVelocity-v0``: targets in [0, 4]."""
    return make_velocity_env("HalfCheetah-v5", n_agents, seed, **kwargs)


def ant_velocity(n_agents: int = 100, seed: int = 0, **kwargs: Any) -> VelocityPopulation:
    """``sb3_rmdp/AntVelocity-v0``: targets in [0, 3], ``healthy_z_range=(0.4, 1)``."""
    return make_velocity_env("Ant-v5", n_agents, seed, **kwargs)


def hopper_velocity(n_agents: int = 100, seed: int = 0, **kwargs: Any) -> VelocityPopulation:
    """``sb3_rmdp/HopperVelocity-v0``: targets in [0, 2.5], falls end the episode."""
    return make_velocity_env("Hopper-v5", n_agents, seed, **kwargs)


def walker2d_velocity(n_agents: int = 100, seed: int = 0, **kwargs: Any) -> VelocityPopulation:
    """``sb3_rmdp/Walker2dVelocity-v0``: targets in [0, 2.5], falls end the episode."""
    return make_velocity_env("Walker2d-v5", n_agents, seed, **kwargs)


def welfare_upper_bound(
    targets: np.ndarray, k: int, b: float, episode_steps: int = 1000, welfare: str = "utilitarian"
) -> float:
    """The best welfare any ``k`` representatives can reach on a velocity population.

    ``welfare="utilitarian"`` (the default) is the best mean over agents, exact (below).
    ``welfare="egalitarian"`` is a valid upper bound on the best minimum over agents, with time-varying
    speeds, **not always tight**: ``min(1, k * t(all agents), utilitarian bound)``, the ``upper`` of
    :func:`egalitarian_bounds` (which also gives an achievable value below it).

    Per step a representative moves at one speed, and agent i collects ``0.1 * tent(speed - v_i)``
    from the representative it is assigned to, with ``tent(d) = clip(1 - |d| / w, 0, 1)`` and
    ``w = b / 20``. Holding one constant speed per representative for the whole episode is therefore
    optimal, and the bound is the 1-D k-placement problem ``max over speeds s_1..s_k`` of
    ``mean_i max_j 0.1 * episode_steps * tent(s_j - v_i)``. For a fixed group the objective is a sum
    of tents, piecewise linear with its only concave kinks at the targets, so some optimum puts every
    representative on a target; agents go to their nearest representative, so a dynamic programme
    over the sorted targets is exact: ``O(k n^2)`` time, ``O(n^2)`` memory.

    :param targets: the agents' target velocities ``(n_agents,)`` (or ``agent_params`` ``(n_agents, 1)``).
    :param k: number of representatives (``k >= n_agents`` gives every agent its own).
    :param b: the population's target range ``[0, b]`` (sets the width ``w = b / 20``).
    :param episode_steps: steps per episode (1000 for gymnasium's MuJoCo envs).
    :param welfare: ``"utilitarian"`` (the mean) or ``"egalitarian"`` (the minimum).
    :return: the welfare bound (mean, or minimum, over agents of their best return), in
        ``[0, 0.1 * episode_steps]``.
    """
    if welfare == "egalitarian":
        v, peak, width = _checked_targets(targets, k, b, episode_steps)
        if k >= len(v):
            return peak
        pooled = peak * min(1.0, k * _time_shared_min(v, width))
        return min(pooled, welfare_upper_bound(v, k, b, episode_steps))  # a minimum is below the mean
    if welfare != "utilitarian":
        raise ValueError(
            f"welfare={welfare!r}: welfare_upper_bound supports 'utilitarian' (the mean) and 'egalitarian' "
            "(the minimum)."
        )
    v = np.sort(np.asarray(targets, dtype=np.float64).reshape(-1))
    n = len(v)
    if n < 1:
        raise ValueError("welfare_upper_bound needs at least one target.")
    if k < 1:
        raise ValueError(f"k={k}: at least one representative is needed.")
    if b <= 0:
        raise ValueError(f"b={b}: the target range [0, b] must have b > 0.")
    peak = 0.1 * episode_steps
    if k >= n:
        return peak
    width = b / 20.0
    # tent[c, i]: agent i's return when the representative sits on target c.
    tent = np.clip(1.0 - np.abs(v[:, None] - v[None, :]) / width, 0.0, 1.0)
    # left[c, i]: total of agents 0..i-1 served by a representative on target c;
    # right[c, i]: total of agents i..n-1 served by c.
    left = np.concatenate([np.zeros((n, 1)), np.cumsum(tent, axis=1)], axis=1)
    right = left[:, -1:] - left
    # Between consecutive representatives on targets a < c, agent i goes to the nearer one:
    # agents with v_i <= (v_a + v_c) / 2 to a, the rest to c. split[a, c] = first index that goes to c.
    midpoints = 0.5 * (v[:, None] + v[None, :])
    split = np.searchsorted(v, midpoints, side="right")
    a_idx, c_idx = np.indices((n, n))
    # between[a, c]: agents a+1..c, split between a and c (a < c); -inf where a >= c.
    between = left[a_idx, split] - left[a_idx, a_idx + 1] + left[c_idx, c_idx + 1] - left[c_idx, split]
    between = np.where(a_idx < c_idx, between, -np.inf)
    # best[c]: best total of agents 0..c with the last representative on target c.
    best = left[np.arange(n), np.arange(n) + 1]  # one representative: agents 0..c all served by c
    answer = float(np.max(best + right[np.arange(n), np.arange(n) + 1]))
    for _ in range(1, k):
        best = np.max(best[:, None] + between, axis=0)
        answer = max(answer, float(np.max(best + right[np.arange(n), np.arange(n) + 1])))
    return peak * answer / n


def egalitarian_bounds(
    targets: np.ndarray, k: int, b: float, episode_steps: int = 1000
) -> tuple[float, float]:
    """Bounds ``(reached, upper)`` on the best minimum agent return of ``k`` representatives.

    Representatives may change speed over time: an agent's return is ``0.1 * episode_steps`` times the
    time average over the episode of ``tent(speed_t - v_i)`` at its representative's speed, so a
    representative is a distribution ``p`` over speeds (its time shares) serving agent i
    ``(p * tent)(v_i)``. Unlike the mean, the minimum can gain from time sharing (two far targets at
    1/2 each beat one speed between them, worth 0 to both), so a constant speed is not optimal.

    * *One group* (one representative serving agents ``G``): ``t(G) = max_p min_{i in G} (p * tent)(v_i)``
      is a linear program over ``p`` on the breakpoints ``{v_i, v_i +- w}`` of ``G``, and exact: between
      two consecutive breakpoints every agent's tent is linear in the speed, so mass at a speed inside
      splits onto the two ends with the same value for every agent. Solved by HiGHS.
    * ``upper`` (**a valid upper bound, not always tight**): pooling the ``k`` representatives' time
      into one measure of mass ``k`` serves every agent at least as well as its own representative,
      and the mass-``k`` program is ``k`` times the one-group one: ``min(1, k * t(all agents))``, or
      the utilitarian optimum (the mean is above the minimum, and a constant speed is optimal for it)
      where that is lower.
    * ``reached`` (**achievable, a lower bound**): the best, over partitions of the sorted targets into
      at most ``k`` *contiguous* groups, of ``min_j t(G_j)`` (``t`` only falls as a group grows, so the
      greedy that grows each group from the left while ``t >= tau`` needs the fewest groups at a
      threshold ``tau``; a bisection on ``tau`` finds the best to ``1e-9``). Contiguous groups are
      **not** always optimal: a representative time-sharing between two far targets can beat every
      contiguous split (the tests show such populations), so the exact optimum lies in
      ``[reached, upper]`` and is only known where the two meet.

    Continuous time shares also bound a real episode's (whole steps out of ``episode_steps``) from
    above, which ``reached`` assumes achievable. About a second per ``k`` at ``n = 100`` for ``reached``;
    ``upper`` is one linear program.

    :param targets: the agents' target velocities ``(n_agents,)`` (or ``agent_params`` ``(n_agents, 1)``).
    :param k: number of representatives (``k >= n_agents`` gives every agent its own).
    :param b: the population's target range ``[0, b]`` (sets the width ``w = b / 20``).
    :param episode_steps: steps per episode (1000 for gymnasium's MuJoCo envs).
    :return: ``(reached, upper)`` on the worst-off agent's return, in ``[0, 0.1 * episode_steps]``.
    """
    v, peak, width = _checked_targets(targets, k, b, episode_steps)
    n = len(v)
    if k >= n:
        return peak, peak
    served: dict[tuple[int, int], float] = {}

    def group(i: int, j: int) -> float:
        """``t`` of the agents ``i..j`` (inclusive) of the sorted targets."""
        if (i, j) not in served:
            served[(i, j)] = _time_shared_min(v[i : j + 1], width)
        return served[(i, j)]

    def greedy(tau: float) -> float | None:
        """The least group value of the greedy cover at threshold ``tau``, None if it needs > k groups."""
        start, values = 0, list[float]()
        while start < n:
            if len(values) == k:
                return None
            low, high = start, n - 1  # group(start, start) = 1 >= tau
            while low < high:
                middle = (low + high + 1) // 2
                if group(start, middle) >= tau:
                    low = middle
                else:
                    high = middle - 1
            values.append(group(start, low))
            start = low + 1
        return min(values)

    # the pooled program, and the mean's exact optimum (a minimum is below the mean)
    upper = min(1.0, k * group(0, n - 1), welfare_upper_bound(v, k, b, episode_steps) / peak)
    reached = greedy(0.0)
    assert reached is not None  # one group holds everyone
    ceiling = upper
    while ceiling - reached > 1e-9:
        found = greedy(0.5 * (reached + ceiling))
        if found is None:
            ceiling = 0.5 * (reached + ceiling)
        else:
            reached = max(found, reached)
    return peak * reached, peak * upper


def _checked_targets(
    targets: np.ndarray, k: int, b: float, episode_steps: int
) -> tuple[np.ndarray, float, float]:
    """Sorted targets ``(n_agents,)``, the peak return and the tent's width, or the error to fix."""
    v = np.sort(np.asarray(targets, dtype=np.float64).reshape(-1))
    if len(v) < 1:
        raise ValueError("welfare_upper_bound needs at least one target.")
    if k < 1:
        raise ValueError(f"k={k}: at least one representative is needed.")
    if b <= 0:
        raise ValueError(f"b={b}: the target range [0, b] must have b > 0.")
    return v, 0.1 * episode_steps, b / 20.0


def _time_shared_min(v: np.ndarray, width: float) -> float:
    """``max_p min_i (p * tent)(v_i)`` over distributions ``p`` of speeds, for targets ``v`` ``(m,)``."""
    from scipy.optimize import linprog

    if np.ptp(v) == 0:
        return 1.0
    speeds = np.unique(np.concatenate([v, v - width, v + width]))
    tents = np.clip(1.0 - np.abs(speeds[None, :] - v[:, None]) / width, 0.0, 1.0)  # (m, speeds)
    m, n_speeds = tents.shape
    # variables (p_1..p_S, t): maximize t, t <= tents @ p, sum p = 1
    result = linprog(
        np.concatenate([np.zeros(n_speeds), [-1.0]]),
        A_ub=np.column_stack([-tents, np.ones(m)]),
        b_ub=np.zeros(m),
        A_eq=np.concatenate([np.ones(n_speeds), [0.0]])[None, :],
        b_eq=[1.0],
        bounds=[(0.0, None)] * n_speeds + [(0.0, 1.0)],
        method="highs",
    )
    if result.status != 0:
        raise RuntimeError(f"the time-sharing linear program failed: {result.message}")
    return float(result.x[-1])
