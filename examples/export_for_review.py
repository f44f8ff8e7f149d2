"""Export one representative for review: a plain SB3 policy file and a dossier of the agents it serves.

Deploying k policies means having each of them reviewed. An assessor gets one representative at a
time, as a file that stock Stable-Baselines3 opens (``stable_baselines3.PPO.load``, no sb3_rmdp
needed), and a dossier: which agents it serves, what each of them gets from it and from its best
alternative, and the welfare of the deployed assignment, all from real evaluation episodes.

    python examples/export_for_review.py                         # train k=3 on Resource Gathering, export 0
    python examples/export_for_review.py --representative 2

Writes ``<out>/representative_<j>.zip`` (the policy), ``<out>/representative_<j>.json`` and ``.md``
(the dossier) and ``<out>/model.zip`` (the whole model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import PPO

from sb3_rmdp import RMDPPPO, export_representative, review_dossier
from sb3_rmdp.hyperparams import hyperparams_for

ENV_ID = "sb3_rmdp/ResourceGathering-v0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=3, help="policy budget: number of representatives")
    parser.add_argument("--timesteps", type=int, default=150_000, help="env steps, all representatives")
    parser.add_argument("--representative", type=int, default=0, help="the representative to export")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/export_for_review"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    j = args.representative

    model = RMDPPPO("MlpPolicy", ENV_ID, k=args.k, seed=args.seed, **hyperparams_for(ENV_ID))
    model.learn(args.timesteps)
    model.save(args.out / "model.zip")

    # The policy file: SB3's PPO with a stock ActorCriticPolicy holding representative j's weights.
    # Its value head predicts the mean value of the agents j serves.
    policy_path = export_representative(model, j, args.out / f"representative_{j}.zip")
    # The dossier, evaluated in the paper's units (reward_scale=1): <path>.json and <path>.md.
    dossier = review_dossier(model, j, gym.make(ENV_ID), args.out / f"representative_{j}", n_episodes=1)
    print((args.out / f"representative_{j}.md").read_text())
    print(f"representative {j} serves agents {[row['agent'] for row in dossier['agents']]}")

    # What the assessor does, with Stable-Baselines3 alone. (Observation normalization, when training
    # used VecNormalize, is not in the file: ship the VecNormalize statistics next to it.)
    reviewed = PPO.load(policy_path, device="cpu")
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=args.seed)
    done, steps, same = False, 0, True
    while not done:
        action, _ = reviewed.predict(obs, deterministic=True)
        expected, _ = model.predict(obs, deterministic=True, representative=j)
        same &= bool(np.array_equal(action, expected))
        obs, rewards, terminated, truncated, _ = env.step(action)
        done, steps = terminated or truncated, steps + 1
    print(
        f"PPO.load({policy_path.name}) played a {steps}-step episode; its served agents got "
        f"{rewards[[row['agent'] for row in dossier['agents']]].tolist()} at the end"
    )
    print(f"actions identical to model.predict(obs, representative={j}): {same}")
    print(f"saved {policy_path}, {args.out / f'representative_{j}.json'} and .md, {args.out / 'model.zip'}")


if __name__ == "__main__":
    main()
