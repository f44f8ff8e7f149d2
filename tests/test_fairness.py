"""Fair welfare, outside options and capacity limits, wired through training (issue 24).

The objectives and the exact assignment are tested against brute force in ``test_objectives.py``;
here: what a model does with them (the M-step's weights, EM's E-step, K-means and random under the
same limits, the opt-outs counted in the welfare, saving them, and the errors).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import LogRecorder, make_scaled

from sb3_rmdp import RMDPPPO, EMAssigner
from sb3_rmdp.assigners import FixedAssigner, KMeansAssigner, RandomAssigner
from sb3_rmdp.assigners.end_to_end import EndToEndAssigner
from sb3_rmdp.matching import AssignmentLimits, best_assignment
from sb3_rmdp.objectives import welfare_objective
from sb3_rmdp.welfare import OPT_OUT, agent_welfare, evaluate_agent_returns, utilitarian_welfare

TINY = {"n_steps": 64, "batch_size": 64, "n_epochs": 1, "seed": 0}


def _model(k: int = 2, n_agents: int = 4, **kwargs) -> RMDPPPO:
    return RMDPPPO("MlpPolicy", lambda: make_scaled(n_agents=n_agents), k=k, n_envs=k, **{**TINY, **kwargs})


def test_the_egalitarian_m_step_weighs_each_agent_by_the_smooth_minimums_gradient() -> None:
    model = _model(assigner=FixedAssigner([0, 0, 1, 1]), welfare="egalitarian", welfare_temperature=5.0)
    model.learn(256)
    table = model.assigner.value_table()
    assert table is not None and np.all(np.isfinite(table))
    values = table[np.arange(4), [0, 0, 1, 1]]
    expected = 4 * np.exp(-(values - values.min()) / 5.0) / np.exp(-(values - values.min()) / 5.0).sum()
    weights = model._welfare_weights()
    assert weights is not None
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    # The worst-off agent (agent 0: rewards 1 per step, the others 2, 3, 4) weighs most.
    assert int(np.argmax(weights.numpy())) == 0
    model._prepare_update()
    alpha = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    np.testing.assert_allclose(model.rollout_buffer._alpha, alpha * expected[:, None], rtol=1e-6)


def test_utilitarian_weights_are_none_and_the_update_is_todays() -> None:
    model = _model(assigner=FixedAssigner([0, 0, 1, 1]))
    model.learn(256)
    assert model._welfare_weights() is None
    model._prepare_update()
    np.testing.assert_array_equal(model.rollout_buffer._alpha, model.assigner.weights().numpy())


@pytest.mark.parametrize("welfare", ["egalitarian", "nash", ("alpha_fair", 2.0)])
def test_a_fair_objective_changes_training_and_stays_deterministic(welfare) -> None:
    def params(spec):
        model = _model(assigner=FixedAssigner([0, 0, 1, 1]), welfare=spec)
        model.learn(384)
        return np.concatenate([p.detach().numpy().ravel() for p in model.policy.parameters()])

    fair = params(welfare)
    assert np.array_equal(fair, params(welfare))
    assert not np.array_equal(fair, params("utilitarian"))


def test_without_limits_each_agents_best_representative_maximizes_every_monotone_welfare() -> None:
    rng = np.random.default_rng(0)
    objectives = ["utilitarian", "egalitarian", "nash", ("alpha_fair", 0.5), ("alpha_fair", 3.0)]
    for _ in range(20):
        table = rng.uniform(0.1, 10.0, size=(5, 3))
        best = table.argmax(axis=1)
        for spec in objectives:
            objective = welfare_objective(spec)
            top = objective.value(table[np.arange(5), best])
            for other in itertools.product(range(3), repeat=5):
                assert objective.value(table[np.arange(5), list(other)]) <= top + 1e-12


def test_em_e_step_under_capacities_is_the_brute_force_optimum() -> None:
    rng = np.random.default_rng(1)
    for welfare in ["utilitarian", "egalitarian", "nash"]:
        assigner = EMAssigner(mixing=1.0, warm_start_updates=0)
        assigner.bind(6, 3, limits=AssignmentLimits(welfare, c_min=1, c_max=2))
        table = rng.uniform(0.5, 5.0, size=(6, 3))
        assigner.q_table, assigner.observed = table.copy(), np.ones(3, dtype=bool)

        class Model:
            rollout_episode_returns = [np.empty((0, 6))] * 3

        assigner.model = Model()  # type: ignore[assignment]
        assigner.n_rollouts = 1
        assigner._update()
        hard = assigner.assignment()
        objective = welfare_objective(welfare)
        brute = max(
            objective.value(table[np.arange(6), list(a)])
            for a in itertools.product(range(3), repeat=6)
            if np.bincount(a, minlength=3).max() <= 2 and np.bincount(a, minlength=3).min() >= 1
        )
        assert objective.value(table[np.arange(6), hard]) == pytest.approx(brute)
        assert np.bincount(hard, minlength=3).max() <= 2


def test_em_training_keeps_every_group_within_the_capacities() -> None:
    recorder = LogRecorder()
    model = _model(
        k=2,
        n_agents=6,
        assigner=EMAssigner(mixing=1.0, warm_start_updates=0),
        c_min=2,
        c_max=4,
    )
    model.learn(640, callback=recorder)
    sizes = np.bincount(model.assignment(), minlength=2)
    assert sizes.min() >= 2 and sizes.max() <= 4
    # unconstrained, the agents all go to one representative: rewards differ only by a scale
    assert all(2 <= s <= 4 for values in recorder.recorded for s in np.asarray(values["assignment/sizes"]))


def test_kmeans_and_random_respect_the_same_capacities() -> None:
    for assigner in (KMeansAssigner(pretrain_fraction=0.5, n_samples=64), RandomAssigner()):
        model = _model(k=2, n_agents=6, assigner=assigner, c_min=1, c_max=3)
        model.learn(512)
        sizes = np.bincount(model.assignment(), minlength=2)
        assert sizes.max() <= 3 and sizes.min() >= 1, type(assigner).__name__


def test_kmeans_capacity_assignment_is_a_min_cost_split() -> None:
    from sb3_rmdp.assigners.kmeans import kmeans_assignment

    # five agents near 0, one near 10: unlimited, K-means splits 5 / 1; with c_max = 3, 3 / 3
    features = np.array([[0.0], [0.1], [0.2], [0.3], [0.4], [10.0]])
    assert sorted(np.bincount(kmeans_assignment(features, 2, seed=0))) == [1, 5]
    capped = kmeans_assignment(features, 2, seed=0, c_max=3)
    assert sorted(np.bincount(capped)) == [3, 3]
    assert capped[5] != capped[0] and len(set(capped[[3, 4, 5]])) == 1  # the two nearest to 10 move


def test_a_fixed_assignment_outside_the_capacities_is_refused() -> None:
    with pytest.raises(ValueError, match=r"groups of 1 to 3 agents, outside the model's capacity limits"):
        _model(assigner=FixedAssigner([0, 0, 0, 1]), c_max=2)


def test_agents_with_high_outside_values_opt_out_and_the_welfare_counts_them() -> None:
    # agent i earns (i + 1) per CartPole step; agent 1's outside value beats any episode, agent 2's none
    outside = np.array([0.0, 1e6, 0.0])
    recorder = LogRecorder()
    model = RMDPPPO(
        "MlpPolicy",
        lambda: make_scaled(n_agents=3),
        k=1,
        assigner=EMAssigner(mixing=1.0, warm_start_updates=0),
        outside_values=outside,
        **TINY,
    )
    model.learn(512, callback=recorder)
    deployed = model.assignment()
    assert deployed.tolist() == [0, OPT_OUT, 0]
    assert recorder.recorded[-1]["assignment/opted_out"] == 1
    # no representative trains for an agent that opts out
    np.testing.assert_array_equal(model.assigner.weights().numpy(), [[1.0], [0.0], [1.0]])
    table = evaluate_agent_returns(model, make_scaled(n_agents=3), n_episodes=2)
    values = agent_welfare(table, deployed, outside)
    assert values[1] == 1e6 and values[0] == table[0, 0]
    assert utilitarian_welfare(table, deployed, outside) == pytest.approx(values.mean())
    # at evaluation no served agent gets less than its outside value
    served = deployed != OPT_OUT
    assert np.all(table[served, 0] >= outside[served])


def test_a_k1_run_never_serves_an_agent_below_its_outside_value() -> None:
    # the outside values sit around the agents' returns: each agent is served only where its
    # representative beats its own value, whatever the split
    model = RMDPPPO(
        "MlpPolicy",
        lambda: make_scaled(n_agents=4),
        k=1,
        assigner=EMAssigner(mixing=1.0, warm_start_updates=0),
        outside_values=np.array([5.0, 60.0, 30.0, 1e5]),
        **TINY,
    )
    model.learn(512)
    estimate = model.assigner.value_table()[:, 0]
    deployed = model.assignment()
    np.testing.assert_array_equal(deployed == OPT_OUT, estimate <= model.outside_values)
    table = evaluate_agent_returns(model, make_scaled(n_agents=4), n_episodes=2)
    values = agent_welfare(table, deployed, model.outside_values)
    assert np.all(values[deployed == OPT_OUT] == model.outside_values[deployed == OPT_OUT])
    assert OPT_OUT in deployed.tolist()


def test_the_limits_survive_save_and_load(tmp_path: Path) -> None:
    model = _model(
        k=2,
        n_agents=6,
        assigner=EMAssigner(mixing=1.0, warm_start_updates=0),
        welfare=("alpha_fair", 2.0),
        c_max=4,
        outside_values=0.5,
    )
    model.learn(128)
    model.save(tmp_path / "model")
    loaded = RMDPPPO.load(tmp_path / "model", env=model.get_env())
    limits = loaded.assignment_limits
    assert limits.objective.name == "alpha_fair" and limits.objective.alpha == 2.0
    assert limits.c_max == 4 and limits.outside is not None
    np.testing.assert_array_equal(limits.outside, np.full(6, 0.5))
    assert loaded.assigner.limits is limits
    np.testing.assert_array_equal(loaded.assignment(), model.assignment())


def test_bad_limits_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"k \* c_max = 2 \* 1 = 2 < 4 agents"):
        _model(c_max=1)
    with pytest.raises(ValueError, match=r"k \* c_min = 2 \* 3 = 6 > 4 agents"):
        _model(c_min=3)
    with pytest.raises(ValueError, match=r"outside values of shape \(3,\): give one per agent, \(4,\)"):
        _model(outside_values=np.zeros(3))
    with pytest.raises(ValueError, match=r"welfare='fairest'"):
        _model(welfare="fairest")
    with pytest.raises(ValueError, match="EndToEndAssigner cannot respect capacity limits"):
        _model(assigner=EndToEndAssigner(), c_max=3)


def test_a_nash_objective_with_non_positive_values_names_the_shift() -> None:
    # CartPole's per-step rewards negated: every return is negative
    class Negative(gym.Wrapper):
        def step(self, action):
            obs, rewards, terminated, truncated, info = self.env.step(action)
            return obs, -rewards, terminated, truncated, info

    model = RMDPPPO(
        "MlpPolicy",
        lambda: Negative(make_scaled(n_agents=2)),
        k=1,
        welfare="nash",
        assigner=FixedAssigner([0, 0]),
        **TINY,
    )
    with pytest.raises(ValueError, match=r"the nash welfare needs positive values.*shift the rewards"):
        model.learn(256)


def test_best_assignment_of_the_limits_is_the_matching_ones() -> None:
    table = np.random.default_rng(3).uniform(size=(6, 2))
    limits = AssignmentLimits("egalitarian", c_max=3)
    np.testing.assert_array_equal(limits.assign(table), best_assignment(table, "egalitarian", c_max=3))


RG = "sb3_rmdp/ResourceGathering-v0"
TRAIN = [
    *["train", "--env", RG, "-k", "2", "--timesteps", "512", "--n-steps", "64", "--batch-size", "64"],
    *["--n-epochs", "1", "--policy-kwargs", "net_arch=[16]", "--no-progress-bar"],
]


def test_cli_train_with_a_fair_objective_capacities_and_outside_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_rmdp.cli import main

    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps([0.0] * 24 + [1e6]))  # the last agent always opts out
    results = tmp_path / "run.json"
    argv = [*TRAIN, "--welfare", "alpha_fair:2", "--c-max", "20", "--outside", str(outside)]
    code = main([*argv, "--save", str(tmp_path / "model"), "--json", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(results.read_text())
    assert summary["welfare"]["objective"] == "alpha_fair"
    assert summary["assignment"][-1] == OPT_OUT and summary["opted_out"] >= 1
    assert max(summary["group_sizes"]) <= 20 and "outside option" in out
    model = RMDPPPO.load(tmp_path / "model")
    assert model.assignment_limits.c_max == 20 and model.assignment_limits.outside[-1] == 1e6
    # the export dossier names the objective and the opt-outs
    from sb3_rmdp.export import review_dossier

    dossier = review_dossier(model, 0, RG, tmp_path / "dossier")
    assert dossier["welfare"]["objective"] == "alpha_fair" and dossier["welfare"]["opted_out"] >= 1


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--welfare", "fairest"], "choose utilitarian, egalitarian, nash or alpha_fair:ALPHA"),
        (["--welfare", "alpha_fair:x"], "write alpha_fair:ALPHA"),
        (["--c-max", "5"], "k \\* c_max = 2 \\* 5 = 10 < 25 agents"),
        (["--outside", "missing.npy"], "--outside file"),
    ],
)
def test_cli_fairness_errors_exit_2(
    option: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_rmdp.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        try:
            code = main([*TRAIN, *option])
        except SystemExit as exit_:  # argparse's own errors
            code = int(exit_.code or 0)
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_tuning_maximizes_the_models_objective() -> None:
    from test_tuning import tiny_search_space

    from sb3_rmdp.tuning import tune

    study = tune(
        RG,
        2,
        n_trials=1,
        n_timesteps=256,
        n_evaluations=1,
        n_eval_episodes=1,
        n_startup_trials=1,
        storage=None,
        sample_params=tiny_search_space,
        fairness={"welfare": "egalitarian", "welfare_temperature": 0.05},
        device="cpu",
    )
    trial = study.best_trial
    assert study.study_name == "ResourceGathering-v0-k2-em-egalitarian"
    # the egalitarian welfare is the worst-off agent's: the trial's value is its minimum
    assert trial.value == pytest.approx(trial.user_attrs["egalitarian_welfare"])


def test_the_fairness_report_compares_objectives_cell_by_cell(tmp_path: Path) -> None:
    from sb3_rmdp.experiments.fairness import compares_objectives, fairness_table, plot_fairness

    def row(objective: str, seed: int, returns: list[float]) -> dict[str, object]:
        return {
            "task": "HalfCheetah",
            "k": 5,
            "algorithm": "em",
            "seed": seed,
            "objective": objective,
            "objective_temperature": "10.0" if objective == "egalitarian" else "",
            "welfare": float(np.mean(returns)),
            "returns": " ".join(f"{v:.2f}" for v in returns),
        }

    rows = [row("", 0, [0.0, 10.0, 20.0]), row("", 1, [0.0, 12.0, 30.0])]
    assert not compares_objectives(rows)
    rows += [row("egalitarian", 0, [4.0, 8.0, 9.0]), row("egalitarian", 1, [6.0, 8.0, 10.0])]
    assert compares_objectives(rows)
    table = fairness_table(rows).splitlines()
    assert table[2].startswith("| HalfCheetah | 5 | em | utilitarian | 12.00 ± 2.00 (2) | 0.00 ± 0.00 (2)")
    assert table[2].endswith("66.67% ± 0.00% (2) |")
    egalitarian = "| HalfCheetah | 5 | em | egalitarian (t = 10) | 7.50 ± 0.50 (2) | 5.00 ± 1.00 (2)"
    assert table[3].startswith(egalitarian)
    assert plot_fairness(rows, tmp_path / "fairness.png")


def test_a_parameter_named_as_a_metric_is_refused() -> None:
    from sb3_rmdp.experiments.grid import Experiment, Param, register

    with pytest.raises(ValueError, match=r"\['welfare'\] are both parameters and metrics; rename one"):
        register(
            Experiment(
                name="clash",
                tasks=("Clash",),
                params={"welfare": Param(str, "utilitarian")},
                run=lambda config: {},
                env_steps=lambda config: 1,
                steps_per_second={"Clash": 1.0},
                metrics=("welfare",),
            )
        )
