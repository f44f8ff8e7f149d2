"""Save, load and resume: a resumed run trains bit for bit like one that was never stopped.

``RMDPPPO.save`` writes SB3's zip with everything training needs: the policy and its optimizer, the
assigner with its whole state (EM's Q-table and counters here), the rollout state and the global random
states. The envs are not in the zip (SB3 never saves them), so keep them as they are at the save
(pickle ``model.get_env()``, VecNormalize statistics included) and load with ``force_reset=False``.
Then ``learn(N); save; load; learn(N, reset_num_timesteps=False)`` equals
``learn(N); learn(N, reset_num_timesteps=False)`` exactly. (With SB3's default ``force_reset=True`` the
envs are reset and the episodes in progress are dropped: training goes on correctly, not bit for bit.)

    python examples/save_resume.py                       # 2 x 30,720 steps, twice
    python examples/save_resume.py --timesteps 100000

Writes ``<out>/checkpoint.zip`` and ``<out>/env.pkl``; exits with status 1 if the runs differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import torch as th

from sb3_rmdp import RMDPPPO
from sb3_rmdp.hyperparams import hyperparams_for

ENV_ID = "sb3_rmdp/ResourceGathering-v0"


def new_model(k: int, seed: int) -> RMDPPPO:
    return RMDPPPO("MlpPolicy", ENV_ID, k=k, seed=seed, **hyperparams_for(ENV_ID))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=3, help="policy budget: number of representatives")
    parser.add_argument("--timesteps", type=int, default=30_720, help="env steps before and after the save")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/save_resume"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.timesteps

    # The reference: one model, two learn calls, never saved.
    uninterrupted = new_model(args.k, args.seed).learn(n)
    uninterrupted.learn(n, reset_num_timesteps=False)

    # The same run, interrupted: learn, save the model and the env as they are, and drop both.
    model = new_model(args.k, args.seed).learn(n)
    model.save(args.out / "checkpoint.zip")
    with open(args.out / "env.pkl", "wb") as file:
        cloudpickle.dump(model.get_env(), file)
    del model

    # Later, maybe in another process: load both and go on. reset_num_timesteps=False continues the step
    # count (and the TensorBoard curves) instead of starting again from 0.
    with open(args.out / "env.pkl", "rb") as file:
        env = cloudpickle.load(file)
    resumed = RMDPPPO.load(args.out / "checkpoint.zip", env=env, force_reset=False)
    resumed.learn(n, reset_num_timesteps=False)

    expected, got = uninterrupted.policy.state_dict(), resumed.policy.state_dict()
    same_parameters = all(th.equal(expected[name], got[name]) for name in expected)
    same_q_table = np.array_equal(uninterrupted.assigner.q_table, resumed.assigner.q_table)
    same_assignment = np.array_equal(uninterrupted.assignment(), resumed.assignment())
    print(f"steps: uninterrupted {uninterrupted.num_timesteps}, resumed {resumed.num_timesteps}")
    print(f"E-steps: uninterrupted {uninterrupted.assigner.n_e_steps}, resumed {resumed.assigner.n_e_steps}")
    print(f"identical policy parameters: {same_parameters}")
    print(f"identical EM Q-table: {same_q_table}")
    print(f"identical assignment: {same_assignment}")
    if not (same_parameters and same_q_table and same_assignment):
        sys.exit(1)


if __name__ == "__main__":
    main()
