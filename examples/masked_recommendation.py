"""A masked recommendation population: k recommendation policies for n users, only some items in stock.

A shop shows one of ``N_ITEMS`` items per step to a user population. Users come in taste groups (each
group likes some items), and every step only some items are in stock: recommending an item that is out
of stock is not allowed. With ``RMDPMaskablePPO`` each representative recommends among the items in
stock (the env's ``action_masks()``), and k representatives serve k taste groups where one policy must
compromise.

The env follows the r-MDP contract (a reward vector, one entry per user) and sb3-contrib's masking
contract (``action_masks()`` returns one boolean per action, True for the items in stock).

    python examples/masked_recommendation.py                  # k=1 and k=3, 100,000 steps each: ~3 min
    python examples/masked_recommendation.py --k 4 --timesteps 200000

Writes ``<out>/masked_k<k>.zip`` (the model) and prints the welfare of k=1 and of k.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from sb3_rmdp import RMDPMaskablePPO
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.welfare import evaluate_agent_returns, utilitarian_welfare

N_ITEMS, N_USERS, N_GROUPS, EPISODE = 8, 30, 3, 10


class Shop(gym.Env):
    """``N_USERS`` users in ``N_GROUPS`` taste groups; ``N_ITEMS`` items, about 60% in stock each step.

    Observation: the stock (``N_ITEMS`` 0/1 flags) and the time left. Action: the item to recommend.
    User i's reward: its liking of the item (1 for its group's favourite items, 0.2 otherwise, / EPISODE).
    ``action_masks()``: the stock. 10 steps per episode, truncated.
    """

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.groups = rng.integers(0, N_GROUPS, size=N_USERS)
        favourites = np.array([[0, 1, 2], [3, 4, 5], [5, 6, 7]])[self.groups]  # (N_USERS, 3)
        self.liking = np.full((N_USERS, N_ITEMS), 0.2, dtype=np.float32)
        np.put_along_axis(self.liking, favourites, 1.0, axis=1)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(N_ITEMS + 1,), dtype=np.float32)
        self.action_space = spaces.Discrete(N_ITEMS)
        self.reward_space = spaces.Box(0.0, 1.0 / EPISODE, shape=(N_USERS,), dtype=np.float32)
        self.agent_params = self.groups.reshape(-1, 1).astype(np.float64)
        self.stock, self.t = np.ones(N_ITEMS, dtype=bool), 0

    def _restock(self) -> None:
        self.stock = self.np_random.random(N_ITEMS) < 0.6
        self.stock[self.np_random.integers(N_ITEMS)] = True  # never an empty shop

    def _obs(self) -> np.ndarray:
        return np.append(self.stock, 1.0 - self.t / EPISODE).astype(np.float32)

    def action_masks(self) -> np.ndarray:
        """``(N_ITEMS,)`` bool: the items in stock, the only ones that may be recommended."""
        return self.stock.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        self._restock()
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, np.ndarray, bool, bool, dict]:
        item = int(action)
        if not self.stock[item]:
            raise ValueError(f"item {item} is out of stock: a masked policy never recommends it")
        rewards = self.liking[:, item] / EPISODE
        self.t += 1
        self._restock()
        return self._obs(), rewards, False, self.t >= EPISODE, {}


class CountOutOfStock(BaseCallback):
    """Counts recommendations of items out of stock during training (the masks make it 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.invalid = 0

    def _on_step(self) -> bool:
        masks, actions = self.locals["buffer_extras"]["action_masks"], self.locals["actions"]
        self.invalid += int((~np.take_along_axis(masks, actions.reshape(-1, 1), axis=1)).sum())
        return True


def train(k: int, timesteps: int, n_steps: int, seed: int) -> tuple[RMDPMaskablePPO, float, int]:
    model = RMDPMaskablePPO(
        "MlpPolicy",
        make_rmdp_vec_env(Shop, n_envs=2 * k, seed=seed),  # the masks travel through the VecEnv
        k=k,
        n_steps=n_steps,
        batch_size=128,
        ent_coef=0.01,
        seed=seed,
    )
    counter = CountOutOfStock()
    model.learn(timesteps, callback=counter)
    # stochastic env: several evaluation episodes per representative, each acting on the masks it sees
    table = evaluate_agent_returns(model, make_rmdp_vec_env(Shop, seed=seed + 100), n_episodes=20)
    return model, utilitarian_welfare(table, model.assignment()), counter.invalid


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=3, help="policy budget: number of representatives")
    parser.add_argument("--timesteps", type=int, default=100_000, help="env steps for each k")
    parser.add_argument("--n-steps", type=int, default=256, help="steps per env slot per update")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/masked_recommendation"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    shop = Shop()
    print(f"{N_USERS} users in {N_GROUPS} taste groups {np.bincount(shop.groups).tolist()}, {N_ITEMS} items")

    results = {}
    for k in sorted({1, args.k}):
        model, welfare, invalid = train(k, args.timesteps, args.n_steps, args.seed)
        results[k] = welfare
        groups = [
            np.bincount(shop.groups[model.assignment() == j], minlength=N_GROUPS).tolist() for j in range(k)
        ]
        print(f"k={k}: welfare {welfare:.3f}; out-of-stock recommendations in training: {invalid}")
        print(f"      users of each taste group per representative: {groups}")
        model.save(args.out / f"masked_k{k}.zip")
    # Every user's best single item is one of its group's favourites: a welfare of 1.0 is the ceiling.
    print(f"welfare gain of k={args.k} over one policy: {results[args.k] - results[1]:+.3f}")


if __name__ == "__main__":
    main()
