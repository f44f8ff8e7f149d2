"""Hyperparameter tuning with Optuna: the objective is the evaluated welfare of the deployed assignment.

In the spirit of rl-zoo3's ``--optimize``: a TPE sampler, a median pruner fed by evaluations during
training, and a study kept in a database so that any number of workers, on one machine or many, share
it. Each trial trains an :class:`~sb3_rmdp.RMDPPPO` (or ``algo``'s model) with hyperparameters drawn by
:func:`sample_rmdp_params` (PPO's and the assigner's), evaluates every representative for every agent
with real episodes (:func:`~sb3_rmdp.welfare.evaluate_agent_returns`) and scores the utilitarian welfare
of the deployed hard assignment ``model.assignment()``.

**Many workers, one study.** Every worker runs the same command against the same ``--storage``
(SQLite for one machine, PostgreSQL or MySQL for many) and ``--study-name``:

- a running trial records a heartbeat; a worker that dies mid-trial leaves a ``RUNNING`` trial whose
  heartbeat stops, and the next worker to look marks it ``FAIL`` and queues a retry with the same
  parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``), which some worker then runs;
- ``--n-trials`` counts the trials of the *study* that finished (``COMPLETE`` or ``PRUNED``), not the
  trials of one worker: the workers together finish exactly that many. Before starting a trial a
  worker waits while the running trials of others would complete the study, and a trial goes on only
  if fewer than ``n_trials`` trials numbered before it are running, waiting or finished (trial numbers
  are unique and ordered by the storage). Optuna's ``MaxTrialsCallback`` alone would not do: it stops
  a worker only after its trial ends, so two workers overshoot by one trial. When two workers race
  for the last place, the later trial ends ``FAIL`` with the user attribute ``surplus`` and no
  training.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.pruners import MedianPruner
from optuna.samplers import TPESampler
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, sync_envs_normalization

from sb3_rmdp.algorithms import ALGORITHMS, algorithm_class, default_policy
from sb3_rmdp.assigners import ASSIGNERS
from sb3_rmdp.assigners.end_to_end import GRADIENT_STATISTICS
from sb3_rmdp.core import RMDPAlgorithm
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.envs.vec_env import resolve_env_spec
from sb3_rmdp.files import output_problem, write_text
from sb3_rmdp.welfare import agent_welfare, evaluate_agent_returns

#: where studies live unless ``--storage`` says otherwise: a file in the working directory
DEFAULT_STORAGE = "sqlite:///sb3_rmdp_tuning.db"
#: the trial states that count towards ``n_trials``
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
#: the trial states that hold (or will hold) a place among the ``n_trials``
_PLACE_STATES = (*FINISHED_STATES, TrialState.RUNNING, TrialState.WAITING)
#: study user attributes that every worker of a study must agree on
_STUDY_SETTINGS = ("env", "k", "assigner", "n_timesteps", "n_evaluations", "algo")

_CREATION_ATTEMPTS = 5

SampleParams = Callable[[Trial, str], dict[str, Any]]


# ---------------------------------------------------------------------------------------- search space
def sample_ppo_params(trial: Trial) -> dict[str, Any]:
    """PPO's hyperparameters (ranges after rl-zoo3's ``sample_ppo_params``).

    ``batch_size`` is adjusted by :func:`model_kwargs` to divide the rollout ``n_steps * n_envs``.

    :return: ``RMDPPPO`` keyword arguments.
    """
    width = trial.suggest_categorical("net_width", [32, 64, 128, 256])
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "n_steps": trial.suggest_categorical("n_steps", [64, 128, 256, 512, 1024, 2048]),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128, 256, 512]),
        "n_epochs": trial.suggest_categorical("n_epochs", [1, 5, 10, 20]),
        "gamma": trial.suggest_categorical("gamma", [0.95, 0.98, 0.99, 0.995, 0.999, 1.0]),
        "gae_lambda": trial.suggest_categorical("gae_lambda", [0.8, 0.9, 0.92, 0.95, 0.98, 0.99, 1.0]),
        "ent_coef": trial.suggest_float("ent_coef", 1e-8, 0.1, log=True),
        "clip_range": trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3, 0.4]),
        "policy_kwargs": {"net_arch": [width, width]},
    }


def sample_a2c_params(trial: Trial) -> dict[str, Any]:
    """A2C's hyperparameters (ranges after rl-zoo3's ``sample_a2c_params``).

    :return: ``RMDPA2C`` keyword arguments.
    """
    width = trial.suggest_categorical("net_width", [32, 64, 128, 256])
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "n_steps": trial.suggest_categorical("n_steps", [5, 8, 16, 32, 64, 128, 256]),
        "gamma": trial.suggest_categorical("gamma", [0.95, 0.98, 0.99, 0.995, 0.999, 1.0]),
        "gae_lambda": trial.suggest_categorical("gae_lambda", [0.8, 0.9, 0.92, 0.95, 0.98, 0.99, 1.0]),
        "ent_coef": trial.suggest_float("ent_coef", 1e-8, 0.1, log=True),
        "normalize_advantage": trial.suggest_categorical("normalize_advantage", [False, True]),
        "policy_kwargs": {"net_arch": [width, width]},
    }


def sample_assigner_params(trial: Trial, assigner_name: str) -> dict[str, Any]:
    """The assigner's hyperparameters; parameter names carry the assigner's prefix (``em_mixing``).

    :param assigner_name: a key of :data:`sb3_rmdp.assigners.ASSIGNERS`.
    :return: keyword arguments of that assigner (empty for ``random`` and ``oracle``, and for
        ``coverage``, whose ``epsilon`` is in the units of the env's agent params: fix it with
        ``assigner_kwargs={"epsilon": ...}`` / ``--assigner-kwargs``, or search it in your own space).
    """
    if assigner_name == "em":
        return {
            "mixing": trial.suggest_float("em_mixing", 0.01, 1.0, log=True),
            "warm_start_updates": trial.suggest_categorical("em_warm_start_updates", [0, 5, 10, 20, 50]),
        }
    if assigner_name == "end_to_end":
        return {
            "lr": trial.suggest_float("end_to_end_lr", 1e-4, 1e-1, log=True),
            "init_scale": trial.suggest_float("end_to_end_init_scale", 0.0, 2.0),
            # "none" wins on target-tracking populations, "mean" on Resource Gathering (docs/benchmarks.md)
            "gradient_statistics": trial.suggest_categorical(
                "end_to_end_gradient_statistics", list(GRADIENT_STATISTICS)
            ),
        }
    if assigner_name == "kmeans":
        return {"pretrain_fraction": trial.suggest_float("kmeans_pretrain_fraction", 0.2, 0.8)}
    return {}


def sample_rmdp_params(trial: Trial, assigner_name: str) -> dict[str, Any]:
    """The default search space: PPO's hyperparameters and the assigner's.

    Replace it with your own function of the same signature (``tune(..., sample_params=f)``, or
    ``--search-space module:function`` on the command line); it returns ``RMDPPPO`` keyword arguments,
    with the assigner's under ``"assigner_kwargs"`` (as in :data:`sb3_rmdp.hyperparams.HYPERPARAMS`).

    :param trial: the Optuna trial that draws the values.
    :param assigner_name: the assigner being tuned (a key of :data:`sb3_rmdp.assigners.ASSIGNERS`).
    :return: e.g. ``{"learning_rate": 3e-4, ..., "assigner_kwargs": {"mixing": 0.05, ...}}``.
    """
    return {**sample_ppo_params(trial), "assigner_kwargs": sample_assigner_params(trial, assigner_name)}


def sample_a2c_rmdp_params(trial: Trial, assigner_name: str) -> dict[str, Any]:
    """The default search space of ``--algo a2c``: A2C's hyperparameters and the assigner's."""
    return {**sample_a2c_params(trial), "assigner_kwargs": sample_assigner_params(trial, assigner_name)}


def default_search_space(algo: str) -> SampleParams:
    """The search space of an algorithm (a key of :data:`sb3_rmdp.algorithms.ALGORITHMS`): A2C's for
    ``"a2c"``, PPO's (:func:`sample_rmdp_params`) for the PPO family."""
    return sample_a2c_rmdp_params if algo == "a2c" else sample_rmdp_params


def model_kwargs(params: dict[str, Any], assigner_name: str, k: int) -> dict[str, Any]:
    """``RMDPPPO`` keyword arguments from sampled (or saved) hyperparameters.

    The assigner is built from ``assigner_name`` and ``params["assigner_kwargs"]``. A ``batch_size`` that
    does not divide the rollout (``n_steps * n_envs``, ``n_envs`` defaulting to k) becomes the largest
    divisor below it, so no minibatch is truncated.

    :param params: as returned by :func:`sample_rmdp_params` (not modified).
    :return: keyword arguments for ``RMDPPPO("MlpPolicy", env, **kwargs)``, ``k`` included.
    """
    kwargs = {key: value for key, value in params.items() if key != "assigner_kwargs"}
    if "n_steps" in kwargs and "batch_size" in kwargs:
        rollout = int(kwargs["n_steps"]) * int(kwargs.get("n_envs") or k)
        kwargs["batch_size"] = _largest_divisor_at_most(rollout, int(kwargs["batch_size"]))
    assigner = ASSIGNERS[assigner_name](**params.get("assigner_kwargs", {}))
    return {"k": k, "assigner": assigner, **kwargs}


def _largest_divisor_at_most(number: int, bound: int) -> int:
    return max(d for d in range(1, min(number, bound) + 1) if number % d == 0)


def load_best_params(path: str | Path) -> dict[str, Any]:
    """``RMDPPPO`` keyword arguments from a best-parameters file written by :func:`tune_main` (``--out``).

    ``RMDPPPO("MlpPolicy", env_id, **load_best_params("best.json"))`` trains with the tuned
    hyperparameters, the tuned assigner and ``k``; the file also names the env (``"env"``) and the
    algorithm (``"algo"``, :func:`sb3_rmdp.algorithm_class` gives its class). ``sb3-rmdp train
    --hyperparams best.json`` reads the file too.

    :param path: the JSON file.
    :return: keyword arguments, ``k`` and a fresh ``assigner`` included.
    """
    best = json.loads(Path(path).read_text())
    return model_kwargs(best["hyperparams"], best["assigner"], int(best["k"]))


# ---------------------------------------------------------------------------------------- the objective
class TrialEvalCallback(BaseCallback):
    """Evaluate the deployed welfare during training, report it to the trial, stop when it is pruned.

    The welfare is evaluated each time training passes ``i * eval_freq`` steps (``i = 1, 2, ...,
    n_evaluations - 1``) and reported to Optuna at step ``i`` (the evaluation index, so that every trial's
    reports line up for the median pruner whatever its ``n_steps``); the last evaluation is the caller's,
    by :meth:`evaluate` once training ends. The callback returns ``False`` (training stops) when the
    pruner says so (:attr:`is_pruned`) or the welfare is not finite (:attr:`diverged`).

    :param trial: the trial to report to.
    :param eval_env: the evaluation env (a VecEnv from :func:`~sb3_rmdp.envs.make_rmdp_vec_env`).
    :param eval_freq: training steps (all env slots together) between evaluations.
    :param n_evaluations: evaluations in all, the final one included.
    :param n_eval_episodes: episodes per representative per evaluation.
    """

    def __init__(
        self, trial: Trial, eval_env: VecEnv, eval_freq: int, n_evaluations: int, n_eval_episodes: int = 5
    ):
        super().__init__()
        self.trial = trial
        self.eval_env = eval_env
        self.eval_freq = max(1, int(eval_freq))
        self.planned_evaluations = n_evaluations
        self.n_eval_episodes = n_eval_episodes
        self.n_evaluations = 0
        self.is_pruned = False
        #: why the trial diverged (``None`` while it has not)
        self.diverged: str | None = None
        #: the latest evaluation: ``welfare``, ``egalitarian_welfare``, ``timesteps``
        self.last_evaluation: dict[str, float] = {}

    def evaluate(self) -> float:
        """Evaluate the deployed assignment now and report its welfare (the next evaluation index).

        :return: the utilitarian welfare (possibly not finite: see :attr:`diverged`).
        """
        assert isinstance(self.model, RMDPAlgorithm)
        sync_envs_normalization(self.training_env, self.eval_env)  # VecNormalize's statistics, if any
        table = evaluate_agent_returns(self.model, self.eval_env, self.n_eval_episodes)
        assignment = self.model.assignment()
        limits = self.model.assignment_limits
        values = agent_welfare(table, assignment, limits.outside)
        # the model's own objective (the paper's mean unless it was built with welfare=...)
        welfare = float(values.mean()) if limits.objective.is_utilitarian else _objective(limits, values)
        self.n_evaluations += 1
        self.last_evaluation = {
            "welfare": welfare,
            "egalitarian_welfare": float(values.min()),
            "timesteps": float(self.num_timesteps),
        }
        if not math.isfinite(welfare):
            self.diverged = f"non-finite welfare {welfare} after {self.num_timesteps} steps"
        else:
            self.trial.report(welfare, self.n_evaluations)
        return welfare

    def _on_step(self) -> bool:
        last_in_training = self.n_evaluations >= self.planned_evaluations - 1
        if last_in_training or self.num_timesteps < (self.n_evaluations + 1) * self.eval_freq:
            return True
        self.evaluate()
        if self.diverged is not None:
            return False
        self.is_pruned = self.trial.should_prune()
        return not self.is_pruned


def _objective(limits: Any, values: np.ndarray) -> float:
    """The objective's welfare of the agents' values; ``nan`` (a pruned trial) where it is undefined."""
    try:
        return limits.objective.value(values)
    except ValueError:  # Nash of a non-positive value
        return float("nan")


def _is_divergence(error: BaseException) -> bool:
    # NaN parameters surface as torch.distributions' argument check (a ValueError that prints the NaN
    # logits); torch.multinomial raises RuntimeError on NaN probabilities. Errors that mention no NaN or
    # infinity (a bad setting, out of memory) are real failures and must not pass as a pruned trial.
    if isinstance(error, FloatingPointError):
        return True
    return bool(re.search(r"\b(nan|inf|infinity)\b", str(error), re.IGNORECASE))


def make_objective(
    env_id: str,
    k: int,
    assigner: str = "em",
    n_timesteps: int = 100_000,
    n_evaluations: int = 5,
    n_eval_episodes: int = 5,
    seed: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    assigner_kwargs: dict[str, Any] | None = None,
    device: str = "auto",
    sample_params: SampleParams | None = None,
    normalize_observations: bool = False,
    algo: str = "ppo",
    fairness: dict[str, Any] | None = None,
) -> Callable[[Trial], float]:
    """The objective of a study: train one model, return the evaluated welfare of its assignment.

    Evaluations every ``n_timesteps / n_evaluations`` steps are reported for pruning, the last one after
    training ends (it is the trial's value). A trial whose training raises on NaN/infinite numbers, or
    whose welfare is not finite, is pruned with the reason in its user attribute ``diverged``. Errors in
    the settings themselves (e.g. ``k`` above the number of agents) fail the trial.

    Every trial trains with the same ``seed`` (trials compare hyperparameters, not luck). The trial's
    user attributes hold the ``hyperparams`` it trained with (``batch_size`` adjusted, JSON-ready, the
    format of :data:`sb3_rmdp.hyperparams.HYPERPARAMS`) and its ``egalitarian_welfare``.

    :param env_id: an r-MDP env id, e.g. ``"sb3_rmdp/ResourceGathering-v0"``, or ``module:EnvId-v0`` /
        ``module:MyEnv`` for an env of the user's module (see ``sb3-rmdp train --env``).
    :param env_kwargs: fixed keyword arguments of the env (the search space may add to them).
    :param assigner_kwargs: fixed keyword arguments of the assigner; they override sampled ones.
    :param sample_params: the search space, see :func:`sample_rmdp_params` (default: the algorithm's,
        :func:`default_search_space`).
    :param normalize_observations: train on SB3's ``VecNormalize`` (observations only, as rl-zoo does for
        MuJoCo); every evaluation reads the training statistics, frozen.
    :param algo: the algorithm (``"ppo"``, ``"a2c"``, ``"maskable_ppo"``, ``"recurrent_ppo"``), with the
        policy alias that fits the env's observations.
    """
    algorithm = algorithm_class(algo)
    env = resolve_env_spec(env_id)  # a registered id, or an env of the user's module ("module:Name")
    if sample_params is None:
        sample_params = default_search_space(algo)
    if n_evaluations < 1:
        raise ValueError(f"n_evaluations={n_evaluations}: evaluate at least once (the trial's value).")
    if assigner not in ASSIGNERS:
        raise ValueError(f"Unknown assigner {assigner!r}: pass one of {sorted(ASSIGNERS)}.")
    if (
        assigner == "coverage"
        and "epsilon" not in (assigner_kwargs or {})
        and sample_params in (sample_rmdp_params, sample_a2c_rmdp_params)
    ):
        raise ValueError(
            "The coverage assigner needs its cover radius, in the units of the env's agent params: fix it "
            "with --assigner-kwargs epsilon=0.2 (assigner_kwargs=...), or search it in your own "
            "search space (--search-space module:function)."
        )

    def objective(trial: Trial) -> float:
        params = sample_params(trial, assigner)
        if env_kwargs:
            params = {**params, "env_kwargs": {**env_kwargs, **params.get("env_kwargs", {})}}
        if assigner_kwargs:
            params = {**params, "assigner_kwargs": {**params.get("assigner_kwargs", {}), **assigner_kwargs}}
        kwargs = model_kwargs(params, assigner, k)
        hyperparams = {key: value for key, value in kwargs.items() if key not in ("k", "assigner")}
        trial.set_user_attr(
            "hyperparams", {**hyperparams, "assigner_kwargs": params.get("assigner_kwargs", {})}
        )
        train_env = make_rmdp_vec_env(
            env_id,
            n_envs=kwargs.pop("n_envs", None) or k,
            seed=seed,
            env_kwargs=kwargs.pop("env_kwargs", None),
        )
        if normalize_observations:
            train_env = VecNormalize(train_env, norm_obs=True, norm_reward=False)
        policy = default_policy(algorithm, train_env.observation_space)
        model = algorithm(policy, train_env, seed=seed, device=device, **(fairness or {}), **kwargs)
        eval_env = make_rmdp_vec_env(env, n_envs=1, seed=seed, env_kwargs=params.get("env_kwargs"))
        if normalize_observations:
            eval_env = VecNormalize(eval_env, training=False, norm_obs=True, norm_reward=False)
        callback = TrialEvalCallback(
            trial, eval_env, n_timesteps // n_evaluations, n_evaluations, n_eval_episodes
        )
        try:
            model.learn(n_timesteps, callback=callback)
            if callback.is_pruned:
                raise optuna.TrialPruned(f"pruned after {callback.n_evaluations} evaluations")
            if callback.diverged is None:
                welfare = callback.evaluate()
        except (ValueError, FloatingPointError, RuntimeError) as error:
            if not _is_divergence(error):
                raise
            callback.diverged = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        finally:
            eval_env.close()
            model.env.close()  # type: ignore[union-attr]
        if callback.diverged is not None:
            trial.set_user_attr("diverged", callback.diverged)
            raise optuna.TrialPruned(f"diverged: {callback.diverged}")
        trial.set_user_attr("egalitarian_welfare", callback.last_evaluation["egalitarian_welfare"])
        return welfare

    return objective


# ---------------------------------------------------------------------------------------- study and storage
class TrialSeededTPESampler(TPESampler):
    """TPE whose random draws for a trial are seeded by ``(seed, trial number)``.

    Workers started with the same ``--seed`` then propose different startup trials (plain seeded TPE
    in every worker proposes the same ones), and a study run by one worker is reproducible.
    """

    def __init__(self, seed: int | None = None, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._base_seed is not None:
            tpe_seed, random_seed = np.random.SeedSequence([self._base_seed, trial.number]).generate_state(2)
            self._rng.rng.seed(int(tpe_seed))
            self._random_sampler._rng.rng.seed(int(random_seed))
        super().before_trial(study, trial)


def make_storage(
    url: str | None = DEFAULT_STORAGE,
    heartbeat_interval: int = 60,
    grace_period: int | None = None,
    max_retry: int | None = 3,
) -> BaseStorage:
    """The study's storage: in memory for ``None`` / ``":memory:"``, else an ``RDBStorage`` with heartbeats.

    With heartbeats, a trial whose worker died (no heartbeat for ``grace_period`` seconds) is marked
    ``FAIL`` by the next worker to start a trial, and re-queued with the same parameters up to
    ``max_retry`` times.

    :param url: an SQLAlchemy URL: ``sqlite:///file.db``, ``postgresql+psycopg2://user@host/db``,
        ``mysql+pymysql://user@host/db``.
    :param heartbeat_interval: seconds between heartbeats of a running trial.
    :param grace_period: seconds without heartbeat after which a trial is stale (default: twice the interval).
    :param max_retry: re-queue a stale trial at most this many times (``None``: always).
    """
    if url in (None, "", ":memory:", "sqlite:///:memory:"):
        # One process only: an in-memory SQLite database is private to each connection.
        return InMemoryStorage()
    assert url is not None
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Wait for the other workers' writes instead of failing with "database is locked".
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(_CREATION_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                )
        except ImportError as error:
            raise ImportError(
                f"No database driver for {url.split('://')[0]}:// ({error.__cause__ or error}). Install "
                "it, e.g. PostgreSQL: pip install 'sb3-rmdp[postgres]' and a postgresql+psycopg2:// URL "
                "(SQLAlchemy 2.1 reads postgresql:// as psycopg 3: pip install 'psycopg[binary]'); MySQL: "
                "pip install pymysql and a mysql+pymysql:// URL."
            ) from error
        except ArgumentError as error:  # not a URL, or an unknown database
            raise ValueError(
                f"--storage {url!r} is not a database URL SQLAlchemy can open ({error}): pass e.g. "
                "sqlite:///study.db, postgresql+psycopg2://user:password@host/db or :memory:."
            ) from None
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
            # Workers started together on a fresh database race to create its tables; the losers retry.
            if attempt == _CREATION_ATTEMPTS - 1:
                raise ValueError(
                    f"cannot open the study storage {url!r} ({str(error).splitlines()[0]}): check the URL, "
                    "that its folder exists and that the database server is reachable."
                ) from error
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def default_study_name(env_id: str, k: int, assigner: str) -> str:
    """``"ResourceGathering-v0-k3-em"`` for ``("sb3_rmdp/ResourceGathering-v0", 3, "em")``."""
    return f"{env_id.split('/')[-1]}-k{k}-{assigner}"


def _objective_suffix(name: str, fairness: dict[str, Any] | None) -> str:
    """A default study name with the objective appended unless it is the paper's (``-egalitarian``): trials
    of two objectives never share a study."""
    welfare = (fairness or {}).get("welfare", "utilitarian")
    if welfare == "utilitarian":
        return name
    return f"{name}-{welfare if isinstance(welfare, str) else '-'.join(map(str, welfare))}"


def create_study(
    storage: BaseStorage,
    study_name: str,
    settings: dict[str, Any],
    seed: int | None = None,
    n_startup_trials: int = 10,
    n_warmup_evaluations: int = 0,
) -> optuna.Study:
    """Create the study, or load it if it exists (``load_if_exists``), maximizing the welfare.

    :param settings: what every worker must agree on (env, k, assigner, budget); stored as the study's
        user attributes.
    :raises ValueError: if the existing study was created with other settings.
    """
    sampler = TrialSeededTPESampler(seed=seed, n_startup_trials=n_startup_trials)
    pruner = MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_evaluations)
    for attempt in range(_CREATION_ATTEMPTS):
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=study_name,
                sampler=sampler,
                pruner=pruner,
                direction="maximize",
                load_if_exists=True,
            )
            break
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError):
            # Two workers creating the same study at once: one loses the race and loads it next time.
            if attempt == _CREATION_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    existing = study.user_attrs
    for key in _STUDY_SETTINGS:
        if key in existing and existing[key] != settings[key]:
            raise ValueError(
                f"Study {study_name!r} was created with {key}={existing[key]!r}, this worker has "
                f"{key}={settings[key]!r}: pass the study's settings, or another --study-name."
            )
    for key, value in settings.items():
        if key not in existing:
            study.set_user_attr(key, value)
    return study


class _SurplusTrialError(Exception):
    """The study already has its ``n_trials`` running, waiting or finished trials before this one."""


def _count(trials: Sequence[FrozenTrial], states: Sequence[TrialState]) -> int:
    return sum(trial.state in states for trial in trials)


def optimize(
    study: optuna.Study,
    objective: Callable[[Trial], float],
    n_trials: int,
    n_jobs: int = 1,
    poll_interval: float = 1.0,
) -> None:
    """Run trials until the study has ``n_trials`` finished (``COMPLETE`` or ``PRUNED``) trials.

    Any number of workers (processes, machines, or ``n_jobs`` threads here) may run this on one study:
    they finish exactly ``n_trials`` trials together (see the module notes).

    :param poll_interval: seconds between looks at the study while others run its last trials.
    """

    def claimed_objective(trial: Trial) -> float:
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if _count(before, _PLACE_STATES) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise _SurplusTrialError(f"the study has its {n_trials} trials; trial {trial.number} is surplus")
        return objective(trial)

    def worker() -> None:
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # re-queues the trials of dead workers (heartbeats)
            trials = study.get_trials(deepcopy=False)
            finished = _count(trials, FINISHED_STATES)
            if finished >= n_trials:
                return
            waiting = _count(trials, (TrialState.WAITING,))
            if not waiting and finished + _count(trials, (TrialState.RUNNING,)) >= n_trials:
                time.sleep(poll_interval)  # others are running the last trials; they may still fail
                continue
            study.optimize(claimed_objective, n_trials=1, catch=(_SurplusTrialError,), gc_after_trial=True)

    threads = [threading.Thread(target=worker, name=f"sb3-rmdp-tune-{i}") for i in range(n_jobs - 1)]
    for thread in threads:
        thread.start()
    try:
        worker()
    finally:
        for thread in threads:
            thread.join()


def tune(
    env_id: str,
    k: int,
    assigner: str = "em",
    n_trials: int = 100,
    n_timesteps: int = 100_000,
    n_evaluations: int = 5,
    n_eval_episodes: int = 5,
    n_startup_trials: int = 10,
    n_warmup_evaluations: int | None = None,
    storage: str | BaseStorage | None = DEFAULT_STORAGE,
    study_name: str | None = None,
    seed: int | None = 0,
    n_jobs: int = 1,
    env_kwargs: dict[str, Any] | None = None,
    assigner_kwargs: dict[str, Any] | None = None,
    device: str = "auto",
    sample_params: SampleParams | None = None,
    heartbeat_interval: int = 60,
    grace_period: int | None = None,
    max_retry: int | None = 3,
    normalize_observations: bool = False,
    algo: str = "ppo",
    fairness: dict[str, Any] | None = None,
) -> optuna.Study:
    """Tune a model on ``env_id`` with policy budget ``k``: run trials until the study has ``n_trials``.

    The Python face of ``sb3-rmdp tune`` (see :func:`tune_main` for every option's meaning).

    :param storage: a URL (see :func:`make_storage`), a ready storage, or ``None`` for in memory.
    :param fairness: the models' ``welfare``, ``welfare_temperature``, ``c_min``, ``c_max`` and
        ``outside_values`` (the trials then maximize that welfare).
    :param n_warmup_evaluations: evaluations before a trial can be pruned (default ``n_evaluations // 3``).
    :return: the study (``study.best_trial``, ``study.trials_dataframe()``).
    """
    if not isinstance(storage, BaseStorage):
        storage = make_storage(storage, heartbeat_interval, grace_period, max_retry)
    settings = {
        "env": env_id,
        "k": k,
        "assigner": assigner,
        "n_timesteps": n_timesteps,
        "n_evaluations": n_evaluations,
        "algo": algo,
    }
    if normalize_observations:  # (only then: studies created before the option keep their settings)
        settings["normalize_observations"] = True
    study = create_study(
        storage,
        study_name or _objective_suffix(default_study_name(env_id, k, assigner), fairness),
        settings,
        seed=seed,
        n_startup_trials=n_startup_trials,
        n_warmup_evaluations=n_evaluations // 3 if n_warmup_evaluations is None else n_warmup_evaluations,
    )
    objective = make_objective(
        env_id,
        k,
        assigner,
        n_timesteps=n_timesteps,
        n_evaluations=n_evaluations,
        n_eval_episodes=n_eval_episodes,
        seed=seed,
        env_kwargs=env_kwargs,
        assigner_kwargs=assigner_kwargs,
        device=device,
        sample_params=sample_params,
        normalize_observations=normalize_observations,
        algo=algo,
        fairness=fairness,
    )
    # Polling is a read while others run the last trials; a dead worker is only seen after the grace period.
    poll_interval = (
        0.2 if isinstance(storage, InMemoryStorage) else min(2.0, max(0.5, heartbeat_interval / 4))
    )
    optimize(study, objective, n_trials, n_jobs=n_jobs, poll_interval=poll_interval)
    return study


def best_params(study: optuna.Study) -> dict[str, Any]:
    """The best trial as the JSON document that ``--out`` writes and :func:`load_best_params` reads.

    :raises ValueError: if no trial completed.
    """
    trial = study.best_trial
    return {
        "env": study.user_attrs.get("env"),
        "k": study.user_attrs.get("k"),
        "assigner": study.user_attrs.get("assigner"),
        "algo": study.user_attrs.get("algo", "ppo"),
        "welfare": trial.value,
        "trial": trial.number,
        "study_name": study.study_name,
        "hyperparams": trial.user_attrs["hyperparams"],
        # train the tuned model on VecNormalize(env, norm_obs=True, norm_reward=False) too
        "normalize_observations": bool(study.user_attrs.get("normalize_observations", False)),
    }


# ---------------------------------------------------------------------------------------- command line
_EPILOG = """\
examples:
  # 50 trials of 100k steps on one machine (the study lives in sb3_rmdp_tuning.db)
  sb3-rmdp tune --env sb3_rmdp/ResourceGathering-v0 -k 3 --n-trials 50 --n-timesteps 100000 --out best.json

  # the same study on many machines: start this command on each; together they run 200 trials
  sb3-rmdp tune --env sb3_rmdp/ResourceGathering-v0 -k 3 --n-trials 200 \\
      --storage postgresql+psycopg2://user:password@dbhost/tuning --study-name rg-k3-em

  # then train with the best hyperparameters (the JSON holds k, the algorithm, the assigner and its
  # settings): sb3-rmdp train --env sb3_rmdp/ResourceGathering-v0 -k 3 --hyperparams best.json, or
  #   from sb3_rmdp import RMDPPPO
  #   from sb3_rmdp.tuning import load_best_params
  #   model = RMDPPPO("MlpPolicy", "sb3_rmdp/ResourceGathering-v0", **load_best_params("best.json"))

A worker that is killed mid-trial leaves a RUNNING trial; after --grace-period seconds without its
heartbeat the next worker marks it FAIL and re-runs its parameters. Re-running the command resumes
the study (load_if_exists): --n-trials counts the finished trials of the whole study.
"""


def _positive_int(text: str) -> int:
    """An integer >= 1; accepts ``1e5`` and ``100_000`` for step counts."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = 0.0
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sb3-rmdp tune",
        description="Tune RMDPPPO's and the assigner's hyperparameters with Optuna (TPE sampler, median "
        "pruner). Each trial trains k representatives and scores the welfare of the deployed assignment, "
        "evaluated with real episodes.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--env", required=True, help="r-MDP env id, e.g. sb3_rmdp/ResourceGathering-v0")
    add("-k", type=_positive_int, required=True, help="policy budget: number of representatives, >= 1")
    add("--assigner", default="em", choices=sorted(ASSIGNERS), help="assigner to tune (default: em)")
    add("--algo", default="ppo", choices=list(ALGORITHMS), help="algorithm to tune (default: ppo)")
    add(
        "--n-trials",
        type=_positive_int,
        default=100,
        help="finished trials the study needs, all workers together",
    )
    add("--n-timesteps", type=_positive_int, default=100_000, help="training steps per trial (all env slots)")
    add("--n-evaluations", type=_positive_int, default=5, help="evaluations per trial, reported for pruning")
    add("--n-eval-episodes", type=_positive_int, default=5, help="episodes per representative per evaluation")
    add("--n-startup-trials", type=int, default=10, help="random trials before TPE, and before pruning")
    add("--n-warmup-evaluations", type=int, default=None, help="no pruning before (n_evaluations // 3)")
    add(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"Optuna RDB URL or ':memory:' (default: {DEFAULT_STORAGE})",
    )
    add("--study-name", default=None, help="default: <env>-k<k>-<assigner>")
    add("--seed", type=int, default=0, help="seed of every trial's model and of the sampler")
    add("--n-jobs", type=int, default=1, help="trials run in parallel threads by this worker")
    kv = {"nargs": "+", "default": [], "metavar": "KEY=VALUE"}
    add("--env-kwargs", **kv, help="keyword arguments of the env, e.g. reward_scale=0.01")  # type: ignore[arg-type]
    add("--assigner-kwargs", **kv, help="fixed (not tuned) assigner settings, e.g. epsilon=0.2")  # type: ignore[arg-type]
    add("--device", default="auto", help="torch device of the models (default: auto)")
    add(
        "--normalize-observations",
        action="store_true",
        help="train on SB3's VecNormalize (observations only; e.g. MuJoCo velocity populations)",
    )
    add("--search-space", default=None, help="module:function replacing sample_rmdp_params(trial, assigner)")
    add("--heartbeat-interval", type=int, default=60, help="seconds between a running trial's heartbeats")
    add("--grace-period", type=int, default=None, help="seconds without heartbeat before a trial is dead")
    add("--max-retry", type=int, default=3, help="re-runs of a dead worker's trial")
    from sb3_rmdp.cli import add_fairness_options

    add_fairness_options(parser)
    add("--out", type=Path, default=None, help="write the best trial's hyperparameters to this JSON file")
    add("--overwrite", action="store_true", help="replace an existing --out file (default: refuse)")
    add("--verbose", type=int, default=1, choices=[0, 1], help="1: Optuna logs every trial (default)")
    return parser


def _key_values(items: list[str], option: str) -> dict[str, Any]:
    """``["reward_scale=0.01", "method=greedy"]`` -> ``{"reward_scale": 0.01, "method": "greedy"}``."""
    result: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise SystemExit(f"{option} {item!r}: write KEY=VALUE, e.g. {option} reward_scale=0.01")
        try:
            result[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            result[key] = text  # a bare word: a string
    return result


def _load_search_space(spec: str) -> SampleParams:
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise ValueError(f"--search-space {spec!r}: write module:function, e.g. my_space:sample_params.")
    return getattr(importlib.import_module(module_name), function_name)


def tune_main(argv: list[str] | None = None) -> int:
    """``sb3-rmdp tune``: run a worker of a tuning study; print and save the best trial.

    :param argv: command-line arguments (default ``sys.argv[1:]``); ``--help`` lists them.
    :return: exit code: 0 with a best trial, 1 when no trial completed, 130 when interrupted.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.out is not None:
        problem = output_problem(args.out, overwrite=args.overwrite)
        if problem is not None:  # checked before the study runs, not after
            parser.error(f"--out {args.out}: {problem}.")
    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)
    sample_params = _load_search_space(args.search_space) if args.search_space else None
    from sb3_rmdp.cli import UsageError, fairness_kwargs

    try:
        fairness = fairness_kwargs(args)
    except UsageError as error:
        parser.error(str(error))
    try:
        study = tune(
            args.env,
            args.k,
            args.assigner,
            n_trials=args.n_trials,
            n_timesteps=args.n_timesteps,
            n_evaluations=args.n_evaluations,
            n_eval_episodes=args.n_eval_episodes,
            n_startup_trials=args.n_startup_trials,
            n_warmup_evaluations=args.n_warmup_evaluations,
            storage=args.storage,
            study_name=args.study_name,
            seed=args.seed,
            n_jobs=args.n_jobs,
            env_kwargs=_key_values(args.env_kwargs, "--env-kwargs"),
            assigner_kwargs=_key_values(args.assigner_kwargs, "--assigner-kwargs"),
            device=args.device,
            sample_params=sample_params,
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
            max_retry=args.max_retry,
            normalize_observations=args.normalize_observations,
            algo=args.algo,
            fairness=fairness,
        )
    except KeyboardInterrupt:
        print("Interrupted: the study keeps its finished trials; run the command again to resume.")
        return 130
    except (ValueError, ImportError) as error:  # a bad storage URL, a setting the env rejects...
        print(f"sb3-rmdp tune: error: {error}", file=sys.stderr)
        return 2
    counts = {state.name: _count(study.get_trials(deepcopy=False), (state,)) for state in TrialState}
    print(f"Study {study.study_name!r}: " + ", ".join(f"{n} {name}" for name, n in counts.items() if n))
    if _count(study.get_trials(deepcopy=False), (TrialState.COMPLETE,)) == 0:
        print("No trial completed (all pruned or failed): nothing to report.")
        return 1
    best = best_params(study)
    print(f"Best trial {best['trial']}: welfare {best['welfare']:.4g}")
    print(f"  params: {json.dumps(study.best_trial.params)}")
    print(f"  RMDPPPO hyperparams: {json.dumps(best['hyperparams'])}")
    if args.out is not None:
        write_text(args.out, json.dumps(best, indent=2) + "\n")
        command = f"sb3-rmdp train --env {args.env} -k {args.k} --hyperparams {args.out}"
        print(f"Wrote {args.out}; train with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(tune_main())
