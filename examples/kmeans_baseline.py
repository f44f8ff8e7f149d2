"""Baselines at equal budget: EM against K-means clustering and a random assignment.

Three models train on Resource Gathering with the same PPO settings, seed and number of env steps;
only the assigner differs:

- ``EMAssigner``: learns the assignment for the welfare (E-steps on the agents' returns);
- ``KMeansAssigner``: trains one universal objective for the first half of the budget, clusters the
  agents by their rewards under it with scikit-learn's KMeans, then specializes on that fixed
  assignment (the paper's clustering baseline);
- ``RandomAssigner``: a random even split, fixed from the start.

    python examples/kmeans_baseline.py                      # k=3, 150,000 steps per model
    python examples/kmeans_baseline.py --k 5 --timesteps 250000

Writes ``<out>/comparison.csv`` (one row per assigner) and ``<out>/comparison.png``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import gymnasium as gym
import torch as th
from matplotlib.figure import Figure

from sb3_rmdp import RMDPPPO, EMAssigner, KMeansAssigner, RandomAssigner
from sb3_rmdp.envs.resource_gathering import optimal_welfare
from sb3_rmdp.hyperparams import hyperparams_for
from sb3_rmdp.welfare import egalitarian_welfare, evaluate_agent_returns, utilitarian_welfare

ENV_ID = "sb3_rmdp/ResourceGathering-v0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=3, help="policy budget: number of representatives")
    parser.add_argument("--timesteps", type=int, default=150_000, help="env steps per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/kmeans_baseline"))
    args = parser.parse_args()
    th.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    assigners = {
        "em": EMAssigner(mixing=0.05, warm_start_updates=10),
        # The agents are described by their rewards over the last n_samples steps of the universal phase.
        "kmeans": KMeansAssigner(pretrain_fraction=0.5, n_samples=10_000, seed=args.seed),
        "random": RandomAssigner(seed=args.seed),
    }
    rows = []
    for name, assigner in assigners.items():
        # Same tuned PPO settings for everyone; only the assigner changes.
        hyperparams = {**hyperparams_for(ENV_ID), "assigner": assigner}
        model = RMDPPPO("MlpPolicy", ENV_ID, k=args.k, seed=args.seed, **hyperparams)
        model.learn(args.timesteps)
        table = evaluate_agent_returns(model, gym.make(ENV_ID), n_episodes=1)  # deterministic env: exact
        assignment = model.assignment()
        rows.append(
            {
                "assigner": name,
                "k": args.k,
                "timesteps": args.timesteps,
                "welfare": round(utilitarian_welfare(table, assignment), 2),
                "egalitarian": round(egalitarian_welfare(table, assignment), 2),
                "optimal_welfare": optimal_welfare(args.k),
                "assignment": " ".join(map(str, assignment)),
            }
        )
        print(f"{name:>7}: welfare {rows[-1]['welfare']:6.2f}, egalitarian {rows[-1]['egalitarian']:6.2f}")
    print(f"exact optimum for k={args.k}: {optimal_welfare(args.k):.2f}")

    with open(args.out / "comparison.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.bar([row["assigner"] for row in rows], [row["welfare"] for row in rows], color="tab:blue")
    ax.axhline(optimal_welfare(args.k), color="k", linestyle="--", label=f"optimum, k={args.k}")
    ax.set_ylabel("welfare (deployed assignment)")
    ax.set_title(f"Resource Gathering, k={args.k}, {args.timesteps:,} steps each", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(args.out / "comparison.png", dpi=120)
    print(f"saved {args.out / 'comparison.csv'} and {args.out / 'comparison.png'}")


if __name__ == "__main__":
    main()
