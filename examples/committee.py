"""A policy committee (PACMAN) for a velocity population, and serving agents it has never seen.

1. **Cluster.** ``epsilon_cover`` picks k prototype speeds that cover as many agents as possible: an
   agent is covered when its target lies within ``epsilon`` of a prototype. A larger ``epsilon`` covers
   more agents, with policies that fit each of them less closely.
2. **Train.** ``CoverageAssigner(epsilon)`` computes that cover when the model is set up and fixes the
   assignment: each representative trains for its prototype's agents.
3. **Serve new agents.** Zero-shot: a new agent with a known target gets the representative of the
   nearest prototype (``zero_shot_select``), at no cost. Few-shot: every representative runs a few
   episodes in the new agent's env and the best one is kept (``select_representative``), at a cost of
   ``k * episodes`` episodes.

    python examples/committee.py                          # k=5, epsilon=0.4, 500,000 steps: ~10 min
    python examples/committee.py --epsilon 0.2 --new-agents 5

Writes ``<out>/new_agents.csv``: each new agent's target, the zero-shot and few-shot choices and the
few-shot returns of every representative.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import gymnasium as gym
import torch as th
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecNormalize

from sb3_rmdp import RMDPPPO, CoverageAssigner
from sb3_rmdp.committee import epsilon_cover, population_with_agents
from sb3_rmdp.deploy import select_representative, zero_shot_select
from sb3_rmdp.envs import agent_params_of, make_rmdp_vec_env
from sb3_rmdp.envs.velocity import TARGET_RANGES, velocity_targets, welfare_upper_bound
from sb3_rmdp.welfare import evaluate_agent_returns, utilitarian_welfare

ENV_ID = "sb3_rmdp/HalfCheetahVelocity-v0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=5, help="policy budget: number of representatives")
    parser.add_argument("--n-agents", type=int, default=100)
    parser.add_argument("--epsilon", type=float, default=0.4, help="cover radius, in target-speed units")
    parser.add_argument("--timesteps", type=int, default=500_000, help="env steps, all representatives")
    parser.add_argument("--n-steps", type=int, default=2048, help="PPO rollout length per env slot")
    parser.add_argument("--new-agents", type=int, default=3, help="unseen agents to serve after training")
    parser.add_argument("--episodes", type=int, default=1, help="few-shot episodes per representative")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/committee"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    b = TARGET_RANGES["HalfCheetah-v5"]
    env_kwargs = {"n_agents": args.n_agents, "seed": args.seed}

    # 1. The cover alone, before any training: how many agents do k balls of radius epsilon cover?
    targets = agent_params_of(gym.make(ENV_ID, **env_kwargs))  # (n_agents, 1)
    for epsilon in (args.epsilon / 2, args.epsilon):
        print(epsilon_cover(targets, args.k, epsilon))

    # 2. Train the committee; the assigner computes the same cover (greedy method) at set-up.
    train_env = VecNormalize(
        make_rmdp_vec_env(ENV_ID, n_envs=args.k, seed=args.seed, env_kwargs=env_kwargs),
        norm_obs=True,
        norm_reward=False,
    )
    model = RMDPPPO(
        "MlpPolicy",
        train_env,
        k=args.k,
        assigner=CoverageAssigner(epsilon=args.epsilon),
        n_steps=args.n_steps,
        batch_size=64,
        ent_coef=1e-3,
        learning_rate=LinearSchedule(3e-4, 1e-4, 1.0),
        policy_kwargs={"net_arch": [64, 64], "activation_fn": th.nn.Tanh},
        seed=args.seed,
    )
    prototypes = model.assigner.cover.prototypes[:, 0]
    print(
        "prototype speed of each representative:", " ".join(f"{j}: {v:.2f}" for j, v in enumerate(prototypes))
    )
    model.learn(args.timesteps)

    eval_env = VecNormalize(
        make_rmdp_vec_env(ENV_ID, n_envs=1, seed=10_000 + args.seed, env_kwargs=env_kwargs),
        training=False,
        norm_obs=True,
        norm_reward=False,
    )
    eval_env.obs_rms = train_env.obs_rms
    table = evaluate_agent_returns(model, eval_env, n_episodes=1)
    welfare = utilitarian_welfare(table, model.assignment())
    bound = welfare_upper_bound(targets, args.k, b)
    print(f"welfare (deployed assignment): {welfare:.2f}; upper bound {bound:.2f}")

    # 3. New agents, with targets drawn from another seed.
    rows = []
    for target in velocity_targets(args.new_agents, b, seed=args.seed + 1):
        zero_shot = zero_shot_select(model, [target])
        # The new agent's env: the same population with this one agent. The policies were trained on
        # normalized observations, so the new agent's observations go through the training statistics.
        new_agent = population_with_agents(gym.make(ENV_ID, n_agents=1), [[target]])
        new_agent = gym.wrappers.TransformObservation(
            new_agent, train_env.normalize_obs, train_env.observation_space
        )
        few_shot, returns = select_representative(model, new_agent, n_episodes=args.episodes, seed=args.seed)
        rows.append(
            {
                "target": round(float(target), 3),
                "zero_shot": zero_shot,
                "zero_shot_prototype": round(float(prototypes[zero_shot]), 3),
                "few_shot": few_shot,
                "few_shot_returns": " ".join(f"{r:.2f}" for r in returns),
            }
        )
        print(
            f"new agent, target {target:.2f}: zero-shot representative {zero_shot} "
            f"(prototype {prototypes[zero_shot]:.2f}, return {returns[zero_shot]:.2f}), "
            f"few-shot representative {few_shot} (return {returns[few_shot]:.2f})"
        )
    with open(args.out / "new_agents.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"saved {args.out / 'new_agents.csv'}")


if __name__ == "__main__":
    main()
