"""Prototypes from off-the-shelf clustering, to compare with PACMAN's epsilon-cover (the slides' Ablation 1).

Every method turns agents' params ``(n_agents, d)`` into k *prototypes* ``(k, d)``:

- ``coverage``: PACMAN's epsilon-cover (:func:`~sb3_rmdp.committee.epsilon_cover`, greedy intersection);
- ``kmeans++``: scikit-learn's ``KMeans`` (``init="k-means++"``, 10 starts), prototypes = centroids;
- ``gmm``: scikit-learn's ``GaussianMixture``, prototypes = the components' means;
- ``dbscan``: scikit-learn's ``DBSCAN`` with ``eps = epsilon``, prototypes = the clusters' means. DBSCAN
  picks its own number of clusters: when it finds more than k, the k largest are kept; when fewer, the
  missing prototypes are agents drawn at random among those outside the kept clusters (noise first);
- ``random``: k distinct agents drawn at random.

Each method is then reduced to its prototypes: an agent goes to the nearest prototype in L-infinity
(the rule of :func:`sb3_rmdp.deploy.zero_shot_select`), training agents and new agents alike (for
K-means in 1-D this is its own labelling; for a GMM it ignores the components' widths). Every random
draw is seeded by ``seed`` through the method's own generator; the global streams are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sb3_rmdp.committee.cover import epsilon_cover, linf_distances

#: the clustering methods of :func:`cluster_agents`
CLUSTERING_METHODS = ("coverage", "kmeans++", "gmm", "dbscan", "random")
#: the methods that take a radius ``epsilon``
EPSILON_METHODS = ("coverage", "dbscan")


@dataclass(frozen=True)
class Clustering:
    """k prototypes of one method and the agents' assignment they induce.

    :param prototypes: ``(k, d)``.
    :param assignment: ``(n_agents,)`` each agent's nearest prototype (L-infinity).
    :param n_clusters_found: the clusters the method itself found (differs from k only for DBSCAN).
    """

    prototypes: np.ndarray
    assignment: np.ndarray
    n_clusters_found: int


def nearest_prototype(agent_params: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Each agent's nearest prototype in L-infinity (ties to the lowest index).

    :param agent_params: ``(n_agents, d)``.
    :param prototypes: ``(k, d)``.
    :return: ``(n_agents,)`` int64 indices in ``[0, k)``.
    """
    return linf_distances(agent_params, prototypes).argmin(axis=1).astype(np.int64)


def cluster_agents(
    method: str,
    agent_params: np.ndarray,
    k: int,
    epsilon: float | None = None,
    seed: int = 0,
    dbscan_min_samples: int = 5,
) -> Clustering:
    """k prototypes of ``agent_params`` by ``method`` (one of :data:`CLUSTERING_METHODS`).

    :param agent_params: ``(n_agents, d)``.
    :param k: the number of prototypes (the policy budget), ``1 <= k <= n_agents``.
    :param epsilon: the cover radius (``coverage``) or DBSCAN's ``eps`` (``dbscan``); unused otherwise.
    :param seed: seed of the method's own random draws.
    :param dbscan_min_samples: DBSCAN's ``min_samples``.
    :return: the prototypes ``(k, d)`` and the nearest-prototype assignment ``(n_agents,)``.
    :raises ValueError: on an unknown method, or ``coverage``/``dbscan`` without ``epsilon``.
    """
    params = np.asarray(agent_params, dtype=np.float64)
    if method in EPSILON_METHODS and epsilon is None:
        raise ValueError(f"method {method!r} needs a radius: pass epsilon (in the units of agent_params).")
    radius = float("nan") if epsilon is None else float(epsilon)
    found = k
    if method == "coverage":
        prototypes = epsilon_cover(params, k, radius, "greedy", seed=seed).prototypes
    elif method == "kmeans++":
        from sklearn.cluster import KMeans

        prototypes = KMeans(k, init="k-means++", n_init=10, random_state=seed).fit(params).cluster_centers_
    elif method == "gmm":
        from sklearn.mixture import GaussianMixture

        prototypes = GaussianMixture(k, random_state=seed).fit(params).means_
    elif method == "dbscan":
        prototypes, found = _dbscan_prototypes(params, k, radius, seed, dbscan_min_samples)
    elif method == "random":
        prototypes = params[np.random.default_rng(seed).choice(len(params), size=k, replace=False)]
    else:
        raise ValueError(f"unknown clustering method {method!r}; choose one of {list(CLUSTERING_METHODS)}.")
    prototypes = np.asarray(prototypes, dtype=np.float64).reshape(k, params.shape[1])
    return Clustering(prototypes, nearest_prototype(params, prototypes), int(found))


def _dbscan_prototypes(
    params: np.ndarray, k: int, epsilon: float, seed: int, min_samples: int
) -> tuple[np.ndarray, int]:
    """DBSCAN's clusters' means ``(k, d)``, cut or filled up to k (see the module docstring); and the
    number of clusters it found."""
    from sklearn.cluster import DBSCAN

    labels = DBSCAN(eps=epsilon, min_samples=min_samples).fit(params).labels_
    clusters = [c for c in np.unique(labels) if c >= 0]
    sizes = np.array([np.sum(labels == c) for c in clusters], dtype=np.int64)
    kept = [clusters[i] for i in np.argsort(-sizes, kind="stable")[:k]]
    prototypes = [params[labels == c].mean(axis=0) for c in kept]
    if len(prototypes) < k:
        rng = np.random.default_rng(seed)
        outside = np.flatnonzero(~np.isin(labels, kept))
        noise_first = np.concatenate(
            [rng.permutation(outside[labels[outside] < 0]), rng.permutation(outside[labels[outside] >= 0])]
        )
        if len(noise_first) < k - len(prototypes):  # every agent is in a kept cluster: draw any agent
            noise_first = rng.permutation(len(params))
        prototypes += [params[i] for i in noise_first[: k - len(prototypes)]]
    return np.stack(prototypes), len(clusters)
