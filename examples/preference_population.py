"""A preference population: any MO-Gymnasium env becomes an r-MDP of agents with their own trade-offs.

MO-Gymnasium's ``resource-gathering-v0`` returns a reward vector of 3 objectives per step: (-1 if an
enemy kills the character, gold brought home, gem brought home). ``sb3_rmdp/Preference-v0`` draws one
preference ``w_i`` per agent from a Dirichlet over these objectives and gives agent i the reward
``w_i . r_vec``: some agents care about safety, some about gold, some about gems. With k policies, EM
groups the agents whose preferences one policy can serve.

    python examples/preference_population.py                    # 50 agents, k=3, 200,000 steps
    python examples/preference_population.py --mo-env mo-halfcheetah-v5 --timesteps 1000000

Writes ``<out>/assignment.png``: the agents' preferences (weight on death, weight on gold), coloured by
representative.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th

import sb3_rmdp  # noqa: F401  (registers sb3_rmdp/Preference-v0)
from sb3_rmdp import RMDPPPO, EMAssigner
from sb3_rmdp.plotting import plot_assignment
from sb3_rmdp.welfare import agent_welfare, evaluate_agent_returns, utilitarian_welfare

ENV_ID = "sb3_rmdp/Preference-v0"
# MO-Gymnasium declares its reward spaces in float64; gymnasium casts them to float32 and warns.
warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32.*")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mo-env", default="resource-gathering-v0", help="any MO-Gymnasium env id")
    parser.add_argument("--n-agents", type=int, default=50)
    parser.add_argument("--k", type=int, default=3, help="policy budget: number of representatives")
    parser.add_argument("--timesteps", type=int, default=200_000, help="env steps, all representatives")
    parser.add_argument("--n-steps", type=int, default=512, help="PPO rollout length per env slot")
    parser.add_argument("--eval-episodes", type=int, default=10, help="per representative (random enemies)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and of the preferences")
    parser.add_argument("--out", type=Path, default=Path("runs/preference_population"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    # The population's keyword arguments: the same seed draws the same preferences in every env built.
    env_kwargs = {"mo_env": args.mo_env, "n_agents": args.n_agents, "seed": args.seed}
    model = RMDPPPO(
        "MlpPolicy",
        ENV_ID,
        k=args.k,
        env_kwargs=env_kwargs,
        assigner=EMAssigner(mixing=0.05, warm_start_updates=10),
        n_steps=args.n_steps,
        batch_size=min(256, args.n_steps * args.k),
        ent_coef=0.01,
        seed=args.seed,
    )
    preferences = model.agent_params  # (n_agents, n_objectives): each agent's weights, rows sum to 1
    print(f"{args.n_agents} agents over {args.mo_env} ({preferences.shape[1]} objectives), k={args.k}")
    model.learn(args.timesteps)

    table = evaluate_agent_returns(model, gym.make(ENV_ID, **env_kwargs), n_episodes=args.eval_episodes)
    assignment = model.assignment()
    per_agent = agent_welfare(table, assignment)
    for j in range(args.k):
        agents = np.flatnonzero(assignment == j)
        if len(agents) == 0:
            print(f"  representative {j}: no agents")
            continue
        mean_preference = ", ".join(f"{w:.2f}" for w in preferences[agents].mean(axis=0))
        print(
            f"  representative {j}: {len(agents):3d} agents, mean preference ({mean_preference}), "
            f"mean return {per_agent[agents].mean():.3f}"
        )
    print(f"welfare (deployed assignment): {utilitarian_welfare(table, assignment):.3f}")
    # For comparison: every agent served by the single representative that is best on average.
    print(f"best single representative for everyone: {table.mean(axis=0).max():.3f}")

    fig = plot_assignment(assignment, args.k, preferences, title=f"{args.mo_env}: preferences, k={args.k}")
    fig.axes[0].set_xlabel("weight on objective 0")
    fig.axes[0].set_ylabel("weight on objective 1")
    fig.savefig(args.out / "assignment.png", dpi=120)
    print(f"saved {args.out / 'assignment.png'}")


if __name__ == "__main__":
    main()
