"""``CoverageAssigner``: PACMAN's policy committee, an assignment fixed by an epsilon-cover.

The clustering itself lives in :mod:`sb3_rmdp.committee`.
"""

from __future__ import annotations

import numpy as np
import torch as th

from sb3_rmdp.assigners.base import Assigner
from sb3_rmdp.committee.cover import CoverResult, epsilon_cover
from sb3_rmdp.matching import AssignmentLimits

TRAIN_ON = ("agents", "prototype")


class CoverageAssigner(Assigner):
    """Cluster the agents by an epsilon-cover of their params, then keep the assignment fixed.

    :func:`~sb3_rmdp.committee.epsilon_cover` picks k prototypes covering as many agents as possible
    within ``epsilon`` (L-infinity) of ``agent_params``; agent i goes to the representative of its
    prototype (the nearest covering one, or the nearest if none covers it). The cover is kept in
    :attr:`cover` (saved with the model) for zero-shot selection
    (:func:`~sb3_rmdp.deploy.zero_shot_select`).

    What each representative trains on:

    - ``train_on="agents"`` (default): the mean reward of its agents, as every other assigner.
    - ``train_on="prototype"``: its prototype's own reward, PACMAN's committee training. The env must
      be built by :func:`~sb3_rmdp.committee.prototype_population`, which appends the k prototypes as
      the last k agents; the cover is recomputed on the first ``n_agents - k`` agents (same
      ``epsilon``, ``method`` and ``seed``) and must match them. Representative j then has weight 1 on
      prototype agent ``n_agents - k + j`` only: :meth:`weights` rows of the other agents are zero (they
      do not steer training), while :meth:`assignment` is the deployed one, each agent to its
      prototype's representative. The ``welfare/*`` logs average over all the env's agents, prototypes
      included.

    :param epsilon: the cover radius, in the units of ``agent_params`` (required; ``None`` raises).
    :param method: ``"greedy"`` (greedy intersection, small d) or ``"gradient"`` (any d).
    :param train_on: ``"agents"`` or ``"prototype"``.
    :param seed: seed of the gradient method (``None``: the model's seed, or 0).
    """

    cover: CoverResult
    cover_seed: int

    # its assignment is the cover's (each agent to its prototype's representative): no limits
    respects_limits = False

    def __init__(
        self,
        epsilon: float | None = None,
        method: str = "greedy",
        train_on: str = "agents",
        seed: int | None = None,
        verbose: int = 0,
    ):
        if epsilon is None:
            raise ValueError(
                "CoverageAssigner needs the cover radius: pass assigner=CoverageAssigner(epsilon=...) "
                "(in the units of the env's agent_params, e.g. b / 20 for a velocity population); the name "
                "'coverage' alone cannot set it."
            )
        if not (np.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon={epsilon}: the cover radius must be a positive number.")
        if method not in ("greedy", "gradient"):
            raise ValueError(f"Unknown cover method {method!r}: use 'greedy' or 'gradient'.")
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on={train_on!r}: use one of {list(TRAIN_ON)}.")
        super().__init__(seed=seed, verbose=verbose)
        self.epsilon = float(epsilon)
        self.method = method
        self.train_on = train_on

    def _setup(self) -> None:
        if self.agent_params is None:
            raise ValueError(
                "CoverageAssigner clusters agents by their params, but the env declares no `agent_params`: "
                "use a population that does (velocity or preference populations), set "
                "`self.agent_params = array (n_agents, d)` in your env, or pick another assigner "
                "(e.g. assigner='em')."
            )
        params = self.agent_params.reshape(self.n_agents, -1)
        seed = self.cover_seed
        if self.train_on == "agents":
            self.cover = epsilon_cover(params, self.k, self.epsilon, self.method, seed=seed)
            self._set_hard_assignment(self.cover.assignment)
            return
        self.cover = self._prototype_cover(params, seed)
        n_population = self.n_agents - self.k
        weights = np.zeros((self.n_agents, self.k))
        weights[n_population + np.arange(self.k), np.arange(self.k)] = 1.0
        self._set_weights(weights)
        self.hard_assignment = np.concatenate([self.cover.assignment, np.arange(self.k)]).astype(np.int64)

    def _prototype_cover(self, params: np.ndarray, seed: int) -> CoverResult:
        """The cover of the population's agents, checked against the prototype agents the env appended."""
        n_population = self.n_agents - self.k
        fix = (
            "build the env with sb3_rmdp.committee.prototype_population(env, cover), where cover = "
            f"epsilon_cover(agent_params, k={self.k}, epsilon={self.epsilon:g}, method={self.method!r}, "
            f"seed={seed}) is computed on the population's own agents"
        )
        if n_population < self.k:
            raise ValueError(
                f"train_on='prototype' expects the env's last k={self.k} agents to be the prototypes, but "
                f"the env has only {self.n_agents} agents: {fix}."
            )
        cover = epsilon_cover(params[:n_population], self.k, self.epsilon, self.method, seed=seed)
        if not np.allclose(params[n_population:], cover.prototypes, rtol=1e-6, atol=1e-9):
            raise ValueError(
                f"train_on='prototype': the env's last k={self.k} agents are not the prototypes of the "
                f"cover of its first {n_population} agents: {fix}."
            )
        return cover

    def bind(
        self,
        n_agents: int,
        k: int,
        agent_params: np.ndarray | None = None,
        seed: int | None = None,
        device: th.device | str = "cpu",
        limits: AssignmentLimits | None = None,
    ) -> None:
        """Bind as every assigner does; the cover's seed is ``seed`` given here (the model's) unless the
        assigner has its own, and 0 when neither is set."""
        if not self.is_bound:
            own = self.seed if self.seed is not None else seed
            self.cover_seed = 0 if own is None else int(own)
        super().bind(n_agents, k, agent_params, seed=seed, device=device, limits=limits)

    def assignment(self) -> np.ndarray:
        """The deployed hard assignment ``(n_agents,)``: each agent to its prototype's representative.

        With ``train_on="prototype"`` the training weights differ from it (see the class docstring).
        """
        return self.hard_assignment

    def _log(self) -> None:
        super()._log()
        self.logger.record("assignment/covered_fraction", self.cover.covered_fraction)
