"""Tune EM on Resource Gathering with Optuna, then train with the best hyperparameters.

Each trial trains an ``RMDPPPO`` with hyperparameters drawn by a search space, evaluates every
representative for every agent in real episodes and scores the welfare of the deployed assignment;
TPE proposes the next trial from the finished ones and a median pruner stops poor trials early. The
study lives in a SQLite file: run the script again and it goes on where it stopped (``--trials``
counts the finished trials of the whole study), or start it in several shells at once and they share
the trials. ``sb3-rmdp tune`` is the same from the command line.

The search space here is narrow, around the tuned settings (``sb3_rmdp.hyperparams``): learning rate,
entropy coefficient and EM's two parameters. ``sb3_rmdp.tuning.sample_rmdp_params``, the default,
searches all of PPO's.

    python examples/tuning.py                                  # 4 trials of 30,000 steps, then 150,000
    python examples/tuning.py --trials 20 --trial-timesteps 60000

Writes ``<out>/tuning.db`` (the study), ``<out>/best.json`` (the best trial, for ``load_best_params``)
and ``<out>/model.zip`` (trained with it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import optuna
import torch as th

from sb3_rmdp import RMDPPPO
from sb3_rmdp.tuning import best_params, load_best_params, sample_assigner_params, tune
from sb3_rmdp.welfare import evaluate_agent_returns, utilitarian_welfare

ENV_ID = "sb3_rmdp/ResourceGathering-v0"


def make_search_space(n_steps: int) -> Any:
    """A search space: a function ``(trial, assigner_name) -> RMDPPPO keyword arguments``."""

    def search_space(trial: optuna.Trial, assigner_name: str) -> dict[str, Any]:
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 2e-3, log=True),
            "ent_coef": trial.suggest_float("ent_coef", 1e-3, 0.05, log=True),
            # Fixed values are fine: the tuned ones of Resource Gathering.
            "n_steps": n_steps,
            "batch_size": 256,  # lowered to a divisor of n_steps * k when it does not divide it
            "n_epochs": 10,
            "gamma": 1.0,
            "env_kwargs": {"reward_scale": 0.01},
            # EM's mixing and warm start, named em_mixing and em_warm_start_updates in the study.
            "assigner_kwargs": sample_assigner_params(trial, assigner_name),
        }

    return search_space


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=3, help="policy budget: number of representatives")
    parser.add_argument("--trials", type=int, default=4, help="finished trials the study needs")
    parser.add_argument("--trial-timesteps", type=int, default=30_000, help="env steps per trial")
    parser.add_argument("--timesteps", type=int, default=150_000, help="env steps of the final training")
    parser.add_argument("--n-steps", type=int, default=512, help="PPO rollout length per env slot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/tuning"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    storage = f"sqlite:///{(args.out / 'tuning.db').resolve()}"  # any Optuna RDB URL works (PostgreSQL...)
    study = tune(
        ENV_ID,
        k=args.k,
        assigner="em",
        n_trials=args.trials,
        n_timesteps=args.trial_timesteps,
        n_evaluations=3,  # two reported to the pruner during training, the last one is the trial's value
        n_eval_episodes=1,  # the env is deterministic: one episode per representative is exact
        n_startup_trials=2,  # random trials before TPE (and before the pruner may stop a trial)
        storage=storage,
        study_name=f"examples-rg-k{args.k}-em",
        seed=args.seed,
        sample_params=make_search_space(args.n_steps),
    )
    best = best_params(study)
    # The study's welfare is in training units (reward_scale=0.01): 0.89 is 89 in the paper's units.
    print(f"best trial {best['trial']}: welfare {best['welfare']:.4f}, params {study.best_trial.params}")
    (args.out / "best.json").write_text(
        json.dumps(best, indent=2) + "\n"
    )  # what `sb3-rmdp tune --out` writes

    # Train with the best hyperparameters: k, a fresh assigner with its tuned settings, PPO's arguments.
    model = RMDPPPO("MlpPolicy", ENV_ID, seed=args.seed, **load_best_params(args.out / "best.json"))
    model.learn(args.timesteps)
    table = evaluate_agent_returns(model, gym.make(ENV_ID), n_episodes=1)  # paper units (reward_scale=1)
    print(
        f"welfare after {args.timesteps:,} steps with the best hyperparameters: "
        f"{utilitarian_welfare(table, model.assignment()):.2f}"
    )
    model.save(args.out / "model.zip")
    print(f"saved {args.out / 'best.json'}, {args.out / 'tuning.db'} and {args.out / 'model.zip'}")


if __name__ == "__main__":
    main()
