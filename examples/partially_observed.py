"""A partially observed population: LSTM representatives (``RMDPRecurrentPPO``) remember what they saw.

A clinic's protocol: a test at the first step shows the patient's condition (one of 3), later steps
show nothing of it, and at the last step the protocol picks one of 4 treatments. The agents are patient
groups with their own view of the best treatment for each condition (group g: treatment
``(condition + g) % 4``). A policy without memory has forgotten the condition when it treats; an LSTM
policy has not. With one policy the groups disagree anyway; with k=3 LSTM representatives each group
gets its treatment for every condition, which k=3 memoryless representatives cannot do.

    python examples/partially_observed.py                 # LSTM k=1 and k=3, MLP k=3, 30,000 steps each
    python examples/partially_observed.py --timesteps 60000 --seed 1

Writes ``<out>/lstm_k<k>.zip`` and prints the welfare of each model (1.0 is the optimum of k=3).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

from sb3_rmdp import RMDPPPO, RMDPRecurrentPPO
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.welfare import evaluate_agent_returns, utilitarian_welfare

N_CONDITIONS, N_TREATMENTS, N_GROUPS, PER_GROUP, STEPS = 3, 4, 3, 5, 3


class Clinic(gym.Env):
    """Observation: the test result (one-hot, at the first step only; zeros after) and the step (one-hot).
    Actions: ``Discrete(4)``; only the last step's counts (the treatment). Reward of agent i: 1 when the
    treatment is its group's choice for the condition, else 0.1; 3 steps, terminated."""

    def __init__(self) -> None:
        self.groups = np.repeat(np.arange(N_GROUPS), PER_GROUP)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(N_CONDITIONS + STEPS,), dtype=np.float32)
        self.action_space = spaces.Discrete(N_TREATMENTS)
        self.reward_space = spaces.Box(0.0, 1.0, shape=(len(self.groups),), dtype=np.float32)
        self.agent_params = self.groups.reshape(-1, 1).astype(np.float64)
        self.condition, self.t = 0, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(N_CONDITIONS + STEPS, dtype=np.float32)
        if self.t == 0:
            obs[self.condition] = 1.0  # the test result: seen once
        obs[N_CONDITIONS + self.t] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.condition, self.t = int(self.np_random.integers(N_CONDITIONS)), 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, np.ndarray, bool, bool, dict]:
        rewards = np.zeros(len(self.groups), dtype=np.float32)
        self.t += 1
        if self.t == STEPS:  # the treatment
            chosen = (self.condition + self.groups) % N_TREATMENTS == int(action)
            rewards = np.where(chosen, 1.0, 0.1).astype(np.float32)
            return np.zeros(N_CONDITIONS + STEPS, dtype=np.float32), rewards, True, False, {}
        return self._obs(), rewards, False, False, {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=3, help="policy budget: number of representatives")
    parser.add_argument("--timesteps", type=int, default=30_000, help="env steps for each model")
    parser.add_argument("--n-steps", type=int, default=128, help="steps per env slot per update")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/partially_observed"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    common = dict(n_steps=args.n_steps, batch_size=64, ent_coef=0.02, learning_rate=1e-3, seed=args.seed)

    def welfare(model: Any) -> float:
        table = evaluate_agent_returns(model, make_rmdp_vec_env(Clinic, seed=args.seed + 1), n_episodes=30)
        return utilitarian_welfare(table, model.assignment())

    results = {}
    for k in sorted({1, args.k}):
        # LSTM states per env slot; each slot keeps its representative for a whole episode
        lstm = RMDPRecurrentPPO(
            "MlpLstmPolicy",
            make_rmdp_vec_env(Clinic, n_envs=2 * k, seed=args.seed),
            k=k,
            policy_kwargs={"lstm_hidden_size": 32, "net_arch": [32]},
            **common,
        ).learn(args.timesteps)
        results[f"LSTM k={k}"] = welfare(lstm)
        lstm.save(args.out / f"lstm_k{k}.zip")
        served = [np.bincount(Clinic().groups[lstm.assignment() == j], minlength=N_GROUPS) for j in range(k)]
        print(
            f"LSTM k={k}: welfare {results[f'LSTM k={k}']:.3f}; patients of each group per representative: "
            f"{[counts.tolist() for counts in served]}"
        )
    envs = make_rmdp_vec_env(Clinic, n_envs=2 * args.k, seed=args.seed)
    memoryless = RMDPPPO("MlpPolicy", envs, k=args.k, **common)
    results[f"MLP k={args.k}"] = welfare(memoryless.learn(args.timesteps))
    print(f"MLP k={args.k} (no memory): welfare {results[f'MLP k={args.k}']:.3f}")
    print(f"memory is worth {results[f'LSTM k={args.k}'] - results[f'MLP k={args.k}']:+.3f} at k={args.k}")


if __name__ == "__main__":
    main()
