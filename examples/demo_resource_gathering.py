"""Demo: k=3 representatives serve the 25 agents of Resource Gathering (EM assignment).

Run with ``make demo``. Trains with a progress bar, evaluates every representative in real episodes,
prints who serves whom and the welfare next to the exact optimum, and saves the paths to demo_output/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import numpy as np
import torch as th
from rich.console import Console
from rich.table import Table

from sb3_rmdp import RMDPPPO
from sb3_rmdp.envs.resource_gathering import optimal_welfare
from sb3_rmdp.hyperparams import hyperparams_for
from sb3_rmdp.plotting import plot_grid_paths, representative_paths
from sb3_rmdp.welfare import agent_welfare, evaluate_agent_returns, utilitarian_welfare

ENV_ID = "sb3_rmdp/ResourceGathering-v0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=3, help="policy budget (representatives)")
    parser.add_argument(
        "--timesteps", type=int, default=300_000, help="env steps, all representatives together"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    args = parser.parse_args()
    th.set_num_threads(1)  # see README, "Threads"
    console = Console()

    console.print(
        f"[bold]Training k={args.k} representatives for the 25 agents of {ENV_ID}[/] "
        f"({args.timesteps:,} steps)"
    )
    start = time.time()
    model = RMDPPPO("MlpPolicy", ENV_ID, k=args.k, seed=args.seed, **hyperparams_for(ENV_ID))
    model.learn(args.timesteps, progress_bar=True)
    wall = time.time() - start

    # Evaluate in the welfare units of the paper (reward_scale 1): the env is deterministic, so one
    # episode per representative is exact.
    table = evaluate_agent_returns(model, gym.make(ENV_ID), n_episodes=1)
    assignment = model.assignment()
    per_agent = agent_welfare(table, assignment)

    result = Table(title=f"Resource Gathering, k={args.k}, EM, seed {args.seed}")
    result.add_column("representative", justify="right")
    result.add_column("agents served (cells row,col)")
    result.add_column("their mean return", justify="right")
    for j in range(args.k):
        agents = np.flatnonzero(assignment == j)
        cells = " ".join(f"{a // 5},{a % 5}" for a in agents)
        mean = f"{per_agent[agents].mean():.2f}" if len(agents) else "-"
        result.add_row(str(j), cells, mean)
    console.print(result)
    welfare = utilitarian_welfare(table, assignment)
    optimum = optimal_welfare(args.k)
    console.print(
        f"Welfare (deployed assignment, evaluation episodes): [bold]{welfare:.2f}[/]  |  "
        f"exact optimum for k={args.k}: {optimum:.2f}  |  "
        f"best single policy (k=1): {optimal_welfare(1):.2f}  |  "
        f"trained in {wall:.0f} s"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    paths = representative_paths(model, gym.make(ENV_ID))
    fig = plot_grid_paths(
        paths, assignment, title=f"k={args.k}: welfare {welfare:.2f} (optimum {optimum:.2f})"
    )
    fig.savefig(args.out / "paths.png", dpi=120, bbox_inches="tight")
    console.print(f"Paths of the representatives saved to {args.out / 'paths.png'}")


if __name__ == "__main__":
    main()
