"""Tuning: the objective, pruning and divergence, and one study shared by worker processes that may die."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import Trial, TrialState

from sb3_rmdp import RMDPPPO, EMAssigner
from sb3_rmdp.assigners import ASSIGNERS
from sb3_rmdp.tuning import (
    TrialSeededTPESampler,
    _key_values,
    best_params,
    load_best_params,
    make_objective,
    model_kwargs,
    sample_assigner_params,
    sample_rmdp_params,
    tune,
    tune_main,
)

ENV = "sb3_rmdp/ResourceGathering-v0"
TESTS = Path(__file__).resolve().parent
# One tiny worker: 512 steps, two evaluations (one during training, one at the end) of one episode each.
WORKER_ARGS = [
    "--env", ENV, "-k", "2", "--n-timesteps", "512", "--n-evaluations", "2", "--n-eval-episodes", "1",
    "--n-startup-trials", "2", "--device", "cpu", "--search-space", "test_tuning:tiny_search_space",
]  # fmt: skip
WORKER = "import sys; from sb3_rmdp.tuning import tune_main; sys.exit(tune_main(sys.argv[1:]))"


def tiny_search_space(trial: Trial, assigner_name: str) -> dict[str, Any]:
    """A search space small enough for tests: tiny nets, short rollouts, the assigner's real space."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        "n_steps": 64,
        "batch_size": trial.suggest_categorical("batch_size", [64, 128]),
        "n_epochs": 1,
        "policy_kwargs": {"net_arch": [16]},
        "assigner_kwargs": sample_assigner_params(trial, assigner_name),
    }


def start_worker(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *WORKER_ARGS, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(worker: subprocess.Popen[str], timeout: float = 120) -> str:
    output, _ = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, output
    return output


def load(storage: RDBStorage, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def states(study: optuna.Study) -> list[str]:
    return [trial.state.name for trial in study.get_trials(deepcopy=False)]


def test_two_worker_processes_finish_exactly_n_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"  # a fresh file: the workers race to create its tables
    out = tmp_path / "best.json"
    args = ["--storage", url, "--study-name", "two", "--n-trials", "4", "--heartbeat-interval", "1"]
    workers = [start_worker([*args, "--out", str(out)]), start_worker(args)]
    outputs = [finish(worker) for worker in workers]

    study = load(RDBStorage(url), "two")
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4, (states(study), outputs)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # distinct, none lost
    # Anything beyond the 4 is a trial that lost the race for the last place, and never trained.
    assert all(t.user_attrs.get("surplus") for t in trials if t not in finished), states(study)
    # Both workers stop once the study is done and report the same study.
    assert all("Best trial" in output and "Study 'two'" in output for output in outputs), outputs
    # Intermediate welfare: one evaluation during training and the final one, which is the value.
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert sorted(trial.intermediate_values) == [1, 2]
            assert trial.value == trial.intermediate_values[2]
            assert np.isfinite(trial.user_attrs["egalitarian_welfare"])

    best = json.loads(out.read_text())
    assert (best["env"], best["k"], best["assigner"]) == (ENV, 2, "em")
    assert best["welfare"] == study.best_value
    params = load_best_params(out)
    assert isinstance(params["assigner"], EMAssigner)
    assert params["assigner"].mixing == study.best_params["em_mixing"]
    model = RMDPPPO("MlpPolicy", ENV, **params)
    assert (model.k, model.n_steps, model.learning_rate) == (2, 64, study.best_params["learning_rate"])


def test_killed_worker_leaves_a_usable_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = RDBStorage(url)
    args = ["--storage", url, "--study-name", "kill", "--n-trials", "1"]
    args += ["--heartbeat-interval", "1", "--grace-period", "2"]
    # A longer trial than WORKER_ARGS' (the last --n-timesteps wins): after its first evaluation it still
    # trains for 4,096 steps (seconds), so it cannot finish between the poll below and the kill.
    args += ["--n-timesteps", "8192"]
    victim = start_worker(args)
    deadline = time.monotonic() + 60
    running: list[optuna.trial.FrozenTrial] = []
    while not running:  # a trial mid-training: it reported its first evaluation (and has a heartbeat)
        assert time.monotonic() < deadline and victim.poll() is None, "the worker never got mid-trial"
        time.sleep(0.1)
        try:
            trials = load(storage, "kill").get_trials(deepcopy=False)
        except KeyError:  # the study is not created yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
    victim.kill()  # SIGKILL: no chance to clean up
    victim.wait()
    killed = running[0].number
    assert load(storage, "kill").trials[killed].state == TrialState.RUNNING

    # The next worker waits until the trial's heartbeat is 2 s old, marks it FAIL and re-runs it.
    finish(start_worker(args))

    study = load(storage, "kill")
    trials = study.get_trials(deepcopy=False)
    assert trials[killed].state == TrialState.FAIL, states(study)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 1, states(study)
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].params == trials[killed].params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_threads_of_one_worker_finish_exactly_n_trials() -> None:
    study = tune(
        ENV, 2, n_trials=3, n_timesteps=256, n_evaluations=2, n_eval_episodes=1, storage=None, n_jobs=2,
        sample_params=tiny_search_space, device="cpu",
    )  # fmt: skip
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(completed) == 3
    assert all(t.user_attrs.get("surplus") for t in study.trials if t not in completed)  # lost a race


def test_diverging_trial_is_pruned_not_crashed() -> None:
    def infinite_learning_rate(trial: Trial, assigner_name: str) -> dict[str, Any]:
        return {**tiny_search_space(trial, assigner_name), "learning_rate": float("inf")}

    study = tune(
        ENV, 2, n_trials=1, n_timesteps=512, n_evaluations=2, n_eval_episodes=1, storage=None,
        sample_params=infinite_learning_rate, device="cpu",
    )  # fmt: skip
    diverged = study.trials[0]
    assert diverged.state == TrialState.PRUNED
    assert diverged.user_attrs["diverged"].startswith("ValueError: Expected parameter")  # NaN logits
    assert diverged.intermediate_values == {}


def test_non_finite_welfare_is_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "sb3_rmdp.tuning.evaluate_agent_returns", lambda model, env, n: np.full((25, 2), np.nan)
    )
    study = optuna.create_study(direction="maximize")
    objective = make_objective(ENV, 2, n_timesteps=256, n_evaluations=2, sample_params=tiny_search_space)
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == TrialState.PRUNED
    assert study.trials[0].user_attrs["diverged"].startswith("non-finite welfare nan")
    assert study.trials[0].intermediate_values == {}  # a NaN is never reported


def test_pruned_trial_stops_training() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1e9))
    objective = make_objective(ENV, 2, n_timesteps=1024, n_evaluations=4, sample_params=tiny_search_space)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # stopped at its first report


@pytest.mark.parametrize("assigner", sorted(ASSIGNERS))
def test_default_search_space_builds_models(assigner: str) -> None:
    trial = optuna.create_study().ask()
    params = sample_rmdp_params(trial, assigner)
    if assigner == "coverage":  # its radius is in the env's units: the user fixes it
        with pytest.raises(ValueError, match="--assigner-kwargs"):
            make_objective(ENV, 3, assigner)
        params["assigner_kwargs"] = {"epsilon": 0.2}
    kwargs = model_kwargs(params, assigner, k=3)
    assert isinstance(kwargs["assigner"], ASSIGNERS[assigner])
    assert (kwargs["n_steps"] * 3) % kwargs["batch_size"] == 0
    json.dumps(params)  # saved as the trial's user attribute and in --out


def test_batch_size_divides_the_rollout() -> None:
    params = {"n_steps": 128, "batch_size": 256, "assigner_kwargs": {}}
    assert model_kwargs(params, "em", k=3)["batch_size"] == 192  # 384 = 2 * 192
    assert model_kwargs({**params, "batch_size": 512}, "em", k=2)["batch_size"] == 256  # whole rollout
    assert model_kwargs({**params, "n_envs": 4}, "em", k=2)["batch_size"] == 256
    assert params["batch_size"] == 256


def test_sampler_draws_depend_on_seed_and_trial_number() -> None:
    def first_draws(seed: int, n: int) -> list[float]:
        study = optuna.create_study(sampler=TrialSeededTPESampler(seed=seed))
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(n)]

    # Two workers with one seed: distinct proposals per trial number, the same per study.
    assert first_draws(0, 3) == first_draws(0, 3)
    assert len(set(first_draws(0, 3))) == 3
    assert first_draws(0, 1) != first_draws(1, 1)


def test_help_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tune_main(["--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out

    def always_diverges(trial: Trial, assigner_name: str) -> dict[str, Any]:
        return {**tiny_search_space(trial, assigner_name), "ent_coef": float("nan")}

    sys.modules["_always_diverges"] = type(sys)("_always_diverges")
    sys.modules["_always_diverges"].space = always_diverges  # type: ignore[attr-defined]
    try:
        code = tune_main(
            [*WORKER_ARGS[:-1], "_always_diverges:space", "--storage", ":memory:", "--n-trials", "1"]
        )
    finally:
        del sys.modules["_always_diverges"]
    assert code == 1
    assert "No trial completed" in capsys.readouterr().out


def test_best_params_round_trip(tmp_path: Path) -> None:
    study = tune(
        ENV, 2, assigner="end_to_end", n_trials=1, n_timesteps=256, n_evaluations=1, n_eval_episodes=1,
        storage=None, sample_params=tiny_search_space, device="cpu",
    )  # fmt: skip
    path = tmp_path / "best.json"
    path.write_text(json.dumps(best_params(study)))
    params = load_best_params(path)
    assert params["assigner"].lr == study.best_params["end_to_end_lr"]
    assert params["assigner"].gradient_statistics == study.best_params["end_to_end_gradient_statistics"]
    RMDPPPO("MlpPolicy", ENV, **params)


def test_key_value_options() -> None:
    assert _key_values(["reward_scale=0.01", "method=greedy", "sizes=[1, 2]"], "--x") == {
        "reward_scale": 0.01,
        "method": "greedy",
        "sizes": [1, 2],
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        _key_values(["reward_scale"], "--env-kwargs")


def test_normalized_observations_train_on_vec_normalize_and_evaluate_with_its_statistics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--normalize-observations``: trials train on ``VecNormalize``; each evaluation reads the training
    statistics, frozen; the best-parameters file says to normalize."""
    from stable_baselines3.common.vec_env import VecNormalize

    import sb3_rmdp.tuning as tuning

    seen: list[tuple[bool, bool]] = []
    evaluate = tuning.evaluate_agent_returns

    def spy(model: RMDPPPO, env: Any, n_episodes: int) -> np.ndarray:
        train_env = model.get_env()
        assert isinstance(train_env, VecNormalize) and isinstance(env, VecNormalize)
        seen.append((env.training, np.array_equal(env.obs_rms.mean, train_env.obs_rms.mean)))
        return evaluate(model, env, n_episodes)

    monkeypatch.setattr(tuning, "evaluate_agent_returns", spy)
    study = tune(
        "sb3_rmdp/HalfCheetahVelocity-v0", 2, n_trials=1, n_timesteps=256, n_evaluations=2, n_eval_episodes=1,
        storage=None, sample_params=tiny_search_space, device="cpu", env_kwargs={"n_agents": 3},
        normalize_observations=True,
    )  # fmt: skip
    assert seen == [(False, True), (False, True)]  # frozen, and synced at both evaluations
    assert study.user_attrs["normalize_observations"] is True
    assert best_params(study)["normalize_observations"] is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--n-timesteps", "0"], "--n-timesteps: expected a whole number >= 1, got '0'"),
        (["--n-timesteps", "-5"], "--n-timesteps: expected a whole number >= 1"),
        (["--n-trials", "0"], "--n-trials: expected a whole number >= 1, got '0'"),
        (["-k", "0"], "-k: expected a whole number >= 1, got '0'"),
        (["-k", "-2"], "-k: expected a whole number >= 1"),
    ],
)
def test_bad_counts_are_usage_errors(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--env", ENV, "-k", "2", "--storage", ":memory:", *options]
    with pytest.raises(SystemExit) as exit_info:
        tune_main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("url", ["bogus://x", "not a url"])
def test_a_bogus_storage_url_is_named(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert tune_main(["--env", ENV, "-k", "2", "--storage", url, "--n-trials", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"sb3-rmdp tune: error: --storage {url!r} is not a database URL")
        and "sqlite:///" in err
    )


def test_out_is_not_overwritten_without_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "best.json"
    out.write_text("earlier results\n")
    with pytest.raises(SystemExit) as exit_info:
        tune_main([*WORKER_ARGS, "--storage", ":memory:", "--n-trials", "1", "--out", str(out)])
    assert exit_info.value.code == 2
    assert f"--out {out}: {out} exists already (pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "earlier results\n"
    code = tune_main(
        [*WORKER_ARGS, "--storage", ":memory:", "--n-trials", "1", "--out", str(out), "--overwrite"]
    )
    assert code == 0 and json.loads(out.read_text())["k"] == 2
