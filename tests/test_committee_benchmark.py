"""The committee experiment (:mod:`sb3_rmdp.experiments.committee`): the clustering baselines, the exact
velocity-return trick, the scoring, the grid files and their stores, and one tiny cell through the runner."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sb3_rmdp.committee import (
    CLUSTERING_METHODS,
    EPSILON_METHODS,
    Clustering,
    cluster_agents,
    epsilon_cover,
    linf_distances,
    nearest_prototype,
)
from sb3_rmdp.deploy import zero_shot_select
from sb3_rmdp.envs.velocity import TARGET_RANGES, velocity_targets
from sb3_rmdp.experiments import Cell, Grid, GridError, LocalExecutor, Store, committee, run_grid
from sb3_rmdp.experiments.runner import describe

GRIDS = Path(__file__).resolve().parents[1] / "benchmarks" / "grids"


@pytest.mark.parametrize("method", CLUSTERING_METHODS)
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("epsilon", [0.1, 0.4])
def test_every_method_gives_k_prototypes_and_the_nearest_prototype_assignment(
    method: str, k: int, epsilon: float
) -> None:
    params = velocity_targets(100, 4.0, seed=3)[:, None]
    clustering = cluster_agents(method, params, k, epsilon, seed=1)
    assert clustering.prototypes.shape == (k, 1) and np.all(np.isfinite(clustering.prototypes))
    assert clustering.assignment.shape == (100,) and clustering.assignment.dtype == np.int64
    assert 0 <= clustering.assignment.min() and clustering.assignment.max() < k
    distances = linf_distances(params, clustering.prototypes)
    np.testing.assert_array_equal(clustering.assignment, distances.argmin(axis=1))
    again = cluster_agents(method, params, k, epsilon, seed=1)  # seeded, no global stream
    np.testing.assert_array_equal(again.prototypes, clustering.prototypes)
    if method == "coverage":
        np.testing.assert_array_equal(clustering.prototypes, epsilon_cover(params, k, epsilon).prototypes)
    if method == "random":
        assert len(np.unique(clustering.prototypes)) == k
        assert np.isin(clustering.prototypes, params).all()
    if method in ("kmeans++", "gmm"):  # centroids and means lie inside the agents' range
        assert params.min() <= clustering.prototypes.min() and clustering.prototypes.max() <= params.max()


def test_dbscan_keeps_the_k_largest_clusters_or_fills_up_with_agents() -> None:
    groups = [np.full(n, centre) + np.linspace(-0.05, 0.05, n) for centre, n in [(0, 12), (1, 9), (2, 6)]]
    params = np.concatenate([*groups, [3.5, 4.0]])[:, None]  # two noise agents
    many = cluster_agents("dbscan", params, 2, 0.1, seed=0, dbscan_min_samples=3)
    assert many.n_clusters_found == 3
    np.testing.assert_allclose(np.sort(many.prototypes[:, 0]), [0.0, 1.0], atol=1e-12)
    few = cluster_agents("dbscan", params, 5, 0.1, seed=0, dbscan_min_samples=3)
    assert few.n_clusters_found == 3
    np.testing.assert_allclose(np.sort(few.prototypes[:3, 0]), [0.0, 1.0, 2.0], atol=1e-12)
    np.testing.assert_array_equal(np.sort(few.prototypes[3:, 0]), [3.5, 4.0])  # noise agents first
    # every agent in a kept cluster and no noise: the missing prototypes are drawn among all agents
    tight = cluster_agents(
        "dbscan", np.zeros((6, 1)) + np.arange(6)[:, None] * 1e-3, 3, 0.1, dbscan_min_samples=2
    )
    assert tight.n_clusters_found == 1 and tight.prototypes.shape == (3, 1)


def test_clustering_errors_name_the_fix() -> None:
    params = np.linspace(0, 1, 10)[:, None]
    with pytest.raises(ValueError, match="needs a radius: pass epsilon"):
        cluster_agents("coverage", params, 2)
    with pytest.raises(ValueError, match=r"unknown clustering method 'kmeans'; choose one of \['coverage'"):
        cluster_agents("kmeans", params, 2)


def test_nearest_prototype_is_the_zero_shot_rule() -> None:
    prototypes = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # prototype 2 repeats 0: ties go to 0
    params = np.random.default_rng(0).uniform(-1, 2, size=(50, 2))
    chosen = nearest_prototype(params, prototypes)
    assert chosen.dtype == np.int64 and 2 not in chosen
    assert [zero_shot_select(prototypes, p) for p in params] == chosen.tolist()
    np.testing.assert_array_equal(chosen, linf_distances(params, prototypes).argmin(axis=1))
    # L-infinity, not Euclidean: (1, 0) is 1 from the origin in both norms, and from (0.3, 0.75) 0.75 in
    # L-infinity but 1.03 in L2
    assert nearest_prototype(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0], [0.3, 0.75]])).tolist() == [1]


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


def test_score_reads_zero_shot_few_shot_and_best_member_off_the_tables() -> None:
    config = Cell.of(
        {"task": "HalfCheetahCommittee", "algorithm": "kmeans++", "k": 2, "epsilon_welfare": 1.0}
    ).config
    assert config["epsilon"] is None and config["cover_radius"] is None  # blanked / b / 20
    prototypes = np.array([[1.0], [3.0]])
    clustering = Clustering(prototypes, np.array([0, 0, 0]), 2)
    train_targets, new_targets = np.array([0.9, 1.1, 1.5]), np.array([0.5, 2.1, 3.9])
    tables = {
        # (n_new_agents, k) and (n_agents, k); new agents' nearest prototypes: 0, 1, 1
        "new_eval": np.array([[10.0, 2.0], [4.0, 9.0], [1.0, 8.0]]),
        "new_selection": np.array([[9.0, 1.0], [3.0, 3.5], [0.0, 7.0]]),
        "train_eval": np.array([[6.0, 0.0], [5.0, 0.0], [4.0, 1.0]]),
    }
    metrics = committee.score(config, clustering, tables, train_targets, new_targets, 4.0)
    assert metrics["welfare"] == metrics["welfare_zero_shot"] == round((10 + 9 + 8) / 3, 4)  # 2.1 -> 3.0
    assert metrics["welfare_few_shot"] == round((10 + 9 + 8) / 3, 4)
    assert metrics["welfare_best_member"] == 9.0 and metrics["welfare_train"] == 5.0
    assert metrics["upper_bound"] == metrics["upper_bound_new"] > 0
    assert metrics["frac_zero_shot_near_best"] == metrics["frac_few_shot_near_best"] == 1.0
    assert metrics["covered_within"] == 0.2  # b / 20
    assert metrics["covered_train"] == round(2 / 3, 4) and metrics["covered_new"] == 0.0
    assert metrics["cluster_sizes"] == [3, 0] and metrics["empty_representatives"] == 1
    assert metrics["prototypes"] == ["1.0000", "3.0000"] and set(metrics) == set(committee.METRICS)
    # agent 1's best member is now not its nearest prototype's, nor its best on the selection episodes
    swapped = {**tables, "new_eval": np.array([[10.0, 2.0], [9.0, 4.0], [1.0, 8.0]])}
    strict = committee.score(
        {**config, "epsilon_welfare": 0.0}, clustering, swapped, train_targets, new_targets, 4.0
    )
    assert strict["frac_zero_shot_near_best"] == strict["frac_few_shot_near_best"] == round(2 / 3, 4)
    assert strict["welfare"] == round((10 + 4 + 8) / 3, 4) and strict["welfare_best_member"] == 9.0
    lenient = committee.score(
        {**config, "epsilon_welfare": 5.0}, clustering, swapped, train_targets, new_targets, 4.0
    )
    assert lenient["frac_zero_shot_near_best"] == 1.0  # 4 is within 5 of 9


def test_cells_blank_the_radius_of_methods_without_one() -> None:
    base = {"task": "HalfCheetahCommittee", "k": 5}
    assert (
        Cell.of({**base, "algorithm": "kmeans++", "epsilon": 0.4}).key
        == Cell.of({**base, "algorithm": "kmeans++"}).key
    )
    assert (
        Cell.of({**base, "algorithm": "coverage", "epsilon": 0.4}).key
        != Cell.of({**base, "algorithm": "coverage"}).key
    )
    assert Cell.of({**base, "algorithm": "dbscan"}).config["dbscan_min_samples"] == 5
    assert Cell.of({**base, "algorithm": "coverage"}).config["dbscan_min_samples"] is None
    with pytest.raises(GridError, match="unknown algorithm 'kmeans'; choose one of"):
        Cell.of({**base, "algorithm": "kmeans"})
    assert committee.ALGORITHMS == CLUSTERING_METHODS
    assert committee.EPSILON_ALGORITHMS == EPSILON_METHODS


def test_the_grid_files_are_the_committed_stores() -> None:
    """Both grids' every cell is in its store (the old script's runs, migrated)."""
    for name, n_cells in (("committee", 27), ("committee_sweep", 21)):
        grid = Grid.from_file(GRIDS / f"{name}.toml")
        assert grid.store is not None and len(grid.cells) == n_cells
        store = Store(grid.store, grid.name)
        out = io.StringIO()
        assert not describe(grid, store, out).left, out.getvalue()
        for row in store.rows():
            assert row["welfare"] == row["welfare_zero_shot"] and row["upper_bound"] == row["upper_bound_new"]
        assert {c.config["budget_per_representative"] for c in grid.cells} == {25_000}


def test_committed_reports_are_the_stores(tmp_path: Path) -> None:
    from sb3_rmdp.experiments.report import write_report

    cwd = Path.cwd()
    os.chdir(Path(__file__).resolve().parents[1])
    try:
        for name in ("committee", "committee_sweep"):
            grid = Grid.from_file(GRIDS / f"{name}.toml")
            assert grid.store is not None
            write_report(grid, Store(grid.store, grid.name), tmp_path / name)
            for file in ("report.md", "headline.md"):
                assert (tmp_path / name / file).read_text() == (grid.store / file).read_text(), (
                    f"rerun: sb3-rmdp bench report benchmarks/grids/{name}.toml"
                )
    finally:
        os.chdir(cwd)


TINY = {
    "task": "HalfCheetahCommittee",
    "k": 2,
    "seed": 3,
    "n_agents": 12,
    "n_new_agents": 20,
    "budget_per_representative": 128,
    "n_steps": 64,
    "batch_size": 64,
    "n_epochs": 1,
    "few_shot_episodes": 1,
    "eval_episodes": 1,
}


def test_a_tiny_committee_cell_through_the_runner(tmp_path: Path) -> None:
    grid = Grid.from_dict(
        {"name": "tiny_committee", "defaults": {**TINY, "algorithm": ["coverage", "random"]}}
    )
    store = Store(tmp_path / "store", grid.name)
    assert run_grid(grid, store, LocalExecutor(1), out=io.StringIO()) == 2
    rows = {r["algorithm"]: r for r in Store(tmp_path / "store", grid.name).rows()}
    assert set(rows) == {"coverage", "random"}
    for algorithm, row in rows.items():
        assert row["cell"] == Cell.of({**TINY, "algorithm": algorithm}).key and row["executor"] == "local"
        welfare, best, bound = (float(row[c]) for c in ("welfare", "welfare_best_member", "upper_bound"))
        assert row["welfare"] == row["welfare_zero_shot"] and row["upper_bound"] == row["upper_bound_new"]
        assert 0 <= welfare <= best <= bound  # no k policies beat the best placement of k speeds
        assert float(row["welfare_few_shot"]) <= best
        assert len(row["cluster_sizes"].split()) == len(row["prototypes"].split()) == 2
        assert sum(int(s) for s in row["cluster_sizes"].split()) == 12
    assert rows["coverage"]["epsilon"] == "0.2" and rows["random"]["epsilon"] == ""
    assert rows["random"]["covered_within"] == "0.2"  # b / 20 on HalfCheetah


def test_a_committee_trained_on_its_prototypes() -> None:
    config = Cell.of({**TINY, "algorithm": "kmeans++", "train_on": "prototype", "n_new_agents": 5}).config
    metrics = committee.run(config)
    assert set(metrics) == set(committee.METRICS)
    assert 0 <= metrics["welfare"] <= metrics["welfare_best_member"] <= metrics["upper_bound"]
