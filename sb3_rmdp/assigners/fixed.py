"""Fixed assignments: a given one (``FixedAssigner``, e.g. an oracle) or a random even split."""

from __future__ import annotations

import numpy as np

from sb3_rmdp.assigners.base import Assigner


def as_assignment_weights(assignment: np.ndarray | list, n_agents: int, k: int) -> np.ndarray:
    """Validate a hard ``(n_agents,)`` or soft ``(n_agents, k)`` assignment; return weights ``(n_agents, k)``.

    :raises ValueError: naming the expected shape, on a wrong shape, an index outside ``[0, k)`` or a
        row that is not a probability vector.
    """
    array = np.asarray(assignment)
    if array.ndim == 1 and array.shape == (n_agents,) and np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() >= k:
            raise ValueError(
                f"Assignment indices must lie in [0, k) = [0, {k}); got {array.min()}..{array.max()}."
            )
        weights = np.zeros((n_agents, k))
        weights[np.arange(n_agents), array] = 1.0
        return weights
    if array.shape == (n_agents, k):
        weights = array.astype(np.float64)
        if np.any(weights < 0) or not np.allclose(weights.sum(axis=1), 1.0):
            raise ValueError("Each row of a soft assignment (n_agents, k) must be non-negative and sum to 1.")
        return weights
    raise ValueError(
        f"Assignment of shape {array.shape}: expected integers of shape (n_agents,) = ({n_agents},) "
        f"or weights of shape (n_agents, k) = ({n_agents}, {k})."
    )


class FixedAssigner(Assigner):
    """A fixed assignment given up front: hard ``(n_agents,)`` indices or soft ``(n_agents, k)`` weights.

    :param assignment: the assignment; validated against the env when the model is set up.
    :param figure_every: rollouts between two ``assignment/figure`` plots (0: none); see :class:`Assigner`.
    """

    def __init__(self, assignment: np.ndarray | list, verbose: int = 0, figure_every: int = 10):
        super().__init__(verbose=verbose, figure_every=figure_every)
        self.given = np.asarray(assignment)

    def _setup(self) -> None:
        weights = as_assignment_weights(self.given, self.n_agents, self.k)
        if self.given.ndim == 1:
            self._check_sizes(self.given.astype(np.int64))
        self._set_weights(weights)


def equal_width_bins(
    values: np.ndarray, k: int, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """Representative of each agent when ``[low, high]`` is cut into k bins of equal width.

    :param values: ``(n_agents,)`` one parameter per agent (e.g. target velocities).
    :return: ``(n_agents,)`` bin index in ``[0, k)`` (values outside the range go to the end bins).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    low = float(values.min()) if low is None else float(low)
    high = float(values.max()) if high is None else float(high)
    if not high > low:
        return np.zeros(len(values), dtype=np.int64)
    return np.clip(np.floor((values - low) / (high - low) * k), 0, k - 1).astype(np.int64)


class OracleAssigner(Assigner):
    """The oracle for 1-D agent params (velocity populations): k equal-width bins, fixed.

    :param low: lower end of the parameter range (default: the smallest agent param); for velocity
        populations the reference uses the target range, ``[0, b]``.
    :param high: upper end (default: the largest agent param).
    :param figure_every: rollouts between two ``assignment/figure`` plots (0: none); see :class:`Assigner`.
    """

    def __init__(
        self, low: float | None = None, high: float | None = None, verbose: int = 0, figure_every: int = 10
    ):
        super().__init__(verbose=verbose, figure_every=figure_every)
        self.low, self.high = low, high

    def _setup(self) -> None:
        if self.agent_params is None or self.agent_params.reshape(self.n_agents, -1).shape[1] != 1:
            raise ValueError(
                "OracleAssigner needs one parameter per agent: the env must declare `agent_params` of shape "
                "(n_agents, 1), as velocity populations do. For other populations use FixedAssigner."
            )
        hard = equal_width_bins(self.agent_params.reshape(-1), self.k, self.low, self.high)
        self._check_sizes(hard)
        self._set_hard_assignment(hard)


def random_even_assignment(n_agents: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random hard assignment ``(n_agents,)`` whose group sizes differ by at most one."""
    assignment = np.empty(n_agents, dtype=np.int64)
    assignment[rng.permutation(n_agents)] = np.arange(n_agents) % k
    return assignment


class RandomAssigner(Assigner):
    """The random baseline: a random split into k groups as even as possible, then fixed.

    Groups of ``floor(n / k)`` or ``ceil(n / k)`` agents meet every feasible capacity limit
    (``k * c_min <= n <= k * c_max``).

    :param seed: seed of the assigner's own generator (``None``: the model's seed).
    :param figure_every: rollouts between two ``assignment/figure`` plots (0: none); see :class:`Assigner`.
    """

    def _setup(self) -> None:
        self._set_hard_assignment(random_even_assignment(self.n_agents, self.k, self.rng))
