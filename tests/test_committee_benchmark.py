"""``benchmarks/committee.py``'s pure parts: the clustering baselines and the exact velocity-return trick."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import load_benchmark

from sb3_rmdp.committee import epsilon_cover, linf_distances
from sb3_rmdp.envs.velocity import TARGET_RANGES, velocity_targets

committee = load_benchmark("committee")


@pytest.mark.parametrize("method", committee.METHODS)
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("epsilon", [0.1, 0.4])
def test_every_method_gives_k_prototypes_and_the_nearest_prototype_assignment(
    method: str, k: int, epsilon: float
) -> None:
    params = velocity_targets(100, 4.0, seed=3)[:, None]
    clustering = committee.cluster_agents(method, params, k, epsilon, seed=1)
    assert clustering.prototypes.shape == (k, 1) and np.all(np.isfinite(clustering.prototypes))
    assert clustering.assignment.shape == (100,) and clustering.assignment.dtype == np.int64
    assert 0 <= clustering.assignment.min() and clustering.assignment.max() < k
    distances = linf_distances(params, clustering.prototypes)
    np.testing.assert_array_equal(clustering.assignment, distances.argmin(axis=1))
    again = committee.cluster_agents(method, params, k, epsilon, seed=1)  # seeded, no global stream
    np.testing.assert_array_equal(again.prototypes, clustering.prototypes)
    if method == "coverage":
        np.testing.assert_array_equal(clustering.prototypes, epsilon_cover(params, k, epsilon).prototypes)
    if method == "random":
        assert len(np.unique(clustering.prototypes)) == k
        assert np.isin(clustering.prototypes, params).all()
    if method in ("kmeans++", "gmm"):  # centroids and means lie inside the agents' range
        assert params.min() <= clustering.prototypes.min() and clustering.prototypes.max() <= params.max()


def test_dbscan_keeps_the_k_largest_clusters_or_pads_with_agents() -> None:
    groups = [np.full(n, centre) + np.linspace(-0.05, 0.05, n) for centre, n in [(0, 12), (1, 9), (2, 6)]]
    params = np.concatenate([*groups, [3.5, 4.0]])[:, None]  # two noise agents
    many = committee.cluster_agents("dbscan", params, 2, 0.1, seed=0, dbscan_min_samples=3)
    assert many.n_clusters_found == 3
    np.testing.assert_allclose(np.sort(many.prototypes[:, 0]), [0.0, 1.0], atol=1e-12)
    few = committee.cluster_agents("dbscan", params, 5, 0.1, seed=0, dbscan_min_samples=3)
    assert few.n_clusters_found == 3
    np.testing.assert_allclose(np.sort(few.prototypes[:3, 0]), [0.0, 1.0, 2.0], atol=1e-12)
    np.testing.assert_array_equal(np.sort(few.prototypes[3:, 0]), [3.5, 4.0])  # noise agents first


class LinearPolicies:
    """k fixed linear-tanh policies with ``RMDPPPO.predict``'s signature (no training needed)."""

    def __init__(self, k: int, obs_dim: int, action_dim: int, seed: int = 0):
        self.weights = 0.3 * np.random.default_rng(seed).normal(size=(k, action_dim, obs_dim))

    def predict(self, obs: np.ndarray, deterministic: bool, representative: Any) -> tuple[np.ndarray, None]:
        representative = np.broadcast_to(representative, (len(obs),))
        return np.tanh(np.einsum("bao,bo->ba", self.weights[representative], obs)), None


def test_returns_from_forward_speeds_equal_the_populations_rewards() -> None:
    targets = velocity_targets(7, 4.0, seed=5)
    env = committee.population_env("HalfCheetah-v5", targets)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    total, speeds = np.zeros(len(targets)), []
    for _ in range(300):
        _, rewards, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        total += rewards
        speeds.append(info["x_velocity"])
    np.testing.assert_allclose(
        committee.velocity_returns(np.array([speeds]), targets, 4.0)[0], total, rtol=1e-12
    )


@pytest.mark.parametrize("base", ["HalfCheetah", "Hopper"])  # Hopper falls: episodes of different lengths
def test_recorded_episodes_give_every_agents_returns(base: str) -> None:
    base_id, b, k = f"{base}-v5", TARGET_RANGES[f"{base}-v5"], 2
    targets = velocity_targets(9, b, seed=2)
    probe = committee.population_env(base_id, targets)
    policies = LinearPolicies(k, probe.observation_space.shape[0], probe.action_space.shape[0])
    representatives, seeds = np.array([0, 0, 1, 1]), np.array([10, 11, 10, 11])
    x = committee.record_x_velocities(
        policies, lambda: committee.population_env(base_id, np.zeros(1)), representatives, seeds
    )
    expected = np.zeros((len(targets), k))
    for j, seed in zip(representatives, seeds):  # the same episodes, stepped in the agents' own env
        obs, _ = probe.reset(seed=int(seed))
        done = False
        while not done:
            action, _ = policies.predict(obs[None], True, j)
            obs, rewards, terminated, truncated, _ = probe.step(action[0])
            expected[:, j] += rewards / 2
            done = terminated or truncated
    table = committee.agent_return_table(x, representatives, k, targets, b)
    np.testing.assert_allclose(table, expected, rtol=1e-12)
    if base == "Hopper":
        assert np.isnan(x).any()
