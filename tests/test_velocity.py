"""Velocity populations over MuJoCo: the reward formula, seeding, registration, no MuJoCo noise."""

from __future__ import annotations

import itertools
import os
import warnings

import gymnasium as gym
import numpy as np
import pytest

import sb3_rmdp  # noqa: F401  (registers the envs)
from sb3_rmdp.envs import AgentRewardsWrapper, agent_params_of, n_agents_of
from sb3_rmdp.envs.velocity import (
    TARGET_RANGES,
    make_velocity_env,
    velocity_rewards,
    velocity_targets,
    welfare_upper_bound,
)


def test_each_agent_reward_matches_the_formula_on_recorded_velocities() -> None:
    env = gym.make("sb3_rmdp/HalfCheetahVelocity-v0", n_agents=50, seed=3)
    targets = agent_params_of(env)[:, 0]
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        _, rewards, terminated, truncated, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        v = info["x_velocity"]
        expected = 0.1 * np.clip(1 - np.abs(v - targets) / (4.0 / 20), 0, 1)
        assert rewards.shape == (50,)
        assert np.allclose(rewards, expected, atol=1e-7)
        assert not (terminated or truncated)


def test_tracking_the_target_all_episode_gives_100() -> None:
    targets = np.array([1.0, 2.0, 2.1, 3.5])
    per_step = velocity_rewards(2.0, targets, b=4.0)
    assert np.allclose(per_step, [0.0, 0.1, 0.05, 0.0])
    assert np.isclose(1000 * per_step[1], 100.0)


def test_targets_are_uniform_seeded_and_in_range() -> None:
    for _base_id, b in TARGET_RANGES.items():
        targets = velocity_targets(2000, b, seed=1)
        assert targets.min() >= 0 and targets.max() <= b
        assert abs(targets.mean() - b / 2) < 0.05 * b
    assert np.array_equal(velocity_targets(10, 4.0, seed=2), velocity_targets(10, 4.0, seed=2))
    assert not np.array_equal(velocity_targets(10, 4.0, seed=2), velocity_targets(10, 4.0, seed=3))


@pytest.mark.parametrize(
    "env_id",
    [
        "sb3_rmdp/HalfCheetahVelocity-v0",
        "sb3_rmdp/AntVelocity-v0",
        "sb3_rmdp/HopperVelocity-v0",
        "sb3_rmdp/Walker2dVelocity-v0",
    ],
)
def test_registered_populations_are_r_mdps(env_id: str) -> None:
    env = gym.make(env_id, n_agents=7, seed=0)
    assert n_agents_of(env) == 7
    assert agent_params_of(env).shape == (7, 1)
    wrapped = AgentRewardsWrapper(env)
    wrapped.reset(seed=0)
    _, reward, *_, info = wrapped.step(wrapped.action_space.sample())
    assert isinstance(reward, float) and np.isclose(reward, info["agent_rewards"].mean())


def test_halfcheetah_loads_without_mujoco_warnings_or_log_file(tmp_path, capfd) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gym.make("sb3_rmdp/HalfCheetahVelocity-v0", n_agents=3).reset(seed=0)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert "settotalmass" not in capfd.readouterr().err


def _brute_force_bound(targets: np.ndarray, k: int, b: float, grid_points: int = 81) -> float:
    """Best welfare over every k-subset of a fine speed grid (plus the targets themselves)."""
    speeds = np.unique(np.concatenate([targets, np.linspace(0.0, b, grid_points)]))
    tents = np.clip(1 - np.abs(speeds[:, None] - targets[None, :]) / (b / 20), 0, 1)
    best = 0.0
    for subset in itertools.combinations(range(len(speeds)), min(k, len(speeds))):
        best = max(best, 100 * tents[list(subset)].max(axis=0).mean())
    return best


@pytest.mark.parametrize("seed", range(12))
def test_upper_bound_equals_brute_force_on_small_populations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    b = float(rng.uniform(0.4, 1.2))
    targets = rng.uniform(0, b, size=int(rng.integers(1, 7)))
    k = int(rng.integers(1, 4))
    assert np.isclose(welfare_upper_bound(targets, k, b), _brute_force_bound(targets, k, b), atol=1e-9)


def test_upper_bound_is_monotone_in_k_and_reaches_100() -> None:
    targets = velocity_targets(100, 4.0, seed=0)
    bounds = [welfare_upper_bound(targets, k, 4.0) for k in (1, 2, 5, 10, 50, 100)]
    assert all(a < b for a, b in itertools.pairwise(bounds[:-1]))
    assert bounds[-1] == 100.0
    # agent_params (n, 1) are accepted as targets, and an agent alone gets its full 100
    assert welfare_upper_bound(targets[:, None], 5, 4.0) == bounds[2]
    assert welfare_upper_bound(np.array([1.0]), 1, 4.0) == 100.0
    # two far-apart groups of identical targets: one representative per group
    assert np.isclose(welfare_upper_bound(np.array([0.5, 0.5, 3.0, 3.0, 3.0]), 2, 4.0), 100.0)
    assert np.isclose(welfare_upper_bound(np.array([0.5, 0.5, 3.0, 3.0, 3.0]), 1, 4.0), 60.0)


def test_upper_bound_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k=0"):
        welfare_upper_bound(np.array([1.0]), 0, 4.0)
    with pytest.raises(ValueError, match="b > 0"):
        welfare_upper_bound(np.array([1.0]), 1, 0.0)
    with pytest.raises(ValueError, match="at least one target"):
        welfare_upper_bound(np.array([]), 1, 4.0)


def test_bad_velocity_kwargs_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="at least one agent"):
        gym.make("sb3_rmdp/HalfCheetahVelocity-v0", n_agents=0)
    with pytest.raises(ValueError, match="No velocity population"):
        make_velocity_env("Swimmer-v5")


def test_interval_breaks_counts_runs_beyond_one_per_representative() -> None:
    from sb3_rmdp.experiments.velocity import interval_breaks

    targets = np.array([0.1, 3.0, 1.0, 2.0, 0.5])
    assert interval_breaks(targets, [0, 2, 1, 1, 0]) == 0  # [0.1 0.5 | 1.0 2.0 | 3.0]
    assert interval_breaks(targets, [0, 0, 1, 1, 0]) == 1  # [0.1 0.5 | 1.0 2.0 | 3.0 back to rep 0]
    assert interval_breaks(targets, [0, 1, 0, 1, 1]) == 2  # 0 1 0 1 sorted: four runs, two reps
    assert interval_breaks(targets, [3, 3, 3, 3, 3]) == 0


def test_experiment_end_to_end_settings_reach_the_assigner() -> None:
    from sb3_rmdp.experiments import Cell
    from sb3_rmdp.experiments.velocity import make_assigner

    default = make_assigner(Cell.of({"task": "HalfCheetah", "algorithm": "end_to_end"}).config, 4.0)
    assert (default.lr, default.init_scale, default.gradient_statistics, default.deploy, default.mixing) == (
        2e-3,
        1.0,
        "mean",
        "argmax",
        1.0,
    )
    config = Cell.of(
        {
            "task": "HalfCheetah",
            "algorithm": "end_to_end",
            "end_to_end_init_scale": 3.0,
            "end_to_end_gradient_statistics": "none",
            "end_to_end_deploy": "best_response",
            "end_to_end_mixing": 0.05,
        }
    ).config
    custom = make_assigner(config, 4.0)
    assert (custom.lr, custom.init_scale, custom.gradient_statistics, custom.deploy, custom.mixing) == (
        2e-3,
        3.0,
        "none",
        "best_response",
        0.05,
    )
    em = make_assigner(
        Cell.of({"task": "HalfCheetah", "algorithm": "em", "em_revive_idle": False}).config, 4.0
    )
    assert (em.mixing, em.revive_idle) == (0.05, False)


def test_interval_welfare_share_weighs_each_fragment_by_what_its_agents_earn() -> None:
    from sb3_rmdp.experiments.velocity import interval_welfare_share as share

    targets = [3.0, 0.1, 1.0, 0.5, 2.0, 3.5]
    assert share(targets, [1, 0, 1, 0, 1, 1], [5, 5, 5, 5, 5, 5]) == 1.0  # 0 0 | 1 1 1 1
    # Sorted: 0 0 1 1 | 0 | 1: the second runs of 0 and 1 earn 5 and 2 of the 47
    assert share(targets, [0, 0, 1, 0, 1, 1], [5, 10, 10, 10, 10, 2]) == pytest.approx(40 / 47)
    # Agents who earn nothing count for nothing, and split no run.
    assert share(targets, [0, 0, 1, 0, 1, 1], [0, 10, 10, 10, 10, 2]) == 1.0
    assert share(targets, [0, 1, 0, 1, 0, 1], [0] * 6) == 1.0
    # The smaller run of the representative is the fragment, wherever it lies.
    assert share([0.1, 0.2, 0.3], [0, 1, 0], [1, 1, 3]) == pytest.approx(4 / 5)


def test_interval_breaks_of_no_agents_is_zero() -> None:
    from sb3_rmdp.experiments.velocity import interval_breaks

    assert interval_breaks(np.array([]), np.array([], dtype=int)) == 0


@pytest.mark.parametrize("env_id", ["sb3_rmdp/HalfCheetahVelocity-v0", "sb3_rmdp/HopperVelocity-v0"])
def test_a_pickled_velocity_env_continues_bit_for_bit(env_id: str) -> None:
    # The simulator state and the reset generator travel with the pickle (a MuJoCo env alone pickles as
    # its constructor arguments and restarts): mid-episode, then across falls and resets (Hopper).
    import cloudpickle

    from sb3_rmdp.envs import make_rmdp_vec_env

    env = make_rmdp_vec_env(env_id, n_envs=2, seed=4, env_kwargs={"n_agents": 5})
    env.reset()
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (300, 2, env.action_space.shape[0]))
    for action in actions[:50]:
        env.step(action)
    copy = cloudpickle.loads(cloudpickle.dumps(env))
    dones = 0
    for action in actions[50:]:
        obs, rewards, done, _ = env.step(action)
        copy_obs, copy_rewards, copy_done, _ = copy.step(action)
        assert np.array_equal(obs, copy_obs) and np.array_equal(rewards, copy_rewards)
        assert np.array_equal(done, copy_done)
        dones += int(done.sum())
    if "Hopper" in env_id:
        assert dones > 0  # resets drew from the copied generator too
