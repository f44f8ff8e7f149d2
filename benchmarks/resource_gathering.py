"""Resource Gathering, welfare vs k: EM, end-to-end, K-means and random (the paper's Figures 1 and 2).

Every cell (algorithm, k, seed) trains ``RMDPPPO`` with the tuned Resource Gathering settings
(``sb3_rmdp.hyperparams``) for ``budget_per_representative x k`` env steps, then evaluates every
representative in real episodes (the env is deterministic, so one deterministic episode each is
exact) and scores the **deployed** hard assignment. ``welfare_train`` is what the paper plotted:
the training (stochastic) returns of the last rollout under the assignment weights (soft for
end-to-end). Cells run in parallel worker processes, one torch thread each.

    python benchmarks/resource_gathering.py --budget-per-representative 50000 --seeds 0 1 2 --n-jobs 2

Writes ``benchmarks/results/resource_gathering.{csv,json,png}`` and ``resource_gathering_paths.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    check_mergeable,
    mean_se,
    merged_meta,
    read_run,
    result_path,
    run_header,
    save_welfare_vs_k,
    write_csv,
)
from throughput import machine, versions

RESULTS = Path(__file__).resolve().parent / "results"
ENV_ID = "sb3_rmdp/ResourceGathering-v0"
ALGORITHMS = ("em", "end_to_end", "kmeans", "random")
PATH_KS = (1, 2, 3, 5)
#: The end-to-end logits' Adam learning rate here. The paper's 2e-3 (``EndToEndAssigner``'s default)
#: came with 1M transitions per policy and 320 logit steps per update: about 160,000 steps. At 50,000
#: transitions per policy (98 updates of 20 k minibatches) the logits take about 6,000 steps at k = 3,
#: and with 2e-3 the deployed argmax hardly leaves its random start (7 of 25 agents move in a run). 1e-2 was
#: chosen by a sweep over {2e-3, 1e-2, 3e-2} at k = 3 and 10, seeds 0-2 (docs/benchmarks.md).
END_TO_END_LR = 1e-2
#: the normalization statistics the logits' gradient flows through (``EndToEndAssigner``'s default;
#: rows written before the ``end_to_end_gradient_statistics`` column used it)
END_TO_END_GRADIENT_STATISTICS = "mean"
#: end-to-end's deployed assignment (``EndToEndAssigner``'s default; rows written before the
#: ``end_to_end_deploy`` column deployed it)
END_TO_END_DEPLOY = "argmax"


def make_assigner(
    algorithm: str,
    seed: int,
    end_to_end_lr: float = END_TO_END_LR,
    end_to_end_gradient_statistics: str = END_TO_END_GRADIENT_STATISTICS,
    end_to_end_deploy: str = END_TO_END_DEPLOY,
) -> Any:
    from sb3_rmdp.assigners import EMAssigner, EndToEndAssigner, KMeansAssigner, RandomAssigner
    from sb3_rmdp.hyperparams import HYPERPARAMS

    if algorithm == "em":
        return EMAssigner(**HYPERPARAMS[ENV_ID]["assigner_kwargs"])
    if algorithm == "end_to_end":
        return EndToEndAssigner(
            lr=end_to_end_lr,
            gradient_statistics=end_to_end_gradient_statistics,
            deploy=end_to_end_deploy,
            seed=seed,
        )
    if algorithm == "kmeans":
        return KMeansAssigner(pretrain_fraction=0.5, n_samples=10_000, seed=seed)
    if algorithm == "random":
        return RandomAssigner(seed=seed)
    raise ValueError(f"unknown algorithm {algorithm!r}; choose from {ALGORITHMS}")


def run_cell(
    algorithm: str,
    k: int,
    seed: int,
    budget_per_representative: int,
    end_to_end_lr: float = END_TO_END_LR,
    end_to_end_gradient_statistics: str = END_TO_END_GRADIENT_STATISTICS,
    end_to_end_deploy: str = END_TO_END_DEPLOY,
) -> dict[str, Any]:
    """Train and evaluate one (algorithm, k, seed) cell; returns its CSV row (and paths)."""
    import gymnasium as gym
    import torch as th

    th.set_num_threads(1)
    from sb3_rmdp import RMDPPPO
    from sb3_rmdp.envs.resource_gathering import optimal_welfare
    from sb3_rmdp.hyperparams import hyperparams_for
    from sb3_rmdp.plotting import representative_paths
    from sb3_rmdp.welfare import best_assignment, evaluate_agent_returns, utilitarian_welfare

    params = hyperparams_for(ENV_ID)
    params["assigner"] = make_assigner(
        algorithm, seed, end_to_end_lr, end_to_end_gradient_statistics, end_to_end_deploy
    )
    reward_scale = params["env_kwargs"]["reward_scale"]
    start = time.perf_counter()
    model = RMDPPPO("MlpPolicy", ENV_ID, k=k, seed=seed, **params)
    model.learn(budget_per_representative * k)
    wall = time.perf_counter() - start

    table = evaluate_agent_returns(model, gym.make(ENV_ID), n_episodes=1)
    with th.no_grad():
        weights = model.assigner.weights().cpu().numpy()
    train_table = model.training_returns / reward_scale
    return {
        "algorithm": algorithm,
        "k": k,
        "n_agents": model.n_agents,
        "seed": seed,
        "budget_per_representative": budget_per_representative,
        "end_to_end_lr": end_to_end_lr if algorithm == "end_to_end" else "",
        "end_to_end_gradient_statistics": end_to_end_gradient_statistics if algorithm == "end_to_end" else "",
        "end_to_end_deploy": end_to_end_deploy if algorithm == "end_to_end" else "",
        "welfare_eval": round(utilitarian_welfare(table, model.assignment()), 4),
        "welfare_train": round(utilitarian_welfare(train_table, weights), 4),
        "welfare_eval_reassigned": round(utilitarian_welfare(table, best_assignment(table)), 4),
        # the same training run deployed by the argmax of its logits, whatever its `end_to_end_deploy`
        "welfare_eval_argmax": (
            round(utilitarian_welfare(table, weights.argmax(axis=1)), 4) if algorithm == "end_to_end" else ""
        ),
        "optimal_welfare": round(optimal_welfare(k), 4),
        "wall_s": round(wall, 1),
        "assignment": " ".join(map(str, model.assignment())),
        "_paths": [p.tolist() for p in representative_paths(model, gym.make(ENV_ID))],
    }


def plot_welfare(rows: list[dict[str, Any]], path: Path) -> None:
    """Figure 2: welfare against k per algorithm (mean and s.e.), the exact optimum dashed."""
    budgets = sorted({int(r["budget_per_representative"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    title = f"Resource Gathering, n=25: {budgets} steps per representative, seeds {seeds}"
    save_welfare_vs_k(rows, title, path)


def plot_paths(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sb3_rmdp.plotting import plot_grid_paths

    chosen = [
        r
        for r in rows
        if r["algorithm"] == "em" and r["k"] in PATH_KS and r["seed"] == min(x["seed"] for x in rows)
    ]
    chosen.sort(key=lambda r: r["k"])
    if not chosen:
        return
    fig, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 4.6))
    for ax, row in zip(np.atleast_1d(axes), chosen):
        paths = [np.asarray(p) for p in row["_paths"]]
        assignment = np.array(row["assignment"].split(), dtype=int)
        plot_grid_paths(
            paths, assignment, ax=ax, title=f"EM, k={row['k']}: welfare {row['welfare_eval']:.2f}"
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, standard error and count of ``welfare_eval`` per (algorithm, k)."""
    summary = {}
    for algorithm in ALGORITHMS:
        for k in sorted({int(r["k"]) for r in rows}):
            values = [
                float(r["welfare_eval"]) for r in rows if r["algorithm"] == algorithm and int(r["k"]) == k
            ]
            if values:
                mean, se = mean_se(values)
                summary[f"{algorithm}/k={k}"] = {"mean": round(mean, 3), "se": round(se, 3), "n": len(values)}
    return summary


def merge(sources: list[Path], out: Path) -> None:
    """Combine the CSVs of several runs (e.g. one per algorithm, or more seeds) into one result set.

    The JSON lists every source run's own sidecar (command, date, machine, wall time); the paths figure
    is the first EM run's, copied.

    :raises ValueError: if the runs are of different budgets or end-to-end learning rates, or share an
        (algorithm, k, seed) cell.
    """
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    runs = []
    paths_copied = False  # the first EM run's paths figure
    for source in sources:
        source_rows, sidecar = read_run(source)
        rows += source_rows
        runs.append(sidecar)
        paths_png = source.parent / f"{source.name}_paths.png"
        if any(r["algorithm"] == "em" for r in source_rows) and paths_png.exists() and not paths_copied:
            shutil.copyfile(paths_png, out.parent / f"{out.name}_paths.png")
            paths_copied = True
    # At k=1 every assigner trains the same single policy (bit for bit: tests/test_assigners.py), so an
    # algorithm run without k=1 for a seed it ran shares EM's k=1 row of that seed, marked in `shared_with`.
    for row in rows:
        row.setdefault("shared_with", "")
        row.setdefault("end_to_end_lr", "")
        if row["algorithm"] == "end_to_end" and not row["shared_with"]:
            # written before the columns existed
            row.setdefault("end_to_end_gradient_statistics", END_TO_END_GRADIENT_STATISTICS)
            row.setdefault("end_to_end_deploy", END_TO_END_DEPLOY)
            if row["end_to_end_deploy"] == "argmax" and row.get("welfare_eval_argmax") in (None, ""):
                row["welfare_eval_argmax"] = row["welfare_eval"]
        for column in ("end_to_end_gradient_statistics", "end_to_end_deploy", "welfare_eval_argmax"):
            row.setdefault(column, "")
    same = (
        "budget_per_representative",
        "end_to_end_lr",
        "end_to_end_gradient_statistics",
        "end_to_end_deploy",
    )
    check_mergeable(rows, cell=("algorithm", "k", "seed"), same=same)
    em_k1 = {r["seed"]: r for r in rows if r["algorithm"] == "em" and r["k"] == 1}
    for algorithm in sorted({r["algorithm"] for r in rows} - {"em"}):
        seeds = {r["seed"] for r in rows if r["algorithm"] == algorithm}
        have_k1 = {r["seed"] for r in rows if r["algorithm"] == algorithm and r["k"] == 1}
        for seed in sorted((seeds - have_k1) & set(em_k1)):
            rows.append({**em_k1[seed], "algorithm": algorithm, "shared_with": "em"})
    rows.sort(key=lambda r: (ALGORITHMS.index(r["algorithm"]), r["k"], r["seed"]))
    write_csv(rows, result_path(out, ".csv"))
    meta = {**merged_meta(runs), "summary_welfare_eval": summarize(rows)}
    with open(result_path(out, ".json"), "w") as f:
        json.dump(meta, f, indent=2)
    plot_welfare(rows, result_path(out, ".png"))
    print(json.dumps(meta["summary_welfare_eval"], indent=1))


def main() -> None:
    from sb3_rmdp.assigners.end_to_end import DEPLOY, GRADIENT_STATISTICS  # lazily: --merge needs no torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ks", type=int, nargs="*", default=[1, 2, 3, 5, 10, 25])
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument(
        "--budget-per-representative", type=int, default=50_000, help="env steps per representative"
    )
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    parser.add_argument(
        "--end-to-end-lr", type=float, default=END_TO_END_LR, help="Adam learning rate of end-to-end's logits"
    )
    parser.add_argument(
        "--end-to-end-gradient-statistics",
        choices=GRADIENT_STATISTICS,
        default=END_TO_END_GRADIENT_STATISTICS,
        help="the normalization statistics end-to-end's logits' gradient flows through "
        "(sb3_rmdp.ppo.normalize_per_representative)",
    )
    parser.add_argument(
        "--end-to-end-deploy",
        choices=DEPLOY,
        default=END_TO_END_DEPLOY,
        help="end-to-end's deployed assignment: the logits' argmax or each agent's best representative on "
        "the latest training returns (EndToEndAssigner(deploy=...))",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "resource_gathering")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="instead of training, combine earlier runs (their --out paths, without suffix) into --out",
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return

    cells = [(a, k, s) for k in args.ks for a in args.algorithms for s in args.seeds]
    # Biggest cells first, so the pool does not end on one long straggler.
    cells.sort(key=lambda c: -c[1])
    started = time.time()
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.n_jobs) as pool:
        futures = {
            pool.submit(
                run_cell,
                a,
                k,
                s,
                args.budget_per_representative,
                args.end_to_end_lr,
                args.end_to_end_gradient_statistics,
                args.end_to_end_deploy,
            ): (a, k, s)
            for a, k, s in cells
        }
        for done, future in enumerate(as_completed(futures), 1):
            row = future.result()
            rows.append(row)
            print(
                f"[{done}/{len(cells)}] {row['algorithm']:>10} k={row['k']:>2} seed={row['seed']}: "
                f"eval {row['welfare_eval']:.2f} train {row['welfare_train']:.2f} "
                f"(optimum {row['optimal_welfare']:.2f}) {row['wall_s']:.0f}s",
                flush=True,
            )
    rows.sort(key=lambda r: (ALGORITHMS.index(r["algorithm"]), r["k"], r["seed"]))

    write_csv(rows, result_path(args.out, ".csv"))
    meta = {
        **run_header(),
        "machine": machine(),
        "versions": versions(),
        "seeds": args.seeds,
        "budget_per_representative": args.budget_per_representative,
        "end_to_end_lr": args.end_to_end_lr if "end_to_end" in args.algorithms else None,
        "end_to_end_gradient_statistics": (
            args.end_to_end_gradient_statistics if "end_to_end" in args.algorithms else None
        ),
        "end_to_end_deploy": args.end_to_end_deploy if "end_to_end" in args.algorithms else None,
        "n_jobs": args.n_jobs,
        "torch_threads_per_worker": 1,
        "wall_s": round(time.time() - started, 1),
        "summary_welfare_eval": summarize(rows),
    }
    with open(result_path(args.out, ".json"), "w") as f:
        json.dump(meta, f, indent=2)
    plot_welfare(rows, result_path(args.out, ".png"))
    plot_paths(rows, args.out.parent / f"{args.out.name}_paths.png")
    print(json.dumps(meta["summary_welfare_eval"], indent=1))


if __name__ == "__main__":
    main()
