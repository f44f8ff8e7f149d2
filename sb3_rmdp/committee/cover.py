"""Epsilon-cover clustering of agent params: PACMAN's first step (policy committees).

Given agents described by ``agent_params`` ``(n_agents, d)``, find k *prototypes* that maximize the
number of agents within ``epsilon`` of a prototype in the L-infinity norm::

    max over theta_1..theta_k of  sum_i 1(min_j ||theta_j - theta_i||_inf <= epsilon)

Each representative is then trained for its prototype's group of agents (or for the prototype itself,
see :mod:`sb3_rmdp.committee.prototypes`). :func:`epsilon_cover` is the entry point; the two solvers
live in :mod:`sb3_rmdp.committee.greedy` and :mod:`sb3_rmdp.committee.gradient`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

CoverMethod = Literal["greedy", "gradient"]
METHODS: tuple[str, ...] = ("greedy", "gradient")


@dataclass(frozen=True)
class CoverResult:
    """An epsilon-cover of the agents by k prototypes, and the assignment it induces.

    :param prototypes: ``(k, d)`` the prototypes' params.
    :param assignment: ``(n_agents,)`` each agent's prototype: a covered agent goes to the nearest
        prototype that covers it, an uncovered one to the nearest prototype (both in L-infinity).
    :param covered: ``(n_agents,)`` bool, whether an agent lies within ``epsilon`` of some prototype.
    :param epsilon: the cover radius (L-infinity).
    :param method: the solver that found the prototypes (``"greedy"`` or ``"gradient"``).
    """

    prototypes: np.ndarray
    assignment: np.ndarray
    covered: np.ndarray
    epsilon: float
    method: str

    @property
    def k(self) -> int:
        """Number of prototypes (the policy budget)."""
        return int(self.prototypes.shape[0])

    @property
    def n_agents(self) -> int:
        """Number of agents the cover was computed for."""
        return int(self.assignment.shape[0])

    @property
    def covered_fraction(self) -> float:
        """Fraction of the agents within ``epsilon`` of a prototype, in ``[0, 1]``."""
        return float(self.covered.mean())

    @property
    def cluster_sizes(self) -> np.ndarray:
        """``(k,)`` number of agents assigned to each prototype (covered or not)."""
        return np.bincount(self.assignment, minlength=self.k)

    @property
    def uncovered(self) -> np.ndarray:
        """Indices of the agents no prototype covers (sorted)."""
        return np.flatnonzero(~self.covered)

    def __str__(self) -> str:
        uncovered = self.uncovered
        listed = ", ".join(str(i) for i in uncovered[:10]) + (", ..." if len(uncovered) > 10 else "")
        return (
            f"epsilon-cover ({self.method}, epsilon={self.epsilon:g}, k={self.k}): "
            f"{int(self.covered.sum())}/{self.n_agents} agents covered ({100 * self.covered_fraction:.1f}%); "
            f"cluster sizes {self.cluster_sizes.tolist()}; "
            f"uncovered agents: {'[' + listed + ']' if len(uncovered) else 'none'}"
        )


def linf_distances(agent_params: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """L-infinity distances between agents and prototypes.

    :param agent_params: ``(n_agents, d)``.
    :param prototypes: ``(k, d)``.
    :return: ``(n_agents, k)``.
    """
    return np.abs(agent_params[:, None, :] - prototypes[None, :, :]).max(axis=2)


def cover_tolerance(agent_params: np.ndarray, epsilon: float) -> float:
    """Slack added to ``epsilon`` in every coverage test, so that floating-point rounding of a box
    centre (``c + epsilon``) never uncovers an agent on the box's edge."""
    scale = float(np.abs(agent_params).max()) if agent_params.size else 0.0
    return 1e-9 * (epsilon + scale)


def assign_to_prototypes(
    agent_params: np.ndarray, prototypes: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """The assignment a set of prototypes induces.

    A covered agent goes to the nearest prototype covering it, which is simply the nearest prototype
    (ties to the lowest index); the covered flag says whether that one lies within ``epsilon``.

    :param agent_params: ``(n_agents, d)``.
    :param prototypes: ``(k, d)``.
    :return: ``assignment`` ``(n_agents,)`` and ``covered`` ``(n_agents,)`` bool.
    """
    distances = linf_distances(agent_params, prototypes)
    assignment = distances.argmin(axis=1)
    nearest = distances[np.arange(len(agent_params)), assignment]
    return assignment.astype(np.int64), nearest <= epsilon + cover_tolerance(agent_params, epsilon)


def centre_on_agents(agent_params: np.ndarray, prototypes: np.ndarray, epsilon: float) -> np.ndarray:
    """Move each prototype to the centre of the box spanned by the covered agents assigned to it.

    Those agents all lie within ``epsilon`` of the old prototype, so the box is at most ``2 epsilon``
    wide and its centre still covers them: coverage never drops, and the prototype sits in the middle
    of its agents rather than on the edge of a candidate box. Prototypes without covered agents stay.

    :param agent_params: ``(n_agents, d)``.
    :param prototypes: ``(k, d)``.
    :return: ``(k, d)`` the centred prototypes.
    """
    assignment, covered = assign_to_prototypes(agent_params, prototypes, epsilon)
    centred = prototypes.copy()
    for j in range(len(prototypes)):
        members = agent_params[covered & (assignment == j)]
        if len(members):
            centred[j] = 0.5 * (members.min(axis=0) + members.max(axis=0))
    return centred


def check_cover_inputs(agent_params: np.ndarray | list, k: int, epsilon: float) -> np.ndarray:
    """Validate the inputs of :func:`epsilon_cover`; return the params as float64 ``(n_agents, d)``.

    :raises ValueError: naming the fix, on params that are not a finite 2-D array, ``k < 1``,
        ``k > n_agents`` or ``epsilon <= 0``.
    """
    params = np.asarray(agent_params, dtype=np.float64)
    if params.ndim != 2 or params.shape[0] < 1 or params.shape[1] < 1:
        raise ValueError(
            f"agent_params of shape {params.shape}: pass a 2-D array (n_agents, d), one row per agent; "
            "for one parameter per agent use params.reshape(-1, 1)."
        )
    if not np.all(np.isfinite(params)):
        raise ValueError("agent_params contain NaN or inf: every agent's params must be finite.")
    if int(k) != k or k < 1:
        raise ValueError(f"k={k}: the number of prototypes must be a whole number, k >= 1.")
    if k > len(params):
        raise ValueError(f"k={k} prototypes for {len(params)} agents: use k <= n_agents = {len(params)}.")
    if not (np.isfinite(epsilon) and epsilon > 0):
        raise ValueError(
            f"epsilon={epsilon}: the cover radius must be a positive number (in the units of agent_params)."
        )
    return params


def epsilon_cover(
    agent_params: np.ndarray | list,
    k: int,
    epsilon: float,
    method: CoverMethod | str = "greedy",
    seed: int = 0,
    max_boxes: int = 2_000_000,
) -> CoverResult:
    """Cover as many agents as possible with k L-infinity balls of radius ``epsilon``.

    ``method="greedy"`` is the greedy intersection algorithm (a ``1 - 1/e`` approximation of the best
    coverage, exponential in d: refused when there are more than ``max_boxes`` candidate boxes);
    ``method="gradient"`` minimizes PACMAN's relaxed objective with Adam, for any d. See
    :func:`~sb3_rmdp.committee.greedy.greedy_prototypes` and
    :func:`~sb3_rmdp.committee.gradient.gradient_prototypes`. Either way each prototype is then
    centred on the covered agents assigned to it (:func:`centre_on_agents`).

    :param agent_params: ``(n_agents, d)`` the agents' params (``RMDPPPO.agent_params``).
    :param k: number of prototypes, ``1 <= k <= n_agents``.
    :param epsilon: the cover radius, in the units of ``agent_params``.
    :param method: ``"greedy"`` or ``"gradient"``.
    :param seed: seed of the gradient method's own generators (the greedy method is deterministic).
    :param max_boxes: the greedy method's budget of candidate boxes (the product over dimensions of
        the number of distinct coordinates, up to ``n_agents ** d``).
    :return: the prototypes ``(k, d)``, the assignment ``(n_agents,)`` and which agents are covered.
    """
    from sb3_rmdp.committee.gradient import gradient_prototypes
    from sb3_rmdp.committee.greedy import greedy_prototypes

    params = check_cover_inputs(agent_params, k, epsilon)
    epsilon, k = float(epsilon), int(k)
    if method == "greedy":
        prototypes = greedy_prototypes(params, k, epsilon, max_boxes=max_boxes)
    elif method == "gradient":
        prototypes = gradient_prototypes(params, k, epsilon, seed=seed)
    else:
        raise ValueError(f"Unknown cover method {method!r}: use one of {list(METHODS)}.")
    prototypes = centre_on_agents(params, prototypes, epsilon)
    assignment, covered = assign_to_prototypes(params, prototypes, epsilon)
    return CoverResult(prototypes, assignment, covered, epsilon, str(method))
