"""``KMeansAssigner``: the clustering baseline of the paper (section 4, "Algorithms")."""

from __future__ import annotations

import warnings

import numpy as np

from sb3_rmdp.assigners.base import Assigner
from sb3_rmdp.envs.contract import AGENT_REWARD_STATISTIC_KEY, agent_rewards_of


def kmeans_assignment(
    features: np.ndarray,
    k: int,
    seed: int,
    n_init: int = 10,
    c_min: int | None = None,
    c_max: int | None = None,
) -> np.ndarray:
    """Cluster agents by their feature rows with scikit-learn's ``KMeans``; no cluster left empty.

    With capacity limits, the agents then go to the centroids by the min-cost assignment of their
    squared distances with every group's size in ``[c_min, c_max]``
    (:func:`~sb3_rmdp.matching.capacity_assignment`).

    When there are fewer distinct rows than k (e.g. every agent got the same rewards), KMeans leaves
    clusters empty; each empty cluster then takes the agent of the largest cluster that lies farthest
    from its centroid, so every representative serves someone.

    :param features: ``(n_agents, d)``, e.g. each agent's per-step rewards.
    :return: ``(n_agents,)`` cluster of each agent.
    """
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(features)
    labels = km.labels_.astype(np.int64)
    distance = np.linalg.norm(features - km.cluster_centers_[labels], axis=1)
    for j in range(k):
        if np.any(labels == j):
            continue
        largest = int(np.argmax(np.bincount(labels, minlength=k)))
        members = np.flatnonzero(labels == largest)
        agent = int(members[np.argmax(distance[members])])
        labels[agent] = j
        distance[agent] = 0.0
    if c_min not in (None, 0) or c_max is not None:
        from sb3_rmdp.matching import capacity_assignment

        squared = ((features[:, None, :] - km.cluster_centers_[None, :, :]) ** 2).sum(axis=2)
        labels = capacity_assignment(squared, c_min, c_max)
    return labels


class KMeansAssigner(Assigner):
    """Universal policy first, then K-means on agents' reward sequences, then a fixed assignment.

    1. **Universal phase**, the first ``pretrain_fraction`` of ``learn``'s budget: every agent has
       weight ``1/k`` on every representative, so each representative maximizes the mean welfare of
       all agents (the universal objective).
    2. **Clustering**: each agent is described by its rewards over the last ``n_samples`` env steps of
       the universal phase (real, stochastic steps of the universal policies, recorded from the
       rollouts themselves), and scikit-learn's ``KMeans(k)`` (seeded) groups the agents.
    3. **Specialization**: the assignment is fixed and training goes on. The representatives
       **continue from the universal policies** rather than restarting: they already solve what all
       agents share (moving, reaching home), so the rest of the budget goes to specializing. (The
       reference code started fresh policies, which spends the budget twice.)

    :param pretrain_fraction: fraction of the ``learn`` budget spent in the universal phase, in (0, 1).
    :param n_samples: env steps whose rewards describe each agent.
    :param n_init: KMeans restarts.
    :param seed: seed of KMeans (``None``: the model's seed, or 0).
    :param figure_every: rollouts between two ``assignment/figure`` plots (0: none); see :class:`Assigner`.
    """

    def __init__(
        self,
        pretrain_fraction: float = 0.5,
        n_samples: int = 10_000,
        n_init: int = 10,
        seed: int | None = None,
        verbose: int = 0,
        figure_every: int = 10,
    ):
        if not 0.0 < pretrain_fraction < 1.0:
            raise ValueError(f"pretrain_fraction={pretrain_fraction} must lie in (0, 1).")
        if n_samples < 1:
            raise ValueError(f"n_samples={n_samples} must be positive.")
        super().__init__(seed=seed, verbose=verbose, figure_every=figure_every)
        self.pretrain_fraction = float(pretrain_fraction)
        self.n_samples = int(n_samples)
        self.n_init = int(n_init)

    def _setup(self) -> None:
        self.clustered = False
        self.hard_assignment = np.full(self.n_agents, -1, dtype=np.int64)
        self.switch_timestep: int | None = None
        self._recorded: list[np.ndarray] = []
        self._set_weights(np.full((self.n_agents, self.k), 1.0 / self.k))

    def _on_training_start(self) -> None:
        if not self.clustered and self.switch_timestep is None:
            total = int(self.locals.get("total_timesteps", 0))
            self.switch_timestep = int(self.pretrain_fraction * total)

    def _on_step(self) -> bool:
        if self.clustered or self.switch_timestep is None:
            return True
        if self.num_timesteps > self.switch_timestep - self.n_samples:
            # the reward vectors, or with compact rewards the env's rewards of the statistics
            infos = self.locals["infos"]
            compact = AGENT_REWARD_STATISTIC_KEY in infos[0]
            self._recorded.append(agent_rewards_of(infos, self.model.get_env() if compact else None))
        return True

    def _update(self) -> None:
        if self.clustered or self.switch_timestep is None or self.num_timesteps < self.switch_timestep:
            return
        rewards = np.concatenate(self._recorded, axis=0)[-self.n_samples :]  # (n_samples, n_agents)
        seed = self.seed if self.seed is not None else int(self.rng.integers(2**31 - 1))
        limits = self.limits
        self._set_hard_assignment(
            kmeans_assignment(rewards.T, self.k, seed, self.n_init, limits.c_min, limits.c_max)
        )
        self.clustered = True
        self._recorded = []
