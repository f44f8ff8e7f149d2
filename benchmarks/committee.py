"""Policy committees (PACMAN) against off-the-shelf clustering on a velocity population (slides, Ablation 1).

Every method turns the same training agents' params (target speeds, ``(n_agents, 1)``) into K
*prototypes*:

- ``coverage``: PACMAN's epsilon-cover (:func:`sb3_rmdp.committee.epsilon_cover`, greedy
  intersection), one committee per ``--epsilons`` value;
- ``kmeans++``: scikit-learn's ``KMeans`` (``init="k-means++"``, 10 starts), prototypes = centroids;
- ``gmm``: scikit-learn's ``GaussianMixture``, prototypes = the components' means;
- ``dbscan``: scikit-learn's ``DBSCAN`` with ``eps`` = each epsilon (``--dbscan-min-samples``),
  prototypes = the clusters' means. DBSCAN picks its own number of clusters: when it finds more than K,
  the K largest are kept; when fewer, the missing prototypes are agents drawn at random (seeded) among
  those outside the found clusters (noise first). ``n_clusters_found`` records what it found;
- ``random``: K distinct agents drawn at random.

All draws are seeded by the cell's seed, with their own generators. Every method is then reduced to its
prototypes: training agents and new agents alike go to the nearest prototype in L-infinity (the rule of
:func:`sb3_rmdp.deploy.zero_shot_select`), so a representative trains on exactly the agents it will serve
zero-shot (for K-means in 1-D this is its own labelling; for a GMM it ignores the components' widths).
A prototype may end up with no training agent (``empty_representatives`` counts them); its
representative then gets no policy gradient in ``--train-on agents`` mode.

**Training.** One ``RMDPPPO`` committee per (method, epsilon where it has one, K, seed), on the training
population (``--n-agents`` targets from ``velocity_targets(n, b, seed)``), ``--budget-per-representative``
env steps per representative, ``FixedAssigner``, the PPO settings and ``VecNormalize`` (observations
only) of ``benchmarks/mujoco_velocity.py``. ``--train-on agents`` (default): each representative
maximizes its agents' mean reward. ``--train-on prototype``: PACMAN's step 2, each representative
trains on its prototype's own reward (a population of the K prototypes, representative j on agent j).

**Evaluation, exact and cheap.** A velocity agent's reward depends only on the robot's forward speed
and the agent's target, so each representative runs deterministic episodes once on the base env (the
training ``VecNormalize`` statistics, frozen), its ``x_velocity`` sequence is recorded, and every agent's
return is ``sum_t velocity_rewards(x_t, targets, b)``: the ``(n_new_agents, K)`` return table of all new
agents from ``K x episodes`` episodes. The ``--few-shot-episodes`` *selection* episodes (reset seeds
``20_000 + 1000 seed + e``) and the ``--eval-episodes`` *evaluation* episodes (``30_000 + 1000 seed +
e``) are different episodes; every representative plays the same ones.

**Reported per cell**, on ``--n-new-agents`` held-out new agents (targets from seed ``10_000 + seed``):

- ``welfare_zero_shot``: mean evaluation return when each new agent takes the representative of its
  nearest prototype;
- ``welfare_few_shot``: the same when it takes the representative with the best selection-episode
  return on its own reward;
- ``welfare_best_member``: the oracle, each new agent's best representative on the evaluation
  episodes (the committee's ceiling); ``upper_bound_new``: the best any K policies could do for them
  (:func:`~sb3_rmdp.envs.velocity.welfare_upper_bound`);
- ``frac_zero_shot_near_best`` / ``frac_few_shot_near_best``: the fraction of new agents whose selected
  representative's return is within ``--epsilon-welfare`` of their best member's, i.e. the measured
  ``1 - delta`` of the committee's ``(epsilon, 1 - delta)`` cover, with the committee's best member
  standing in for the unknown optimum ``V*``;
- ``welfare_train``: the training agents' evaluation welfare under their assignment;
- ``covered_train`` / ``covered_new``: the fraction of training / new agents within ``cover_radius``
  of a prototype (the cell's epsilon; ``--cover-radius`` for methods without one).

Cells whose clusterings train the very same committee (equal assignments with ``--train-on agents``,
e.g. K-means and a GMM agreeing, or DBSCAN finding one cluster at two radii) train it once; the rows
say so in ``shared_with``.

The committed results (27 cells, 2.25M env steps of training, 12.5 minutes with 2 workers on 2
cores)::

    python benchmarks/committee.py --ks 2 3 5 --seeds 0 1 2 --epsilons 0.2 \\
        --methods coverage kmeans++ random --budget-per-representative 25000 --n-jobs 2

The full ablation (81 cells, 65 committees, 22.5M env steps; ``--dry-run`` counts them), about 2 hours
on 2 cores::

    python benchmarks/committee.py --ks 2 3 5 --seeds 0 1 2 --epsilons 0.1 0.2 0.4 \\
        --budget-per-representative 100000 --n-jobs 2

The slides' scale (they report HalfCheetah at 6M and 12M frames), for a bigger machine (440 cells, 389
committees, 2.0G env steps: about 3.5 hours on 64 cores at ~2,500 env steps/s per process)::

    python benchmarks/committee.py --ks 2 3 5 10 --seeds 0 1 2 3 4 5 6 7 8 9 \\
        --epsilons 0.05 0.1 0.2 0.4 --budget-per-representative 1000000 --n-jobs 64

Smoke test (5 cells, 4 committees; 25 seconds)::

    python benchmarks/committee.py --budget-per-representative 2048 --ks 2 --seeds 0 --epsilons 0.2 \\
        --n-jobs 1 --out-dir /tmp/committee_smoke

Writes ``<out-dir>/<out-name>.{csv,json,png}`` (``--out-name`` defaults to ``committee``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import mean_se, result_path, write_csv
from mujoco_velocity import ppo_kwargs
from throughput import machine, versions

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("coverage", "kmeans++", "gmm", "dbscan", "random")
EPSILON_METHODS = ("coverage", "dbscan")
ENVS = ("HalfCheetah", "Ant", "Hopper", "Walker2d")
NEW_AGENT_SEED_OFFSET = 10_000
SELECTION_SEED, EVALUATION_SEED = 20_000, 30_000


# ----------------------------------------------------------------------------------------- clustering
@dataclass(frozen=True)
class Clustering:
    """K prototypes of one method and the training agents' assignment they induce.

    :param prototypes: ``(k, d)``.
    :param assignment: ``(n_agents,)`` each agent's nearest prototype (L-infinity).
    :param n_clusters_found: clusters the method itself found (differs from k only for DBSCAN).
    """

    prototypes: np.ndarray
    assignment: np.ndarray
    n_clusters_found: int


def nearest_prototype(agent_params: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """``(n_agents, d)``, ``(k, d)`` -> ``(n_agents,)`` index of the nearest prototype in L-infinity."""
    from sb3_rmdp.committee import linf_distances

    return linf_distances(agent_params, prototypes).argmin(axis=1).astype(np.int64)


def cluster_agents(
    method: str,
    agent_params: np.ndarray,
    k: int,
    epsilon: float | None = None,
    seed: int = 0,
    dbscan_min_samples: int = 5,
) -> Clustering:
    """K prototypes of ``agent_params`` ``(n_agents, d)`` by ``method`` (one of :data:`METHODS`).

    :param epsilon: the cover radius (``coverage``) or DBSCAN's ``eps`` (``dbscan``); unused otherwise.
    :param seed: seed of the method's own random draws.
    :return: the prototypes ``(k, d)`` and the nearest-prototype assignment ``(n_agents,)``.
    """
    params = np.asarray(agent_params, dtype=np.float64)
    if method in EPSILON_METHODS and epsilon is None:
        raise ValueError(f"method {method!r} needs epsilon.")
    radius = float("nan") if epsilon is None else float(epsilon)
    found = k
    if method == "coverage":
        from sb3_rmdp.committee import epsilon_cover

        prototypes = epsilon_cover(params, k, radius, "greedy", seed=seed).prototypes
    elif method == "kmeans++":
        from sklearn.cluster import KMeans

        prototypes = KMeans(k, init="k-means++", n_init=10, random_state=seed).fit(params).cluster_centers_
    elif method == "gmm":
        from sklearn.mixture import GaussianMixture

        prototypes = GaussianMixture(k, random_state=seed).fit(params).means_
    elif method == "dbscan":
        prototypes, found = _dbscan_prototypes(params, k, radius, seed, dbscan_min_samples)
    elif method == "random":
        prototypes = params[np.random.default_rng(seed).choice(len(params), size=k, replace=False)]
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    prototypes = np.asarray(prototypes, dtype=np.float64).reshape(k, params.shape[1])
    return Clustering(prototypes, nearest_prototype(params, prototypes), int(found))


def _dbscan_prototypes(
    params: np.ndarray, k: int, epsilon: float, seed: int, min_samples: int
) -> tuple[np.ndarray, int]:
    """DBSCAN's clusters' means, cut or padded to k (see the module docstring); and the clusters found."""
    from sklearn.cluster import DBSCAN

    labels = DBSCAN(eps=epsilon, min_samples=min_samples).fit(params).labels_
    clusters = [c for c in np.unique(labels) if c >= 0]
    sizes = np.array([np.sum(labels == c) for c in clusters], dtype=np.int64)
    kept = [clusters[i] for i in np.argsort(-sizes, kind="stable")[:k]]
    prototypes = [params[labels == c].mean(axis=0) for c in kept]
    if len(prototypes) < k:
        rng = np.random.default_rng(seed)
        outside = np.flatnonzero(~np.isin(labels, kept))
        noise_first = np.concatenate(
            [rng.permutation(outside[labels[outside] < 0]), rng.permutation(outside[labels[outside] >= 0])]
        )
        if len(noise_first) < k - len(prototypes):  # every agent is in a kept cluster: draw any agent
            noise_first = rng.permutation(len(params))
        prototypes += [params[i] for i in noise_first[: k - len(prototypes)]]
    return np.stack(prototypes), len(clusters)


# ----------------------------------------------------------------------------------------- evaluation
def velocity_returns(x_velocities: np.ndarray, targets: np.ndarray, b: float) -> np.ndarray:
    """Every agent's return in each recorded episode, from the robot's forward speeds alone.

    :param x_velocities: ``(n_episodes, n_steps)`` forward speed per step; ``NaN`` after an episode ended.
    :param targets: ``(n_agents,)`` target speeds.
    :param b: the population's target range (sets the reward's width ``b / 20``).
    :return: ``(n_episodes, n_agents)`` undiscounted returns, the sums the env's reward vectors give.
    """
    from sb3_rmdp.envs.velocity import velocity_rewards

    x = np.asarray(x_velocities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    returns = np.zeros((len(x), len(targets)))
    for e, episode in enumerate(x):
        steps = episode[~np.isnan(episode)]
        # The env's per-step rewards are float32; their float64 sum is what an episode loop adds up.
        returns[e] = velocity_rewards(steps[:, None], targets, b).astype(np.float64).sum(axis=0)
    return returns


def record_x_velocities(
    model: Any,
    make_env: Any,
    representatives: np.ndarray,
    reset_seeds: np.ndarray,
    normalize_obs: Any = None,
) -> np.ndarray:
    """Run deterministic episodes side by side and record the robot's forward speed at every step.

    :param model: anything with ``predict(obs (n_episodes, obs_dim), deterministic=True,
        representative=(n_episodes,))``, e.g. a trained ``RMDPPPO``.
    :param make_env: a callable returning a fresh env whose ``info`` carries ``x_velocity``.
    :param representatives: ``(n_episodes,)`` the representative acting in each episode.
    :param reset_seeds: ``(n_episodes,)`` each episode's reset seed.
    :param normalize_obs: the training observation normalization (``VecNormalize.normalize_obs``).
    :return: ``(n_episodes, n_steps)`` forward speeds, ``NaN`` after an episode ended.
    """
    envs = [make_env() for _ in representatives]
    obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, reset_seeds)])
    running = np.ones(len(envs), dtype=bool)
    speeds: list[np.ndarray] = []
    representatives = np.asarray(representatives, dtype=np.int64)
    while running.any():
        live = np.flatnonzero(running)
        inputs = obs[live] if normalize_obs is None else normalize_obs(obs[live])
        actions, _ = model.predict(inputs, deterministic=True, representative=representatives[live])
        step = np.full(len(envs), np.nan)
        for action, e in zip(actions, live):
            obs[e], _, terminated, truncated, info = envs[e].step(action)
            step[e] = info["x_velocity"]
            running[e] = not (terminated or truncated)
        speeds.append(step)
    for env in envs:
        env.close()
    return np.stack(speeds, axis=1)


def agent_return_table(
    x_velocities: np.ndarray, representatives: np.ndarray, k: int, targets: np.ndarray, b: float
) -> np.ndarray:
    """``(n_agents, k)``: each agent's mean return over the episodes each representative played."""
    returns = velocity_returns(x_velocities, targets, b)  # (n_episodes, n_agents)
    return np.stack([returns[representatives == j].mean(axis=0) for j in range(k)], axis=1)


def population_env(base_id: str, targets: np.ndarray) -> Any:
    """A velocity population over ``base_id`` with the given targets ``(n_agents,)``."""
    from sb3_rmdp.committee import population_with_agents
    from sb3_rmdp.envs.velocity import make_velocity_env

    return population_with_agents(make_velocity_env(base_id, n_agents=1), np.reshape(targets, (-1, 1)))


# ----------------------------------------------------------------------------------------- one cell
@dataclass(frozen=True)
class Cell:
    env_name: str
    method: str
    epsilon: float | None
    k: int
    seed: int
    budget: int
    train_on: str
    n_agents: int
    n_new_agents: int
    few_shot_episodes: int
    eval_episodes: int
    epsilon_welfare: float
    cover_radius: float
    dbscan_min_samples: int


def cell_targets(cell: Cell) -> tuple[np.ndarray, np.ndarray, float]:
    """The cell's training targets ``(n_agents,)``, new agents' targets ``(n_new_agents,)`` and ``b``."""
    from sb3_rmdp.envs.velocity import TARGET_RANGES, velocity_targets

    b = TARGET_RANGES[f"{cell.env_name}-v5"]
    train_targets = velocity_targets(cell.n_agents, b, seed=cell.seed)
    new_targets = velocity_targets(cell.n_new_agents, b, seed=NEW_AGENT_SEED_OFFSET + cell.seed)
    return train_targets, new_targets, b


def cell_clustering(cell: Cell) -> Clustering:
    """The cell's prototypes and training assignment (cheap; deterministic in the cell's seed)."""
    train_targets, _, _ = cell_targets(cell)
    return cluster_agents(
        cell.method, train_targets[:, None], cell.k, cell.epsilon, cell.seed, cell.dbscan_min_samples
    )


def training_key(cell: Cell, clustering: Clustering) -> tuple[Any, ...]:
    """What a committee's training depends on: cells with equal keys train the very same policies.

    With ``train_on="agents"`` that is the assignment (K-means and a GMM often agree on 1-D targets),
    with ``"prototype"`` the prototypes; the prototypes' routing of new agents is evaluated per cell.
    """
    what = clustering.assignment if cell.train_on == "agents" else clustering.prototypes
    return (cell.env_name, cell.k, cell.seed, cell.budget, cell.train_on, cell.n_agents, what.tobytes())


def run_committee(cells: list[Cell], clusterings: list[Clustering]) -> list[dict[str, Any]]:
    """Train one committee for cells sharing a :func:`training_key`, evaluate it for each; CSV rows."""
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_rmdp import RMDPPPO
    from sb3_rmdp.assigners import FixedAssigner
    from sb3_rmdp.envs import make_rmdp_vec_env

    first, clustering = cells[0], clusterings[0]
    base_id, k = f"{first.env_name}-v5", first.k
    train_targets, new_targets, b = cell_targets(first)
    start = time.perf_counter()
    if first.train_on == "agents":
        population, assignment = train_targets, clustering.assignment
    else:  # a population of the k prototypes, representative j on prototype j
        population, assignment = clustering.prototypes[:, 0], np.arange(k)
    train_env = VecNormalize(
        make_rmdp_vec_env(partial(population_env, base_id, population), n_envs=k, seed=first.seed),
        norm_obs=True,
        norm_reward=False,
    )
    model = RMDPPPO(
        "MlpPolicy", train_env, k=k, seed=first.seed, assigner=FixedAssigner(assignment), **ppo_kwargs()
    )
    model.learn(first.budget * k)
    train_wall = time.perf_counter() - start

    # Selection and evaluation episodes, all representatives side by side, recorded once.
    n_sel, n_eval = first.few_shot_episodes, first.eval_episodes
    representatives = np.repeat(np.arange(k), n_sel + n_eval)
    episode = np.tile(np.arange(n_sel + n_eval), k)
    is_eval = episode >= n_sel
    seeds = np.where(
        is_eval,
        EVALUATION_SEED + 1000 * first.seed + episode - n_sel,
        SELECTION_SEED + 1000 * first.seed + episode,
    )
    x = record_x_velocities(
        model, partial(population_env, base_id, np.zeros(1)), representatives, seeds, train_env.normalize_obs
    )
    tables = {
        "new_eval": agent_return_table(x[is_eval], representatives[is_eval], k, new_targets, b),
        "new_selection": agent_return_table(x[~is_eval], representatives[~is_eval], k, new_targets, b),
        "train_eval": agent_return_table(x[is_eval], representatives[is_eval], k, train_targets, b),
    }
    wall = time.perf_counter() - start
    rows = []
    for cell, cell_clusters in zip(cells, clusterings):
        row = score_cell(cell, cell_clusters, tables, train_targets, new_targets, b)
        shared = (
            ""
            if cell is first
            else method_label(first.method, "" if first.epsilon is None else first.epsilon)
        )
        rows.append(
            {**row, "train_wall_s": round(train_wall, 1), "wall_s": round(wall, 1), "shared_with": shared}
        )
    return rows


def score_cell(
    cell: Cell,
    clustering: Clustering,
    tables: dict[str, np.ndarray],
    train_targets: np.ndarray,
    new_targets: np.ndarray,
    b: float,
) -> dict[str, Any]:
    """One cell's CSV row from its committee's return tables ``(n, k)`` and its own prototypes."""
    from sb3_rmdp.committee import assign_to_prototypes
    from sb3_rmdp.deploy import zero_shot_select
    from sb3_rmdp.envs.velocity import welfare_upper_bound

    new_eval, k = tables["new_eval"], cell.k
    agents = np.arange(cell.n_new_agents)
    zero_shot = np.array([zero_shot_select(clustering.prototypes, np.array([v])) for v in new_targets])
    few_shot = tables["new_selection"].argmax(axis=1)
    best = new_eval.max(axis=1)
    radius = cell.epsilon if cell.epsilon is not None else cell.cover_radius
    train_welfare = tables["train_eval"][np.arange(cell.n_agents), clustering.assignment].mean()
    sizes = np.bincount(clustering.assignment, minlength=k)
    return {
        "env": cell.env_name,
        "method": cell.method,
        "epsilon": "" if cell.epsilon is None else cell.epsilon,
        "k": k,
        "seed": cell.seed,
        "train_on": cell.train_on,
        "budget_per_representative": cell.budget,
        "n_agents": cell.n_agents,
        "n_new_agents": cell.n_new_agents,
        "welfare_zero_shot": round(float(new_eval[agents, zero_shot].mean()), 4),
        "welfare_few_shot": round(float(new_eval[agents, few_shot].mean()), 4),
        "welfare_best_member": round(float(best.mean()), 4),
        "upper_bound_new": round(welfare_upper_bound(new_targets, k, b), 4),
        "frac_zero_shot_near_best": round(
            float(np.mean(new_eval[agents, zero_shot] >= best - cell.epsilon_welfare)), 4
        ),
        "frac_few_shot_near_best": round(
            float(np.mean(new_eval[agents, few_shot] >= best - cell.epsilon_welfare)), 4
        ),
        "epsilon_welfare": cell.epsilon_welfare,
        "welfare_train": round(float(train_welfare), 4),
        "cover_radius": radius,
        "covered_train": round(
            float(assign_to_prototypes(train_targets[:, None], clustering.prototypes, radius)[1].mean()), 4
        ),
        "covered_new": round(
            float(assign_to_prototypes(new_targets[:, None], clustering.prototypes, radius)[1].mean()), 4
        ),
        "n_clusters_found": clustering.n_clusters_found,
        "empty_representatives": int(np.sum(sizes == 0)),
        "cluster_sizes": " ".join(map(str, sizes)),
        "prototypes": " ".join(f"{v:.4f}" for v in clustering.prototypes[:, 0]),
    }


# ----------------------------------------------------------------------------------------- reporting
def method_label(method: str, epsilon: Any) -> str:
    return method if epsilon in ("", None) else f"{method} eps={float(epsilon):g}"


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and standard error over seeds of the headline columns, per (method, epsilon, k)."""
    summary: dict[str, dict[str, Any]] = {}
    keys = sorted({(r["method"], r["epsilon"], r["k"]) for r in rows}, key=lambda t: (t[2], *map(str, t[:2])))
    for method, epsilon, k in keys:
        cell = [r for r in rows if (r["method"], r["epsilon"], r["k"]) == (method, epsilon, k)]
        entry: dict[str, Any] = {"n_seeds": len(cell)}
        for column in (
            "welfare_zero_shot",
            "welfare_few_shot",
            "welfare_best_member",
            "frac_zero_shot_near_best",
            "frac_few_shot_near_best",
            "welfare_train",
            "covered_new",
        ):
            mean, se = mean_se([r[column] for r in cell])
            entry[column] = {"mean": round(mean, 3), "se": round(se, 3)}
        summary[f"{method_label(method, epsilon)}/k={k}"] = entry
    return summary


def ordering_check(rows: list[dict[str, Any]], headline_epsilon: float) -> dict[str, Any]:
    """The acceptance shape, per k: coverage >= kmeans++ >= random in held-out zero-shot welfare."""
    checks: dict[str, Any] = {}
    for k in sorted({r["k"] for r in rows}):
        means = {}
        for method in ("coverage", "kmeans++", "random"):
            values = [
                r["welfare_zero_shot"]
                for r in rows
                if r["k"] == k
                and r["method"] == method
                and (method != "coverage" or float(r["epsilon"]) == headline_epsilon)
            ]
            if values:
                means[method] = round(mean_se(values)[0], 3)
        if len(means) == 3:
            holds = means["coverage"] >= means["kmeans++"] >= means["random"]
            checks[f"k={k}"] = {**means, "coverage >= kmeans++ >= random": bool(holds)}
    return checks


def plot(rows: list[dict[str, Any]], headline_epsilon: float, path: Path) -> None:
    """Zero-shot and few-shot welfare vs k per method, and coverage's welfare vs epsilon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, column, title in (
        (axes[0], "welfare_zero_shot", "zero-shot (nearest prototype)"),
        (axes[1], "welfare_few_shot", "few-shot (best on selection episodes)"),
    ):
        bounds = [mean_se([r["upper_bound_new"] for r in rows if r["k"] == k])[0] for k in ks]
        ax.plot(ks, bounds, "k--", lw=1.0, label="upper bound (best k speeds)")
        for method in METHODS:
            chosen = [
                r
                for r in rows
                if r["method"] == method
                and (method not in EPSILON_METHODS or float(r["epsilon"]) == headline_epsilon)
            ]
            xs = [k for k in ks if any(r["k"] == k for r in chosen)]
            if not xs:
                continue
            stats = [mean_se([r[column] for r in chosen if r["k"] == k]) for k in xs]
            label = method_label(method, headline_epsilon if method in EPSILON_METHODS else "")
            ax.errorbar(
                xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=label
            )
        ax.set_xticks(ks)
        ax.set_xlabel("policy budget K")
        ax.set_ylabel("held-out welfare (evaluation episodes)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[2]
    for k in ks:
        cover_rows = [r for r in rows if r["method"] == "coverage" and r["k"] == k]
        epsilons = sorted({float(r["epsilon"]) for r in cover_rows})
        if not epsilons:
            continue
        for column, style in (("welfare_zero_shot", "-o"), ("welfare_few_shot", ":s")):
            stats = [mean_se([r[column] for r in cover_rows if float(r["epsilon"]) == e]) for e in epsilons]
            ax.errorbar(
                epsilons,
                [m for m, _ in stats],
                yerr=[s for _, s in stats],
                fmt=style,
                capsize=3,
                label=f"K={k} {column.removeprefix('welfare_')}",
            )
    ax.set_xlabel("cover radius epsilon (target speed)")
    ax.set_ylabel("held-out welfare")
    ax.set_title("coverage: epsilon sweep", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    budgets = ", ".join(f"{b:,}" for b in sorted({int(r["budget_per_representative"]) for r in rows}))
    seeds = ", ".join(str(s) for s in sorted({int(r["seed"]) for r in rows}))
    train_on = ", ".join(sorted({str(r["train_on"]) for r in rows}))
    fig.suptitle(
        f"{rows[0]['env']} velocity committees: {budgets} steps per representative, trained on {train_on}, "
        f"seeds {seeds}; held-out agents, mean +- s.e. over seeds",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="HalfCheetah", choices=ENVS)
    parser.add_argument("--ks", type=int, nargs="*", default=[2, 3, 5])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epsilons", type=float, nargs="*", default=[0.1, 0.2, 0.4], help="cover radii")
    parser.add_argument(
        "--dbscan-epsilons",
        type=float,
        nargs="*",
        default=None,
        help="DBSCAN's eps values (default: --epsilons)",
    )
    parser.add_argument("--dbscan-min-samples", type=int, default=5)
    parser.add_argument("--headline-epsilon", type=float, default=None, help="epsilon of the vs-K panels")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--n-agents", type=int, default=100, help="training agents")
    parser.add_argument("--n-new-agents", type=int, default=200, help="held-out new agents")
    parser.add_argument("--budget-per-representative", type=int, default=100_000, help="env steps per policy")
    parser.add_argument("--train-on", choices=("agents", "prototype"), default="agents")
    parser.add_argument("--few-shot-episodes", type=int, default=2, help="selection episodes per member")
    parser.add_argument("--eval-episodes", type=int, default=3, help="evaluation episodes per member")
    parser.add_argument("--epsilon-welfare", type=float, default=5.0, help="return gap counted near-best")
    parser.add_argument(
        "--cover-radius", type=float, default=None, help="coverage radius for methods without epsilon"
    )
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--out-name", default="committee", help="results file name, without extension")
    parser.add_argument(
        "--dry-run", action="store_true", help="count the committees and env steps, then stop"
    )
    args = parser.parse_args()
    from sb3_rmdp.envs.velocity import TARGET_RANGES

    b = TARGET_RANGES[f"{args.env}-v5"]
    cover_radius = args.cover_radius if args.cover_radius is not None else b / 20  # the reward's width
    dbscan_epsilons = args.dbscan_epsilons if args.dbscan_epsilons is not None else args.epsilons
    headline = args.headline_epsilon
    if headline is None:
        headline = cover_radius if cover_radius in args.epsilons else args.epsilons[len(args.epsilons) // 2]

    common = {
        "env_name": args.env,
        "budget": args.budget_per_representative,
        "train_on": args.train_on,
        "n_agents": args.n_agents,
        "n_new_agents": args.n_new_agents,
        "few_shot_episodes": args.few_shot_episodes,
        "eval_episodes": args.eval_episodes,
        "epsilon_welfare": args.epsilon_welfare,
        "cover_radius": cover_radius,
        "dbscan_min_samples": args.dbscan_min_samples,
    }
    sweeps: dict[str, list[float | None]] = {"coverage": args.epsilons, "dbscan": dbscan_epsilons}
    cells = [
        Cell(method=method, epsilon=epsilon, k=k, seed=seed, **common)
        for k in args.ks
        for seed in args.seeds
        for method in args.methods
        for epsilon in sweeps.get(method, [None])
    ]
    groups: dict[tuple[Any, ...], tuple[list[Cell], list[Clustering]]] = {}
    for cell in cells:
        clustering = cell_clustering(cell)
        group = groups.setdefault(training_key(cell, clustering), ([], []))
        group[0].append(cell)
        group[1].append(clustering)
    order = sorted(groups.values(), key=lambda g: -g[0][0].k)  # biggest first: no long straggler at the end
    steps = sum(g[0][0].k * g[0][0].budget for g in order)
    print(
        f"{len(cells)} cells, {len(order)} committees to train, {steps:,} env steps of training", flush=True
    )
    if args.dry_run:
        return
    started = time.time()
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.n_jobs) as pool:
        futures = [pool.submit(run_committee, *group) for group in order]
        for future in as_completed(futures):
            for row in future.result():
                rows.append(row)
                shared = f" (training shared with {row['shared_with']})" if row["shared_with"] else ""
                print(
                    f"[{len(rows)}/{len(cells)}] {method_label(row['method'], row['epsilon']):>18} "
                    f"k={row['k']} seed={row['seed']}: zero-shot {row['welfare_zero_shot']:.2f} few-shot "
                    f"{row['welfare_few_shot']:.2f} best member {row['welfare_best_member']:.2f} "
                    f"(bound {row['upper_bound_new']:.2f}); near best {row['frac_zero_shot_near_best']:.2f}"
                    f" / {row['frac_few_shot_near_best']:.2f}; train {row['welfare_train']:.2f}; "
                    f"{row['wall_s']:.0f}s{shared}",
                    flush=True,
                )
    rows.sort(key=lambda r: (METHODS.index(r["method"]), str(r["epsilon"]), r["k"], r["seed"]))

    out = args.out_dir / args.out_name
    write_csv(rows, result_path(out, ".csv"))
    summary = summarize(rows)
    checks = ordering_check(rows, headline)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "versions": versions(),
        "env": f"sb3_rmdp/{args.env}Velocity-v0",
        "seeds": args.seeds,
        "new_agent_seeds": [NEW_AGENT_SEED_OFFSET + s for s in args.seeds],
        "selection_episode_seeds": f"{SELECTION_SEED} + 1000 seed + e",
        "evaluation_episode_seeds": f"{EVALUATION_SEED} + 1000 seed + e",
        "budget_per_representative": args.budget_per_representative,
        "train_on": args.train_on,
        "ppo": {key: str(value) for key, value in ppo_kwargs().items()},
        "ks": args.ks,
        "epsilons": args.epsilons,
        "dbscan_epsilons": dbscan_epsilons,
        "dbscan_min_samples": args.dbscan_min_samples,
        "headline_epsilon": headline,
        "cover_radius_without_epsilon": cover_radius,
        "n_agents": args.n_agents,
        "n_new_agents": args.n_new_agents,
        "few_shot_episodes": args.few_shot_episodes,
        "eval_episodes": args.eval_episodes,
        "epsilon_welfare": args.epsilon_welfare,
        "n_jobs": args.n_jobs,
        "torch_threads_per_worker": 1,
        "wall_s": round(time.time() - started, 1),
        "ordering_check_zero_shot": checks,
        "summary": summary,
    }
    with open(result_path(out, ".json"), "w") as f:
        json.dump(meta, f, indent=2)
    plot(rows, headline, result_path(out, ".png"))
    print(json.dumps({"ordering_check_zero_shot": checks, "summary": summary}, indent=1))
    print(f"wrote {result_path(out, '.csv')}, .json, .png")


if __name__ == "__main__":
    main()
