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
    from conftest import load_benchmark

    interval_breaks = load_benchmark("mujoco_velocity").interval_breaks
    targets = np.array([0.1, 3.0, 1.0, 2.0, 0.5])
    assert interval_breaks(targets, [0, 2, 1, 1, 0]) == 0  # [0.1 0.5 | 1.0 2.0 | 3.0]
    assert interval_breaks(targets, [0, 0, 1, 1, 0]) == 1  # [0.1 0.5 | 1.0 2.0 | 3.0 back to rep 0]
    assert interval_breaks(targets, [0, 1, 0, 1, 1]) == 2  # 0 1 0 1 sorted: four runs, two reps
    assert interval_breaks(targets, [3, 3, 3, 3, 3]) == 0


def test_benchmark_merge_pools_seeds_and_refuses_repeated_cells(tmp_path) -> None:
    """``mujoco_velocity.py --merge``: runs of other seeds are pooled into one summary; a cell that two runs
    share, or runs of different budgets, are refused with the reason."""
    import json

    from conftest import load_benchmark, write_benchmark_run

    benchmark = load_benchmark("mujoco_velocity")
    targets = "0.2000 1.0000 2.5000 3.5000"

    def run(name: str, seeds: list[int], welfare: float, budget: int = 1000) -> object:
        rows = [
            {
                "env": "HalfCheetah", "algorithm": "em", "k": 2, "n_agents": 4, "seed": seed,
                "budget_per_representative": budget, "welfare_eval": welfare + seed, "welfare_train": 1.0,
                "welfare_eval_reassigned": 1.0, "upper_bound": 20.0, "wall_s": 1.0, "shared_with": "",
                "fraction_of_bound": (welfare + seed) / 20, "assignment": "0 0 1 1", "targets": targets,
            }
            for seed in seeds
        ]  # fmt: skip
        return write_benchmark_run(benchmark, tmp_path / name, rows)

    # a dotted name (lr0.01) is a name, not an extension
    first, second = run("a_lr0.01", [0, 1], 4.0), run("b", [2], 4.0)
    out = tmp_path / "merged"
    benchmark.merge([first, second], out)
    meta = json.loads((out / "mujoco_velocity_HalfCheetah.json").read_text())
    assert meta["seeds"] == [0, 1, 2]
    assert [run["command"] for run in meta["merged_runs"]] == ["run a_lr0.01", "run b"]
    summary = meta["summary_welfare_eval"]["em/k=2/n=4"]
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(5.0)  # 4, 5 and 6
    assert summary["interval_breaks"] == [0, 0, 0]
    with pytest.raises(ValueError, match="more than one run"):
        benchmark.merge([first, run("c", [1], 9.0)], out)
    with pytest.raises(ValueError, match="one budget"):
        benchmark.merge([first, run("d", [5], 4.0, budget=2000)], out)


def _velocity_run(path, fields: dict[str, object]) -> object:
    """One earlier ``mujoco_velocity`` run of a single row (k=2, two agents unless ``fields`` say)."""
    from conftest import load_benchmark, write_benchmark_run

    row = {
        "env": "HalfCheetah", "algorithm": "em", "k": 2, "n_agents": 2, "seed": 0,
        "budget_per_representative": 1000, "welfare_eval": 3.0, "welfare_train": 1.0,
        "welfare_eval_reassigned": 1.0, "upper_bound": 20.0, "wall_s": 1.0, "shared_with": "",
        "fraction_of_bound": 0.15, "assignment": "0 1", "targets": "0.2 3.5", **fields,
    }  # fmt: skip
    return write_benchmark_run(load_benchmark("mujoco_velocity"), path, [row])


def test_benchmark_counts_breaks_among_served_agents_and_keeps_e_steps_apart(tmp_path) -> None:
    """Agents nobody serves (deployed return 0) may sit anywhere: ``served_interval_breaks`` leaves them
    out. EM runs of the plain greedy E-step (rows without ``em_e_step``) never pool with revived ones."""
    import json

    from conftest import load_benchmark

    benchmark = load_benchmark("mujoco_velocity")

    def run(name: str, seed: int, extra: dict[str, str]) -> object:
        five_agents = {"n_agents": 5, "assignment": "0 0 1 1 0", "targets": "0.2 0.4 1.0 1.2 3.5"}
        return _velocity_run(tmp_path / name, {"algorithm": "em", "seed": seed, **five_agents, **extra})

    revived = {"em_e_step": "revive_idle", "returns": "30.00 20.00 25.00 9.00 0.00"}
    out = tmp_path / "merged"
    benchmark.merge([run("a", 0, revived), run("b", 1, revived)], out)
    summary = json.loads((out / "mujoco_velocity_HalfCheetah.json").read_text())["summary_welfare_eval"]
    cell = summary["em/k=2/n=5"]
    # Sorted by target: 0 0 1 1 | 0 (the unserved 3.5 m/s agent): one break in all, none among the served.
    assert cell["interval_breaks"] == [1, 1] and cell["served_interval_breaks"] == [0, 0]
    assert cell["served"] == [4, 4]
    assert cell["interval_welfare_share"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="one em_e_step"):
        benchmark.merge([run("c", 2, revived), run("d", 3, {})], out)
    # Leaving the greedy EM rows out pools the rest.
    benchmark.merge([run("e", 2, revived), run("f", 3, {})], out, exclude=["em_e_step=greedy"])
    summary = json.loads((out / "mujoco_velocity_HalfCheetah.json").read_text())["summary_welfare_eval"]
    assert summary["em/k=2/n=5"]["n"] == 1
    with pytest.raises(ValueError, match="COLUMN=VALUE"):
        benchmark.merge([run("g", 2, revived)], out, exclude=["em_e_step"])


def test_benchmark_keeps_end_to_end_settings_apart(tmp_path) -> None:
    """End-to-end rows without ``end_to_end_lr`` used the paper's 2e-3 and never pool with other rates."""
    from conftest import load_benchmark

    benchmark = load_benchmark("mujoco_velocity")

    def run(name: str, seed: int, extra: dict[str, object]) -> object:
        return _velocity_run(tmp_path / name, {"algorithm": "end_to_end", "seed": seed, **extra})

    out = tmp_path / "merged"
    faster = {"end_to_end_lr": 0.05}
    with pytest.raises(ValueError, match="one end_to_end_lr"):
        benchmark.merge([run("a", 0, faster), run("b", 1, {})], out)
    with pytest.raises(ValueError, match="one end_to_end_lr"):
        benchmark.merge([run("c", 0, faster), run("d", 1, {"end_to_end_lr": 0.002})], out)
    runs = [run("e", 0, faster), run("f", 1, {}), run("g", 2, faster)]
    benchmark.merge(runs, out, exclude=["end_to_end_lr=0.002"])
    rows = benchmark.read_rows(out / "mujoco_velocity_HalfCheetah.csv")
    assert [(r["seed"], r["end_to_end_lr"]) for r in rows] == [(0, 0.05), (2, 0.05)]
    # Likewise the initial scale of the logits (rows without it: 1).
    wider = {"end_to_end_init_scale": 3.0}
    with pytest.raises(ValueError, match="one end_to_end_init_scale"):
        benchmark.merge([run("h", 0, wider), run("i", 1, {})], out)
    benchmark.merge(
        [run("j", 0, wider), run("k", 1, {"end_to_end_init_scale": 1.0}), run("l", 2, wider)],
        out,
        exclude=["end_to_end_init_scale=1.0"],
    )
    rows = benchmark.read_rows(out / "mujoco_velocity_HalfCheetah.csv")
    assert [(r["seed"], r["end_to_end_init_scale"]) for r in rows] == [(0, 3.0), (2, 3.0)]
    # And the statistics the gradient flows through (rows without it: "mean").
    reference = {"end_to_end_gradient_statistics": "both"}
    with pytest.raises(ValueError, match="one end_to_end_gradient_statistics"):
        benchmark.merge([run("m", 0, reference), run("n", 1, {})], out)
    benchmark.merge(
        [run("o", 0, reference), run("p", 1, {})], out, exclude=["end_to_end_gradient_statistics=mean"]
    )
    rows = benchmark.read_rows(out / "mujoco_velocity_HalfCheetah.csv")
    assert [(r["seed"], r["end_to_end_gradient_statistics"]) for r in rows] == [(0, "both")]
    # And the deployed assignment (rows without it: "argmax").
    deployed = {"end_to_end_deploy": "best_response"}
    with pytest.raises(ValueError, match="one end_to_end_deploy"):
        benchmark.merge([run("s", 0, deployed), run("t", 1, {})], out)
    benchmark.merge([run("u", 0, deployed), run("v", 1, {})], out, exclude=["end_to_end_deploy=argmax"])
    rows = benchmark.read_rows(out / "mujoco_velocity_HalfCheetah.csv")
    assert [(r["seed"], r["end_to_end_deploy"]) for r in rows] == [(0, "best_response")]
    # And the best response's moving average: best-response rows without it that also scored the latest
    # returns alone used 0.05, and argmax rows never read it, so they pool whatever it was.
    latest = {**deployed, "end_to_end_mixing": 1.0}
    ema = {**deployed, "welfare_eval_best_response_latest": 2.0}
    with pytest.raises(ValueError, match="one end_to_end_mixing"):
        benchmark.merge([run("w", 0, latest), run("x", 1, ema)], out)
    benchmark.merge([run("y", 0, latest), run("z", 1, ema)], out, exclude=["end_to_end_mixing=0.05"])
    rows = benchmark.read_rows(out / "mujoco_velocity_HalfCheetah.csv")
    assert [(r["seed"], r["end_to_end_mixing"]) for r in rows] == [(0, 1.0)]
    # Best-response rows from before `welfare_eval_best_response_latest` read the latest returns alone.
    oldest = {**deployed, "welfare_eval_best_response_latest": ""}
    benchmark.merge([run("ac", 0, latest), run("ad", 1, oldest)], out)
    rows = benchmark.read_rows(out / "mujoco_velocity_HalfCheetah.csv")
    assert [(r["seed"], r["end_to_end_mixing"]) for r in rows] == [(0, 1.0), (1, 1.0)]
    argmax_latest = {"end_to_end_deploy": "argmax", "end_to_end_mixing": 1.0}
    benchmark.merge([run("aa", 0, argmax_latest), run("ab", 1, {})], out)
    rows = benchmark.read_rows(out / "mujoco_velocity_HalfCheetah.csv")
    assert [(r["seed"], r["end_to_end_mixing"]) for r in rows] == [(0, ""), (1, "")]
    # A k = 1 row shared from another algorithm learned no logits and pools with any setting.
    shared = {"k": 1, "shared_with": "em"}
    benchmark.merge([run("q", 0, reference), run("r", 1, shared)], out)
    rows = benchmark.read_rows(out / "mujoco_velocity_HalfCheetah.csv")
    assert [(r["k"], r["end_to_end_gradient_statistics"]) for r in rows] == [(1, ""), (2, "both")]
    assert [r["end_to_end_deploy"] for r in rows] == ["", "argmax"]
    # Rows written before `welfare_eval_argmax` deployed the argmax: it is their `welfare_eval`.
    assert [r["welfare_eval_argmax"] for r in rows] == ["", rows[1]["welfare_eval"]]


def test_a_shared_k1_row_drops_the_settings_of_the_algorithm_that_trained_it() -> None:
    from conftest import load_benchmark

    benchmark = load_benchmark("mujoco_velocity")
    trained = {
        "algorithm": "end_to_end", "k": 1, "em_e_step": "", "welfare_eval": 3.0, "welfare_eval_argmax": 3.0,
        **benchmark.END_TO_END_DEFAULTS, "end_to_end_deploy": "best_response", "shared_with": "",
    }  # fmt: skip
    copy = benchmark.shared_row(trained, "em")
    assert copy["algorithm"] == "em" and copy["shared_with"] == "end_to_end" and copy["welfare_eval"] == 3.0
    assert all(copy[c] == "" for c in (*benchmark.END_TO_END_DEFAULTS, "welfare_eval_argmax"))
    em_row = {**trained, "algorithm": "em", "em_e_step": "revive_idle"}
    em_row.update({c: "" for c in (*benchmark.END_TO_END_DEFAULTS, "welfare_eval_argmax")})
    assert benchmark.shared_row(em_row, "kmeans")["em_e_step"] == ""
    assert benchmark.shared_row(em_row, "end_to_end")["em_e_step"] == ""


def test_benchmark_end_to_end_settings_reach_the_assigner() -> None:
    from conftest import load_benchmark

    benchmark = load_benchmark("mujoco_velocity")
    default = benchmark.make_assigner("end_to_end", 0, 4.0)
    assert (default.lr, default.init_scale, default.gradient_statistics, default.deploy, default.mixing) == (
        2e-3,
        1.0,
        "mean",
        "argmax",
        1.0,
    )
    custom = benchmark.make_assigner(
        "end_to_end",
        0,
        4.0,
        end_to_end={
            "end_to_end_init_scale": 3.0,
            "end_to_end_gradient_statistics": "none",
            "end_to_end_deploy": "best_response",
            "end_to_end_mixing": 0.05,
        },
    )
    assert (custom.lr, custom.init_scale, custom.gradient_statistics, custom.deploy, custom.mixing) == (
        2e-3,
        3.0,
        "none",
        "best_response",
        0.05,
    )
    # A row records the moving average only where the best response reads it.
    assert benchmark.recorded_settings(benchmark.END_TO_END_DEFAULTS)["end_to_end_mixing"] == ""
    assert (
        benchmark.recorded_settings({**benchmark.END_TO_END_DEFAULTS, "end_to_end_deploy": "best_response"})[
            "end_to_end_mixing"
        ]
        == 1.0
    )


def test_interval_welfare_share_weighs_each_fragment_by_what_its_agents_earn() -> None:
    from conftest import load_benchmark

    share = load_benchmark("mujoco_velocity").interval_welfare_share
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
    from conftest import load_benchmark

    assert load_benchmark("mujoco_velocity").interval_breaks(np.array([]), np.array([], dtype=int)) == 0


def test_rescore_adds_the_derived_columns_and_redraws_both_plots(tmp_path) -> None:
    import json

    from conftest import load_benchmark

    benchmark = load_benchmark("mujoco_velocity")
    stem = _velocity_run(tmp_path / "old", {"algorithm": "em", "returns": "30.00 0.00"})
    csv_path = benchmark.result_path(stem, ".csv")
    sidecar = json.loads(benchmark.result_path(stem, ".json").read_text())
    benchmark.result_path(stem, ".json").write_text(json.dumps({**sidecar, "summary_welfare_eval": {}}))
    benchmark.rescore(csv_path)
    (row,) = benchmark.read_rows(csv_path)
    assert (row["served"], row["served_interval_breaks"], row["interval_welfare_share"]) == (1, 0, 1.0)
    summary = json.loads(benchmark.result_path(stem, ".json").read_text())["summary_welfare_eval"]
    assert summary["em/k=2/n=2"]["interval_welfare_share"] == [1.0]
    assert (tmp_path / "old.png").stat().st_size > 0 and (tmp_path / "old_histograms.png").stat().st_size > 0
