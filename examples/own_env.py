"""Your own r-MDP, from zero: write the env, train k representatives with every assigner, evaluate, use
the command line, export one representative.

The env is a delivery courier on a line of 9 stops, and each of the 12 agents (customers) lives at a
stop of its own: an agent is paid when the courier stands at its stop, a little less at the
neighbouring ones. One courier policy cannot stand everywhere; k policies can split the line.

The r-MDP contract is four lines of an ordinary gymnasium env (see ``Delivery`` below):

1. ``step`` returns a reward **vector**, one entry per agent, shape ``(n_agents,)``;
2. ``self.reward_space = spaces.Box(low, high, shape=(n_agents,))`` declares it (MO-Gymnasium's
   convention, so MO-Gymnasium envs are r-MDPs too);
3. optionally ``self.agent_params`` ``(n_agents, d)`` describes each agent (the oracle and coverage
   assigners, and the plots, read it);
4. everything else is gymnasium's: spaces, ``reset``, ``terminated`` / ``truncated``.

    python examples/own_env.py                         # 6 assigners x 60,000 steps: about 3 min
    python examples/own_env.py --timesteps 20000 --k 2

Writes ``<out>/em.zip`` (the EM model), ``<out>/representative_0.zip`` (a plain SB3 PPO file) and
``<out>/assigners.csv`` (the evaluated welfare of each assigner).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import EvalCallback

from sb3_rmdp import RMDPPPO, FixedAssigner, export_representative
from sb3_rmdp.assigners import make_assigner
from sb3_rmdp.cli import main as sb3_rmdp_command
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.welfare import best_assignment, evaluate_agent_returns, utilitarian_welfare

N_STOPS, N_AGENTS, EPISODE = 9, 12, 20


class Delivery(gym.Env):
    """A courier on a line of ``N_STOPS`` stops; agent i lives at stop ``homes[i]``.

    Observation: the courier's stop (one-hot) and the time left. Actions: 0 left, 1 stay, 2 right.
    Reward of agent i per step: 1 at its stop, 0.5 at a neighbouring stop, else 0 (times 1 / EPISODE,
    so an agent's return is at most 1). 20 steps per episode, truncated.
    """

    def __init__(self, n_agents: int = N_AGENTS, seed: int = 0):
        rng = np.random.default_rng(seed)  # the population is part of the env: its own generator
        self.homes = np.sort(rng.integers(0, N_STOPS, size=n_agents))
        self.observation_space = spaces.Box(0.0, 1.0, shape=(N_STOPS + 1,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        # the contract: one reward per agent, and (optional) what describes each agent
        self.reward_space = spaces.Box(0.0, 1.0 / EPISODE, shape=(n_agents,), dtype=np.float32)
        self.agent_params = self.homes.reshape(-1, 1).astype(np.float64)
        self.stop, self.t = N_STOPS // 2, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(N_STOPS + 1, dtype=np.float32)
        obs[self.stop] = 1.0
        obs[-1] = 1.0 - self.t / EPISODE
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.stop, self.t = int(self.np_random.integers(N_STOPS)), 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, np.ndarray, bool, bool, dict]:
        self.stop = int(np.clip(self.stop + int(action) - 1, 0, N_STOPS - 1))
        self.t += 1
        distance = np.abs(self.homes - self.stop)
        rewards = np.where(distance == 0, 1.0, np.where(distance == 1, 0.5, 0.0)) / EPISODE
        return self._obs(), rewards.astype(np.float32), False, self.t >= EPISODE, {}


# Registered, the env gets an id that SB3, gym.make and `sb3-rmdp train --env own_env:Delivery-v0` take.
if "Delivery-v0" not in gym.registry:
    gym.register(id="Delivery-v0", entry_point=Delivery, disable_env_checker=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=3, help="policy budget: number of representatives")
    parser.add_argument("--timesteps", type=int, default=60_000, help="env steps per assigner")
    parser.add_argument("--n-steps", type=int, default=256, help="PPO steps per env slot per update")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/own_env"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    env = Delivery()
    print(f"Delivery: {N_AGENTS} agents at stops {env.homes.tolist()}, k={args.k}")

    # Every assigner, at the same budget. The oracle splits the agents by their param (the stop) into k
    # equal-width bins; "fixed" is an assignment you choose (here: by thirds of the line).
    fixed = FixedAssigner(np.minimum(env.homes * args.k // N_STOPS, args.k - 1))
    rows = []
    for name in ("em", "end_to_end", "kmeans", "random", "oracle", "fixed"):
        assigner = fixed if name == "fixed" else make_assigner(name)
        model = RMDPPPO(
            "MlpPolicy",
            make_rmdp_vec_env(Delivery, n_envs=args.k, seed=args.seed),
            k=args.k,
            assigner=assigner,
            n_steps=args.n_steps,
            batch_size=64,
            ent_coef=0.01,
            seed=args.seed,
        )
        callbacks = []
        if name == "em":
            # SB3's EvalCallback scores the deployed assignment: each eval episode is one agent's
            # return under its representative, so eval/mean_reward is the welfare.
            callbacks.append(
                EvalCallback(make_rmdp_vec_env(Delivery), n_eval_episodes=N_AGENTS, eval_freq=4000)
            )
        model.learn(args.timesteps, callback=callbacks)
        # Real evaluation episodes: every representative for every agent -> Q (n_agents, k).
        table = evaluate_agent_returns(model, Delivery(), n_episodes=3)
        welfare = utilitarian_welfare(table, model.assignment())
        best = utilitarian_welfare(table, best_assignment(table))
        print(f"{name:>10}: welfare {welfare:.3f} (each agent on its best representative: {best:.3f})")
        rows.append({"assigner": name, "k": args.k, "welfare": round(welfare, 4)})
        if name == "em":
            model.save(args.out / "em.zip")
            em_model = model

    with open(args.out / "assigners.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["assigner", "k", "welfare"])
        writer.writeheader()
        writer.writerows(rows)

    # The command line takes the env from this module: `--env own_env:Delivery-v0`, run from examples/.
    code = sb3_rmdp_command(
        [
            *["train", "--env", "own_env:Delivery-v0", "-k", str(args.k), "--timesteps", str(args.timesteps)],
            *["--n-steps", str(args.n_steps), "--save", str(args.out / "cli.zip"), "--overwrite"],
            *["--no-progress-bar", "--seed", str(args.seed)],
        ]
    )
    print(f"sb3-rmdp train --env own_env:Delivery-v0 exited with {code}")

    # One representative as a plain SB3 file: PPO.load reads it without sb3_rmdp.
    path = export_representative(em_model, 0, args.out / "representative_0.zip")
    plain = PPO.load(path)
    obs, _ = env.reset(seed=1)
    same = bool(
        np.array_equal(
            plain.predict(obs, deterministic=True)[0],
            em_model.predict(obs, deterministic=True, representative=0)[0],
        )
    )
    print(f"representative 0 exported to {path}; PPO.load acts as it does: {same}")


if __name__ == "__main__":
    main()
