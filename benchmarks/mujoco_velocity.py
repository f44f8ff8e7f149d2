"""MuJoCo velocity populations, welfare vs k: EM, end-to-end, K-means, random and oracle (paper Figs 3-5).

Every cell (env, algorithm, k, seed) draws a population of ``n_agents`` target velocities from
``seed``, trains ``RMDPPPO`` for ``budget_per_representative x k`` env steps (the reference code's PPO
settings: two 64-unit tanh layers, 10 epochs, lr 3e-4 -> 1e-4, observations normalized with SB3's
``VecNormalize``; but 1024 steps per slot and update and minibatches of 256, see :func:`ppo_kwargs`),
then runs real deterministic
evaluation episodes of every representative and scores the **deployed** hard assignment.
``welfare_train`` is the paper's measure: the last rollouts' training returns under the assignment
weights. ``upper_bound`` is :func:`sb3_rmdp.envs.velocity.welfare_upper_bound` for the cell's
targets, and ``fraction_of_bound`` their ratio.

At k = 1 every assigner gives the one representative every agent (tested in
``tests/test_assigners.py``: their parameters are bit-identical), so with ``--share-k1`` (default)
the k = 1 cell is trained once per seed and its row is reported for every algorithm, marked in the
``shared_with`` column.

EM revives idle representatives by default (``EMAssigner(revive_idle=True)``, recorded in the
``em_e_step`` column); the runs committed before that option used the plain greedy E-step: add
``--no-revive-idle`` to reproduce their EM rows. End-to-end's logits take the paper's settings
unless ``--end-to-end-lr``, ``--end-to-end-init-scale``, ``--end-to-end-gradient-statistics``,
``--end-to-end-deploy`` or ``--end-to-end-mixing`` say otherwise (recorded in the ``end_to_end_*`` columns;
``--merge`` never pools different settings). End-to-end rows also score the argmax of the logits
(``welfare_eval_argmax``), whichever assignment they deploy, and the best response to the latest
rollout's training returns (``welfare_eval_best_response_latest``: ``--end-to-end-deploy best_response``
with the default ``--end-to-end-mixing 1``).

What fits 2 cores in a session (the first committed results: two runs, merged)::

    python benchmarks/mujoco_velocity.py --envs HalfCheetah --ks 1 2 5 --seeds 0 1 2 \\
        --budget-per-representative 100000 --n-jobs 2 --out-dir RUN1
    python benchmarks/mujoco_velocity.py --envs HalfCheetah --ks 5 --seeds 3 4 \\
        --budget-per-representative 100000 --n-jobs 2 --out-dir RUN2
    python benchmarks/mujoco_velocity.py --merge RUN1/mujoco_velocity_HalfCheetah \\
        RUN2/mujoco_velocity_HalfCheetah

The paper's full grid (2M transitions per policy, 10 seeds, four robots, k = 50 with n = 1000), for a
bigger machine::

    python benchmarks/mujoco_velocity.py --envs HalfCheetah Ant Hopper Walker2d --ks 1 2 5 10 \\
        --large --seeds 0 1 2 3 4 5 6 7 8 9 --budget-per-representative 2000000 --n-jobs 64

Writes ``benchmarks/results/mujoco_velocity_<env>.{csv,json,png}`` and ``..._histograms.png``.
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
    read_rows,
    read_run,
    result_path,
    run_header,
    save_welfare_vs_k,
    write_csv,
)
from throughput import machine, versions

RESULTS = Path(__file__).resolve().parent / "results"
ALGORITHMS = ("em", "end_to_end", "kmeans", "random", "oracle")
ENVS = ("HalfCheetah", "Ant", "Hopper", "Walker2d")
HISTOGRAM_K = 5
#: ``em_e_step`` of EM rows: idle representatives revived (the default) or the plain greedy E-step (the
#: runs committed before the option, whose rows have no ``em_e_step`` column).
E_STEP_REVIVE, E_STEP_GREEDY = "revive_idle", "greedy"
#: learning rate and initial scale of the end-to-end logits: the paper's 2e-3 and the reference code's
#: ``randn``; the normalization statistics their gradient flows through: the mean; the deployed assignment:
#: the logits' argmax (the runs committed before the options, whose rows have no such columns, used these);
#: the moving-average coefficient of the returns a best response reads (blank in argmax rows, which never
#: read it; best-response rows without the column: :func:`legacy_mixing`)
PAPER_END_TO_END_LR = 2e-3
PAPER_END_TO_END_INIT_SCALE = 1.0
END_TO_END_DEFAULTS: dict[str, Any] = {
    "end_to_end_lr": PAPER_END_TO_END_LR,
    "end_to_end_init_scale": PAPER_END_TO_END_INIT_SCALE,
    "end_to_end_gradient_statistics": "mean",
    "end_to_end_deploy": "argmax",
    "end_to_end_mixing": 1.0,
}
LEGACY_END_TO_END_MIXING = 0.05


def ppo_kwargs(log_std_init: float = 0.0) -> dict[str, Any]:
    """The reference code's PPO settings in SB3's terms, with shorter rollouts and larger minibatches.

    The reference used 2048 steps per policy and update and minibatches of 64: 0.16 gradient steps per
    env step, which made training 4x the cost of MuJoCo itself on 2 cores. 1024 steps per slot and
    minibatches of 256 give E-steps twice as often and a quarter of the gradient steps (as the Resource
    Gathering settings in ``sb3_rmdp.hyperparams``).
    """
    import torch as th
    from stable_baselines3.common.utils import LinearSchedule

    return {
        "n_steps": 1024,
        "batch_size": 256,
        "n_epochs": 10,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "ent_coef": 1e-3,
        "learning_rate": LinearSchedule(3e-4, 1e-4, 1.0),
        "policy_kwargs": {"net_arch": [64, 64], "activation_fn": th.nn.Tanh, "log_std_init": log_std_init},
    }


def end_to_end_settings(end_to_end: dict[str, Any] | None) -> dict[str, Any]:
    """:data:`END_TO_END_DEFAULTS` with ``end_to_end``'s overrides (keys: the columns)."""
    return {**END_TO_END_DEFAULTS, **(end_to_end or {})}


def recorded_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as an end-to-end row records them: an argmax deployment never reads the returns'
    moving average, so its ``end_to_end_mixing`` is blank and argmax rows pool whatever it was."""
    return {
        **settings,
        "end_to_end_mixing": ""
        if settings["end_to_end_deploy"] == "argmax"
        else settings["end_to_end_mixing"],
    }


def make_assigner(
    algorithm: str,
    seed: int,
    b: float,
    revive_idle: bool = True,
    end_to_end: dict[str, Any] | None = None,
) -> Any:
    """The cell's assigner; ``end_to_end`` overrides :data:`END_TO_END_DEFAULTS` (keys: their columns)."""
    from sb3_rmdp.assigners import (
        EMAssigner,
        EndToEndAssigner,
        KMeansAssigner,
        OracleAssigner,
        RandomAssigner,
    )

    if algorithm == "em":
        return EMAssigner(mixing=0.05, warm_start_updates=10, revive_idle=revive_idle)
    if algorithm == "end_to_end":
        settings = end_to_end_settings(end_to_end)
        return EndToEndAssigner(
            lr=settings["end_to_end_lr"],
            init_scale=settings["end_to_end_init_scale"],
            gradient_statistics=settings["end_to_end_gradient_statistics"],
            deploy=settings["end_to_end_deploy"],
            mixing=settings["end_to_end_mixing"],
            seed=seed,
        )
    if algorithm == "kmeans":
        return KMeansAssigner(pretrain_fraction=0.5, n_samples=10_000, seed=seed)
    if algorithm == "random":
        return RandomAssigner(seed=seed)
    if algorithm == "oracle":
        return OracleAssigner(low=0.0, high=b)
    raise ValueError(f"unknown algorithm {algorithm!r}; choose from {ALGORITHMS}")


def run_cell(
    env_name: str,
    algorithm: str,
    k: int,
    n_agents: int,
    seed: int,
    budget: int,
    log_std_init: float = 0.0,
    revive_idle: bool = True,
    end_to_end: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one cell; returns its CSV row (``end_to_end``: see :func:`make_assigner`)."""
    import numpy as np
    import torch as th
    from stable_baselines3.common.vec_env import VecNormalize

    th.set_num_threads(1)
    from sb3_rmdp import RMDPPPO
    from sb3_rmdp.assigners import best_response
    from sb3_rmdp.envs import make_rmdp_vec_env
    from sb3_rmdp.envs.velocity import TARGET_RANGES, welfare_upper_bound
    from sb3_rmdp.welfare import best_assignment, evaluate_agent_returns, utilitarian_welfare

    env_id = f"sb3_rmdp/{env_name}Velocity-v0"
    b = TARGET_RANGES[f"{env_name}-v5"]
    env_kwargs = {"n_agents": n_agents, "seed": seed}
    start = time.perf_counter()
    train_env = VecNormalize(
        make_rmdp_vec_env(env_id, n_envs=k, seed=seed, env_kwargs=env_kwargs),
        norm_obs=True,
        norm_reward=False,
    )
    settings = end_to_end_settings(end_to_end)
    assigner = make_assigner(algorithm, seed, b, revive_idle, settings)
    model = RMDPPPO("MlpPolicy", train_env, k=k, seed=seed, assigner=assigner, **ppo_kwargs(log_std_init))
    model.learn(budget * k)
    wall = time.perf_counter() - start

    eval_env = VecNormalize(
        make_rmdp_vec_env(env_id, n_envs=1, seed=10_000 + seed, env_kwargs=env_kwargs),
        training=False,
        norm_obs=True,
        norm_reward=False,
    )
    eval_env.obs_rms = train_env.obs_rms
    table = evaluate_agent_returns(model, eval_env, n_episodes=2)
    with th.no_grad():
        weights = model.assigner.weights().cpu().numpy()
    assert model.agent_params is not None, "velocity populations carry their targets"
    targets = model.agent_params.reshape(-1)
    bound = welfare_upper_bound(targets, k, b)
    deployed = model.assignment()
    welfare = utilitarian_welfare(table, deployed)
    return {
        "env": env_name,
        "algorithm": algorithm,
        "k": k,
        "n_agents": n_agents,
        "seed": seed,
        "budget_per_representative": budget,
        "log_std_init": log_std_init,
        "em_e_step": (E_STEP_REVIVE if revive_idle else E_STEP_GREEDY) if algorithm == "em" else "",
        **{c: v if algorithm == "end_to_end" else "" for c, v in recorded_settings(settings).items()},
        "welfare_eval": round(welfare, 4),
        "welfare_train": round(utilitarian_welfare(model.training_returns, weights), 4),
        "welfare_eval_reassigned": round(utilitarian_welfare(table, best_assignment(table)), 4),
        # the same training run deployed by the argmax of its logits, whatever its `end_to_end_deploy`,
        # and by the best response to the latest rollout's returns alone (`EndToEndAssigner(mixing=1)`)
        "welfare_eval_argmax": (
            round(utilitarian_welfare(table, weights.argmax(axis=1)), 4) if algorithm == "end_to_end" else ""
        ),
        "welfare_eval_best_response_latest": (
            round(
                utilitarian_welfare(table, best_response(model.training_returns, weights.argmax(axis=1))), 4
            )
            if algorithm == "end_to_end" and np.all(np.isfinite(model.training_returns))
            else ""
        ),
        "upper_bound": round(bound, 4),
        "fraction_of_bound": round(welfare / bound, 4),
        "wall_s": round(wall, 1),
        "shared_with": "",
        "assignment": " ".join(map(str, deployed)),
        "targets": " ".join(f"{v:.4f}" for v in np.asarray(targets)),
        "returns": " ".join(f"{v:.2f}" for v in table[np.arange(len(deployed)), deployed]),
    }


def shared_row(row: dict[str, Any], algorithm: str) -> dict[str, Any]:
    """``row`` (a k = 1 cell) reported for ``algorithm`` too: the settings of the algorithm that trained
    it are blanked (they were not ``algorithm``'s), so the copy pools with runs of any setting."""
    own = {
        "em": ("em_e_step",),
        "end_to_end": (*END_TO_END_DEFAULTS, "welfare_eval_argmax", "welfare_eval_best_response_latest"),
    }
    blank = {c: "" for a, columns in own.items() if a != algorithm for c in columns if c in row}
    return {**row, **blank, "algorithm": algorithm, "shared_with": row["algorithm"]}


def interval_breaks(targets: Any, assignment: Any) -> int:
    """How far an assignment is from splitting the velocity range into contiguous intervals.

    Agents sorted by target velocity form runs of equal representatives; an interval split has one
    run per representative used. Returns ``runs - representatives used`` (0: contiguous intervals).

    :param targets: ``(n_agents,)`` target velocities.
    :param assignment: ``(n_agents,)`` representative of each agent.
    """
    import numpy as np

    ordered = np.asarray(assignment)[np.argsort(np.asarray(targets), kind="stable")]
    if ordered.size == 0:
        return 0
    runs = 1 + int(np.count_nonzero(ordered[1:] != ordered[:-1]))
    return runs - len(np.unique(ordered))


def interval_welfare_share(targets: Any, assignment: Any, returns: Any) -> float:
    """The fraction of the welfare earned inside each representative's main interval of target velocities.

    Agents sorted by target form runs of equal representatives, among the agents with a positive return
    (the others change no welfare wherever they go). Each representative's *main* run is the one whose
    agents earn it the most; the share is the main runs' returns over all returns: 1 for a split into
    contiguous intervals, and a fragment of agents that earn little hardly lowers it, where
    :func:`interval_breaks` counts it as a whole break.

    :param targets: ``(n_agents,)`` target velocities.
    :param assignment: ``(n_agents,)`` representative of each agent.
    :param returns: ``(n_agents,)`` each agent's return under its representative (non-negative).
    :return: in [0, 1]; 1 when nobody earns anything.
    """
    import numpy as np

    order = np.argsort(np.asarray(targets), kind="stable")
    ordered, earned = np.asarray(assignment)[order], np.asarray(returns, dtype=float)[order]
    ordered, earned = ordered[earned > 0], earned[earned > 0]
    if earned.size == 0:
        return 1.0
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    run_returns = np.add.reduceat(earned, starts)
    main: dict[int, float] = {}
    for representative, run_return in zip(ordered[starts], run_returns):
        main[int(representative)] = max(main.get(int(representative), 0.0), float(run_return))
    return float(sum(main.values()) / earned.sum())


def served_agents(row: dict[str, Any]) -> Any:
    """``(n_agents,)`` bool: the agents whose deployed evaluation return is positive, or ``None`` for rows
    written before the ``returns`` column existed.

    An agent no representative earns anything is indifferent to its assignment (it changes no welfare),
    so where it lands says nothing about the split the algorithm learned.
    """
    import numpy as np

    returns = str(row.get("returns") or "")
    return np.array(returns.split(), dtype=float) > 0 if returns else None


def add_interval_breaks(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``interval_breaks`` from its ``targets`` and ``assignment`` columns, and, for rows
    with a ``returns`` column, ``served_interval_breaks`` (the same over the served agents only) and
    ``interval_welfare_share`` (:func:`interval_welfare_share`)."""
    import numpy as np

    for row in rows:
        targets = np.array(str(row["targets"]).split(), dtype=float)
        assignment = np.array(str(row["assignment"]).split(), dtype=int)
        row["interval_breaks"] = interval_breaks(targets, assignment)
        served = served_agents(row)
        if served is not None:
            row["served"] = int(served.sum())
            row["served_interval_breaks"] = interval_breaks(targets[served], assignment[served])
            returns = np.array(str(row["returns"]).split(), dtype=float)
            row["interval_welfare_share"] = round(interval_welfare_share(targets, assignment, returns), 4)


def rescore(path: Path) -> None:
    """Add the derived columns (``interval_breaks``, ``interval_welfare_share``, ...) to a committed results
    CSV and its JSON summary; redraw its welfare plot and histograms."""
    rows = read_rows(path)
    add_interval_breaks(rows)
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())  # before anything is written: a missing JSON changes nothing
    write_csv(rows, path)
    if "summary_welfare_eval" in meta:
        meta["summary_welfare_eval"] = summarize(rows)
    meta_path.write_text(json.dumps(meta, indent=2))
    plot_welfare(rows, str(rows[0]["env"]), path.with_suffix(".png"))
    plot_histograms(rows, str(rows[0]["env"]), path.parent / f"{path.stem}_histograms.png")


def plot_welfare(rows: list[dict[str, Any]], env_name: str, path: Path) -> None:
    """Figure 3: welfare against k per algorithm (mean and s.e.), the upper bound dashed."""
    budgets = sorted({int(r["budget_per_representative"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    title = f"{env_name} velocity: {budgets} steps per representative, seeds {seeds}"
    save_welfare_vs_k(rows, title, path)


def plot_histograms(rows: list[dict[str, Any]], env_name: str, path: Path) -> None:
    """Figures 4-5: target velocities of each representative's agents, one panel per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sb3_rmdp.envs.velocity import TARGET_RANGES

    k = HISTOGRAM_K if any(r["k"] == HISTOGRAM_K for r in rows) else max(r["k"] for r in rows)
    seed = min(r["seed"] for r in rows)
    chosen = [
        r for a in ALGORITHMS for r in rows if r["algorithm"] == a and r["k"] == k and r["seed"] == seed
    ]
    if not chosen:
        return
    b = TARGET_RANGES[f"{env_name}-v5"]
    bins = np.linspace(0, b, 21)
    # at least 5.5 in wide: the suptitle fits over a single panel
    fig, axes = plt.subplots(1, len(chosen), figsize=(max(3.4 * len(chosen), 5.5), 3.8), sharey=True)
    for ax, row in zip(np.atleast_1d(axes), chosen):
        targets = np.array(row["targets"].split(), dtype=float)
        assignment = np.array(row["assignment"].split(), dtype=int)
        served = served_agents(row)
        if served is None:
            groups = [targets[assignment == j] for j in range(k)]
            labels = [f"rep {j}" for j in range(k)]
            breaks = plural(interval_breaks(targets, assignment), "break")
            colors = None
        else:
            groups = [targets[(assignment == j) & served] for j in range(k)] + [targets[~served]]
            labels = [f"rep {j}" for j in range(k)] + ["unserved"]
            returns = np.array(str(row["returns"]).split(), dtype=float)
            share = interval_welfare_share(targets, assignment, returns)
            breaks = (
                f"{plural(interval_breaks(targets[served], assignment[served]), 'break')} among served\n"
                f"{100 * share:.0f}% of welfare in one interval per rep"
            )
            colors = [f"C{j}" for j in range(k)] + ["0.8"]
        ax.hist(groups, bins=bins, stacked=True, label=labels, color=colors)
        ax.set_title(f"{row['algorithm']}: welfare {float(row['welfare_eval']):.1f}\n{breaks}", fontsize=9)
        ax.set_xlabel("target velocity")
    np.atleast_1d(axes)[0].set_ylabel("agents")
    with_unserved = [i for i, row in enumerate(chosen) if served_agents(row) is not None]
    np.atleast_1d(axes)[with_unserved[-1] if with_unserved else -1].legend(fontsize=7)
    fig.suptitle(f"{env_name}, k={k}, seed {seed}: assignment over target velocity", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from sb3_rmdp.assigners.end_to_end import DEPLOY, GRADIENT_STATISTICS  # lazily: --merge needs no torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="*", default=["HalfCheetah"], choices=ENVS)
    parser.add_argument("--ks", type=int, nargs="*", default=[1, 2, 5, 10])
    parser.add_argument("--n-agents", type=int, default=100)
    parser.add_argument("--large", action="store_true", help="add the k=50, n=1000 cell of the paper")
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--budget-per-representative", type=int, default=100_000, help="env steps per policy")
    parser.add_argument(
        "--no-share-k1", dest="share_k1", action="store_false", help="train k=1 once per algorithm"
    )
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    parser.add_argument(
        "--log-std-init",
        type=float,
        default=0.0,
        help="initial log standard deviation of the Gaussian actions (SB3's default 0)",
    )
    parser.add_argument(
        "--no-revive-idle",
        dest="revive_idle",
        action="store_false",
        help="EM with the plain greedy E-step (the runs committed before idle representatives were revived)",
    )
    parser.add_argument(
        "--end-to-end-lr",
        type=float,
        default=PAPER_END_TO_END_LR,
        help="Adam learning rate of the end-to-end assignment logits (the paper's 2e-3; see the docs for "
        "scaling it to shorter runs and larger minibatches)",
    )
    parser.add_argument(
        "--end-to-end-init-scale",
        type=float,
        default=PAPER_END_TO_END_INIT_SCALE,
        help="standard deviation of the initial end-to-end logits (the reference code's 1)",
    )
    parser.add_argument(
        "--end-to-end-gradient-statistics",
        choices=GRADIENT_STATISTICS,
        default=END_TO_END_DEFAULTS["end_to_end_gradient_statistics"],
        help="the per-representative normalization statistics the logits' gradient flows through "
        "('both': the reference code's; see sb3_rmdp.ppo.normalize_per_representative)",
    )
    parser.add_argument(
        "--end-to-end-deploy",
        choices=DEPLOY,
        default=END_TO_END_DEFAULTS["end_to_end_deploy"],
        help="the end-to-end hard assignment deployed and scored: the logits' argmax (the paper) or each "
        "agent's best representative on the latest training returns (EndToEndAssigner(deploy=...))",
    )
    parser.add_argument(
        "--end-to-end-mixing",
        type=float,
        default=END_TO_END_DEFAULTS["end_to_end_mixing"],
        help="with --end-to-end-deploy best_response: the moving-average coefficient of the returns it reads "
        "(EndToEndAssigner(mixing=...); 1: the latest rollout's; recorded as a float: --exclude "
        "end_to_end_mixing=1.0)",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--rescore", type=Path, default=None, help="add interval_breaks to a results CSV, redraw, stop"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="instead of training, combine runs of one env (their CSV paths, without suffix) into --out-dir",
    )
    parser.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="COLUMN=VALUE",
        help="with --merge: leave out the rows with this value, e.g. em_e_step=greedy",
    )
    args = parser.parse_args()
    if args.rescore is not None:
        rescore(args.rescore)
        return
    if args.merge:
        merge(args.merge, args.out_dir, args.exclude)
        return

    sizes = [(k, args.n_agents) for k in args.ks] + ([(50, 1000)] if args.large else [])
    cells = []
    for env_name in args.envs:
        for k, n in sizes:
            algorithms = args.algorithms[:1] if (k == 1 and args.share_k1) else args.algorithms
            cells += [(env_name, a, k, n, s) for a in algorithms for s in args.seeds]
    cells.sort(key=lambda c: -c[2] * c[3] ** 0.5)  # biggest first: no long straggler at the end
    end_to_end = {column: getattr(args, column) for column in END_TO_END_DEFAULTS}
    started = time.time()
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.n_jobs) as pool:
        futures = [
            pool.submit(
                run_cell,
                *cell,
                args.budget_per_representative,
                args.log_std_init,
                args.revive_idle,
                end_to_end,
            )
            for cell in cells
        ]
        for done, future in enumerate(as_completed(futures), 1):
            row = future.result()
            rows.append(row)
            print(
                f"[{done}/{len(cells)}] {row['env']} {row['algorithm']:>10} k={row['k']:>2} "
                f"seed={row['seed']}: "
                f"eval {row['welfare_eval']:.2f} ({100 * row['fraction_of_bound']:.0f}% of bound "
                f"{row['upper_bound']:.2f}) train {row['welfare_train']:.2f} {row['wall_s']:.0f}s",
                flush=True,
            )
    for row in [r for r in rows if r["k"] == 1 and args.share_k1]:
        for algorithm in args.algorithms[1:]:
            rows.append(shared_row(row, algorithm))
    rows.sort(key=lambda r: (r["env"], ALGORITHMS.index(r["algorithm"]), r["k"], r["n_agents"], r["seed"]))

    add_interval_breaks(rows)
    for env_name in args.envs:
        meta = {
            **run_header(),
            "machine": machine(),
            "versions": versions(),
            "env": f"sb3_rmdp/{env_name}Velocity-v0",
            "seeds": args.seeds,
            "budget_per_representative": args.budget_per_representative,
            "ppo": {k: str(v) for k, v in ppo_kwargs(args.log_std_init).items()},
            "em_e_step": E_STEP_REVIVE if args.revive_idle else E_STEP_GREEDY,
            **recorded_settings(end_to_end),
            "n_jobs": args.n_jobs,
            "torch_threads_per_worker": 1,
            "wall_s": round(time.time() - started, 1),
        }
        env_rows = [r for r in rows if r["env"] == env_name]
        write_env_results(env_rows, env_name, args.out_dir / f"mujoco_velocity_{env_name}", meta)


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, s.e., fraction of the bound and interval breaks of ``welfare_eval`` per (algorithm, k, n)."""
    summary = {}
    sizes = sorted({(int(r["k"]), int(r["n_agents"])) for r in rows})
    for algorithm in ALGORITHMS:
        for k, n in sizes:
            cell = [r for r in rows if r["algorithm"] == algorithm and r["k"] == k and r["n_agents"] == n]
            if not cell:
                continue
            mean, se = mean_se([float(r["welfare_eval"]) for r in cell])
            fraction, _ = mean_se([float(r["fraction_of_bound"]) for r in cell])
            summary[f"{algorithm}/k={k}/n={n}"] = {
                "mean": round(mean, 3),
                "se": round(se, 3),
                "fraction_of_bound": round(fraction, 3),
                "interval_breaks": [int(r["interval_breaks"]) for r in cell],
                "n": len(cell),
            }
            if any(r.get("served_interval_breaks") not in (None, "") for r in cell):
                # null for rows written before the returns column
                for key in ("served_interval_breaks", "served"):
                    summary[f"{algorithm}/k={k}/n={n}"][key] = [
                        None if r.get(key) in (None, "") else int(r[key]) for r in cell
                    ]
                summary[f"{algorithm}/k={k}/n={n}"]["interval_welfare_share"] = [
                    None
                    if r.get("interval_welfare_share") in (None, "")
                    else float(r["interval_welfare_share"])
                    for r in cell
                ]
    return summary


def write_env_results(rows: list[dict[str, Any]], env_name: str, out: Path, meta: dict[str, Any]) -> None:
    """``out.{csv,json,png}`` and ``out_histograms.png`` for one env's rows (``meta`` + the summary)."""
    write_csv(rows, result_path(out, ".csv"))
    summary = summarize(rows)
    with open(result_path(out, ".json"), "w") as f:
        json.dump({**meta, "summary_welfare_eval": summary}, f, indent=2)
    plot_welfare(rows, env_name, result_path(out, ".png"))
    plot_histograms(rows, env_name, out.parent / f"{out.name}_histograms.png")
    print(json.dumps(summary, indent=1))


def legacy_mixing(row: dict[str, Any]) -> float | str:
    """``end_to_end_mixing`` of an end-to-end row written before the column: blank for the argmax; a best
    response read :data:`LEGACY_END_TO_END_MIXING` once rows also scored the latest returns alone
    (``welfare_eval_best_response_latest``), and the latest returns (1) before."""
    if row.get("end_to_end_deploy") != "best_response":
        return ""
    return LEGACY_END_TO_END_MIXING if row.get("welfare_eval_best_response_latest") not in (None, "") else 1.0


def plural(count: int, noun: str) -> str:
    """``"1 break"``, ``"3 breaks"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def merge(sources: list[Path], out_dir: Path, exclude: list[str] | None = None) -> None:
    """Combine the results CSVs of several runs of one env (e.g. more seeds at the same budget) into
    ``out_dir/mujoco_velocity_<env>``; the JSON lists each run's own sidecar (command, date, wall time).

    :param exclude: ``COLUMN=VALUE`` filters: rows with that value are left out (e.g. ``em_e_step=greedy``
        keeps a run's other algorithms but not its greedy EM rows).
    :raises ValueError: if the runs are of different envs, budgets, ``log_std_init``, EM E-steps
        (``em_e_step``; EM rows without it are the greedy E-step's) or end-to-end learning rates
        (``end_to_end_lr``; rows without it used the paper's 2e-3), initial logit scales
        (``end_to_end_init_scale``; rows without it used 1) or gradient statistics
        (``end_to_end_gradient_statistics``; rows without it used ``"mean"``) or deployments
        (``end_to_end_deploy``; rows without it deployed ``"argmax"``) or best responses' moving averages
        (``end_to_end_mixing``; best-response rows without it: :func:`legacy_mixing`), or share an
        (algorithm, k, n, seed), or on a malformed filter.
    """
    rows: list[dict[str, Any]] = []
    runs = []
    for source in sources:
        source_rows, sidecar = read_run(source)
        rows += source_rows
        runs.append(sidecar)
    for row in rows:
        if row["algorithm"] == "em" and not row.get("em_e_step"):
            row["em_e_step"] = E_STEP_GREEDY  # written before the column existed
        # a k = 1 row shared from another algorithm learned no logits: it stays empty, pooling with any
        learned_logits = row["algorithm"] == "end_to_end" and not row.get("shared_with")
        if learned_logits and "end_to_end_mixing" not in row:  # written before the column existed
            row["end_to_end_mixing"] = legacy_mixing(row)
        for column, default in END_TO_END_DEFAULTS.items():
            if learned_logits and row.get(column) in (None, ""):
                row[column] = default  # written before the column existed
        if learned_logits:
            row.update(recorded_settings(row))
        if (
            learned_logits
            and row.get("welfare_eval_argmax") in (None, "")
            and row["end_to_end_deploy"] == "argmax"
        ):
            row["welfare_eval_argmax"] = row["welfare_eval"]  # deployed the argmax, before the column existed
    for condition in exclude or []:
        column, equals, value = condition.partition("=")
        if not equals or not column:
            raise ValueError(f"--exclude {condition!r}: write COLUMN=VALUE, e.g. em_e_step=greedy.")
        rows = [r for r in rows if str(r.get(column, "")) != value]
    cell = ("algorithm", "k", "n_agents", "seed")
    same = ("env", "budget_per_representative", "log_std_init", "em_e_step", *END_TO_END_DEFAULTS)
    check_mergeable(rows, cell=cell, same=same)
    add_interval_breaks(rows)
    rows.sort(key=lambda r: (ALGORITHMS.index(r["algorithm"]), r["k"], r["n_agents"], r["seed"]))
    env_name = rows[0]["env"]
    meta = {
        **merged_meta(runs),
        "env": f"sb3_rmdp/{env_name}Velocity-v0",
        "seeds": sorted({r["seed"] for r in rows}),
        "budget_per_representative": rows[0]["budget_per_representative"],
    }
    write_env_results(rows, env_name, out_dir / f"mujoco_velocity_{env_name}", meta)


if __name__ == "__main__":
    main()
