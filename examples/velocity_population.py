"""A velocity population: 100 agents want HalfCheetah to run at 100 different speeds; k=5 policies.

Agent i's target speed is ``v_i ~ U[0, 4]``; per step it gets ``0.1 * max(0, 1 - |v - v_i| / 0.2)``, so
tracking its target for an episode's 1000 steps is worth 100. A representative runs at one speed at a
time, so no k policies can do better than the best placement of k speeds over the targets:
``welfare_upper_bound`` computes it exactly, and the learned welfare is read against it.

The set-up is the benchmark's (``sb3_rmdp.experiments.velocity``): observations normalized by SB3's
``VecNormalize`` (rewards left alone: they are the agents' own), two 64-unit tanh layers, a learning
rate decaying from 3e-4 to 1e-4, EM assignment.

    python examples/velocity_population.py                       # 100,000 steps per representative: ~10 min
    python examples/velocity_population.py --timesteps 10000000  # the paper: 2M per representative

Writes ``<out>/assignment.png`` (the targets, stacked by representative), ``<out>/model.zip`` and
``<out>/vec_normalize.pkl`` (the observation statistics, needed to run the model again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch as th
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecNormalize

from sb3_rmdp import RMDPPPO, EMAssigner
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.envs.velocity import TARGET_RANGES, welfare_upper_bound
from sb3_rmdp.plotting import plot_assignment
from sb3_rmdp.welfare import evaluate_agent_returns, utilitarian_welfare

ENV_ID = "sb3_rmdp/HalfCheetahVelocity-v0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=5, help="policy budget: number of representatives")
    parser.add_argument("--n-agents", type=int, default=100)
    parser.add_argument("--timesteps", type=int, default=500_000, help="env steps, all representatives")
    parser.add_argument("--n-steps", type=int, default=2048, help="PPO rollout length per env slot")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and of the targets")
    parser.add_argument("--out", type=Path, default=Path("runs/velocity_population"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    b = TARGET_RANGES["HalfCheetah-v5"]  # targets in [0, 4]
    env_kwargs = {"n_agents": args.n_agents, "seed": args.seed}  # the targets are drawn from this seed

    # One env slot per representative; VecNormalize(norm_reward=False) normalizes what the policies see
    # and leaves the per-agent rewards (in info["agent_rewards"]) untouched.
    train_env = VecNormalize(
        make_rmdp_vec_env(ENV_ID, n_envs=args.k, seed=args.seed, env_kwargs=env_kwargs),
        norm_obs=True,
        norm_reward=False,
    )
    model = RMDPPPO(
        "MlpPolicy",
        train_env,
        k=args.k,
        assigner=EMAssigner(mixing=0.05, warm_start_updates=10),
        n_steps=args.n_steps,
        batch_size=64,
        n_epochs=10,
        gamma=0.99,
        gae_lambda=0.95,
        ent_coef=1e-3,
        learning_rate=LinearSchedule(3e-4, 1e-4, 1.0),
        policy_kwargs={"net_arch": [64, 64], "activation_fn": th.nn.Tanh},
        seed=args.seed,
    )
    print(f"Training k={args.k} representatives for {model.n_agents} agents, {args.timesteps:,} env steps")
    model.learn(args.timesteps)

    # Evaluate on a fresh env with the training statistics, frozen (training=False).
    eval_env = VecNormalize(
        make_rmdp_vec_env(ENV_ID, n_envs=1, seed=10_000 + args.seed, env_kwargs=env_kwargs),
        training=False,
        norm_obs=True,
        norm_reward=False,
    )
    eval_env.obs_rms = train_env.obs_rms
    table = evaluate_agent_returns(model, eval_env, n_episodes=1)  # (n_agents, k)
    assignment = model.assignment()
    targets = model.agent_params[:, 0]  # (n_agents,) the target speeds
    welfare = utilitarian_welfare(table, assignment)
    bound = welfare_upper_bound(targets, args.k, b)
    for j in range(args.k):
        served = targets[assignment == j]
        if len(served):
            span = f"{served.min():.2f}..{served.max():.2f}"
            print(f"  representative {j}: {len(served):3d} agents, targets {span}")
        else:
            print(f"  representative {j}:   0 agents")
    print(f"welfare (deployed assignment): {welfare:.2f}")
    print(f"upper bound for k={args.k} (best k constant speeds): {bound:.2f}, reached {welfare / bound:.0%}")

    fig = plot_assignment(assignment, args.k, targets, title=f"HalfCheetah velocity, k={args.k}: targets")
    fig.axes[0].set_xlabel("target speed")
    fig.savefig(args.out / "assignment.png", dpi=120)
    model.save(args.out / "model.zip")
    train_env.save(str(args.out / "vec_normalize.pkl"))
    print(
        f"saved {args.out / 'assignment.png'}, {args.out / 'model.zip'} and {args.out / 'vec_normalize.pkl'}"
    )


if __name__ == "__main__":
    main()
