"""A population with ``Dict`` observations: ``"MultiInputPolicy"`` reads a state and a context apart.

A point moves on a plane towards the goal of whoever it serves; each of the 24 agents has its own goal
(the agents form 4 clusters of goals), and the observation is a ``Dict``: ``"position"`` (where the
point is) and ``"clock"`` (the time left, and whether it is the first half of the episode). SB3's
``CombinedExtractor`` (the ``"MultiInputPolicy"`` alias) flattens each key and concatenates them;
``features_extractor_kwargs`` and ``share_features_extractor`` work as in SB3.

    python examples/dict_population.py                     # k=1 and k=4, 80,000 steps each: ~2 min
    python examples/dict_population.py --k 2 --timesteps 40000

Writes ``<out>/dict_k<k>.zip`` and prints the welfare of k=1 and of k.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

from sb3_rmdp import RMDPPPO
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.welfare import evaluate_agent_returns, utilitarian_welfare

N_AGENTS, EPISODE, STEP = 24, 25, 0.15


class Goals(gym.Env):
    """A point on ``[-1, 1]^2``; agent i is paid ``(1 - distance to its goal / 2) / EPISODE`` per step.

    Observation ``Dict(position=Box(2), clock=Box(2))``; actions ``Discrete(5)``: stay, or a step of
    0.15 up, down, left, right. Starts at the origin, 25 steps, truncated.
    """

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        centres = np.array([[0.7, 0.7], [-0.7, 0.7], [-0.7, -0.7], [0.7, -0.7]])
        self.goals = np.clip(centres[np.arange(N_AGENTS) % 4] + rng.normal(0, 0.1, (N_AGENTS, 2)), -1, 1)
        self.observation_space = spaces.Dict(
            {
                "position": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
                "clock": spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32),
            }
        )
        self.action_space = spaces.Discrete(5)
        self.reward_space = spaces.Box(0.0, 1.0 / EPISODE, shape=(N_AGENTS,), dtype=np.float32)
        self.agent_params = self.goals.astype(np.float64)
        self.position, self.t = np.zeros(2), 0

    def _obs(self) -> dict[str, np.ndarray]:
        clock = [1.0 - self.t / EPISODE, float(self.t < EPISODE // 2)]
        return {"position": self.position.astype(np.float32), "clock": np.array(clock, dtype=np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.position, self.t = np.zeros(2), 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], np.ndarray, bool, bool, dict]:
        moves = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], dtype=np.float64)
        self.position = np.clip(self.position + STEP * moves[int(action)], -1.0, 1.0)
        self.t += 1
        distance = np.linalg.norm(self.goals - self.position, axis=1)
        rewards = ((1.0 - distance / 2.0) / EPISODE).astype(np.float32)
        return self._obs(), rewards, False, self.t >= EPISODE, {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=4, help="policy budget: number of representatives")
    parser.add_argument("--timesteps", type=int, default=80_000, help="env steps for each k")
    parser.add_argument("--n-steps", type=int, default=256, help="steps per env slot per update")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/dict_population"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{N_AGENTS} agents with goals in 4 clusters; observations {Goals().observation_space}")

    results = {}
    for k in sorted({1, args.k}):
        model = RMDPPPO(
            "MultiInputPolicy",  # SB3's CombinedExtractor: one flatten per key, concatenated
            make_rmdp_vec_env(Goals, n_envs=k, seed=args.seed),
            k=k,
            n_steps=args.n_steps,
            batch_size=64,
            ent_coef=0.01,
            seed=args.seed,
            policy_kwargs={"net_arch": [64, 64]},
        )
        model.learn(args.timesteps)
        table = evaluate_agent_returns(model, Goals(), n_episodes=1)  # deterministic: one episode each
        results[k] = utilitarian_welfare(table, model.assignment())
        clusters = [
            np.bincount(np.arange(N_AGENTS)[model.assignment() == j] % 4, minlength=4).tolist()
            for j in range(k)
        ]
        print(f"k={k}: welfare {results[k]:.3f}; agents of each goal cluster per representative: {clusters}")
        model.save(args.out / f"dict_k{k}.zip")
    print(f"welfare gain of k={args.k} over one policy: {results[args.k] - results[1]:+.3f}")


if __name__ == "__main__":
    main()
