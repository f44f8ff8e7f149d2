"""The policy-committee experiment (PACMAN slides, Ablation 1): epsilon-cover against other clusterings.

A cell (task, algorithm, epsilon, k, seed) draws ``n_agents`` training targets from ``seed`` and turns
them into k prototypes by the cell's ``algorithm`` (:func:`sb3_rmdp.committee.baselines.cluster_agents`:
``coverage``, ``kmeans++``, ``gmm``, ``dbscan``, ``random``); each training agent goes to its nearest
prototype (L-infinity), so a representative trains on exactly the agents it would serve zero-shot.
A prototype may end up with no training agent (``empty_representatives``); its representative then
gets no policy gradient with ``train_on = "agents"``.

**Training.** One ``RMDPPPO`` committee with a ``FixedAssigner``, ``budget_per_representative x k`` env
steps, the velocity experiment's PPO settings and ``VecNormalize`` (observations only).
``train_on = "agents"``: each representative maximizes its agents' mean reward; ``"prototype"``:
PACMAN's step 2, each representative trains on its prototype's own reward (a population of the k
prototypes, representative j on agent j).

**Evaluation, exact and cheap.** A velocity agent's reward depends only on the robot's forward speed
and the agent's target, so each representative runs deterministic episodes once on the base env (the
training ``VecNormalize`` statistics, frozen), its ``x_velocity`` sequence is recorded, and every agent's
return is ``sum_t velocity_rewards(x_t, targets, b)`` (:func:`velocity_returns`): the return table of
all new agents from ``k x episodes`` episodes. The ``few_shot_episodes`` *selection* episodes (reset
seeds ``20_000 + 1000 seed + e``) and the ``eval_episodes`` *evaluation* episodes (``30_000 + 1000 seed
+ e``) are different episodes; every representative plays the same ones.

**Metrics**, on ``n_new_agents`` held-out new agents (targets from seed ``10_000 + seed``):

- ``welfare`` = ``welfare_zero_shot``: the mean evaluation return when each new agent takes the
  representative of its nearest prototype (the headline);
- ``welfare_few_shot``: the same when it takes the representative with the best selection-episode
  return on its own reward;
- ``welfare_best_member``: each new agent's best representative on the evaluation episodes (the
  committee's ceiling); ``upper_bound`` = ``upper_bound_new``: the best any k policies could do for
  them (:func:`~sb3_rmdp.envs.velocity.welfare_upper_bound`);
- ``frac_zero_shot_near_best`` / ``frac_few_shot_near_best``: the fraction of new agents whose selected
  representative's return is within ``epsilon_welfare`` of their best member's: the measured
  ``1 - delta`` of the committee's ``(epsilon, 1 - delta)`` cover, the best member standing in for the
  unknown optimum;
- ``welfare_train``: the training agents' evaluation welfare under their assignment;
- ``covered_train`` / ``covered_new``: the fraction of training / new agents within ``covered_within``
  of a prototype (the cell's epsilon, or ``cover_radius`` for methods without one);
- ``n_clusters_found`` (DBSCAN's own count), ``empty_representatives``, ``cluster_sizes`` ``(k,)`` and
  ``prototypes`` ``(k,)``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from sb3_rmdp.experiments.grid import Experiment, Param, register

if TYPE_CHECKING:
    from sb3_rmdp.committee.baselines import Clustering

#: task -> the robot of its velocity population
ROBOTS = {
    "HalfCheetahCommittee": "HalfCheetah",
    "HopperCommittee": "Hopper",
    "Walker2dCommittee": "Walker2d",
    "AntCommittee": "Ant",
}
EPISODE_STEPS = 1000
NEW_AGENT_SEED_OFFSET = 10_000
SELECTION_SEED, EVALUATION_SEED = 20_000, 30_000
#: the clusterings a cell's ``algorithm`` names, and those that take ``epsilon``: those of
#: :mod:`sb3_rmdp.committee.baselines`, written out because the experiments import the algorithms only
#: inside their cell functions
ALGORITHMS = ("coverage", "kmeans++", "gmm", "dbscan", "random")
EPSILON_ALGORITHMS = ("coverage", "dbscan")

PARAMS: dict[str, Param] = {
    "algorithm": Param(str, "coverage", choices=ALGORITHMS, help="the clustering of the agents"),
    "epsilon": Param(
        float, 0.2, minimum=0.0, algorithms=EPSILON_ALGORITHMS, help="cover radius (coverage), eps (DBSCAN)"
    ),
    "k": Param(int, 5, minimum=1, help="the policy budget"),
    "seed": Param(int, 0, minimum=0, help="seeds the targets, the clustering and SB3"),
    "n_agents": Param(int, 100, minimum=1, help="training agents, target speeds U[0, b]"),
    "n_new_agents": Param(int, 200, minimum=1, help="held-out new agents (targets from seed 10,000 + seed)"),
    "budget_per_representative": Param(int, 100_000, minimum=1, help="training env steps per policy"),
    "train_on": Param(str, "agents", choices=("agents", "prototype"), help="each policy's reward"),
    "few_shot_episodes": Param(int, 2, minimum=1, help="selection episodes per representative"),
    "eval_episodes": Param(int, 3, minimum=1, help="evaluation episodes per representative"),
    "epsilon_welfare": Param(float, 5.0, minimum=0.0, help="the return gap counted near the best member"),
    # None: b / 20, the reward's width (0.2 on HalfCheetah)
    "cover_radius": Param(
        float,
        None,
        minimum=0.0,
        algorithms=tuple(a for a in ALGORITHMS if a not in EPSILON_ALGORITHMS),
        help="covered_* radius of methods without epsilon",
    ),
    "dbscan_min_samples": Param(int, 5, minimum=1, algorithms=("dbscan",), help="DBSCAN's min_samples"),
    "log_std_init": Param(float, 0.0, help="initial log std of the Gaussian actions"),
    "n_steps": Param(int, 1024, minimum=1, help="env steps per slot and update"),
    "batch_size": Param(int, 256, minimum=2, help="PPO minibatch size"),
    "n_epochs": Param(int, 10, minimum=1, help="PPO epochs per update"),
}

METRICS = (
    "welfare",
    "upper_bound",
    "welfare_zero_shot",
    "welfare_few_shot",
    "welfare_best_member",
    "upper_bound_new",
    "frac_zero_shot_near_best",
    "frac_few_shot_near_best",
    "welfare_train",
    "covered_within",
    "covered_train",
    "covered_new",
    "n_clusters_found",
    "empty_representatives",
    "cluster_sizes",
    "prototypes",
)


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
    """Each agent's mean return over the episodes each representative played.

    :param x_velocities: ``(n_episodes, n_steps)`` as :func:`record_x_velocities` returns.
    :param representatives: ``(n_episodes,)`` the representative of each episode (each of ``0..k-1``
        plays at least one).
    :param targets: ``(n_agents,)``.
    :return: ``(n_agents, k)`` the agent returns table.
    """
    returns = velocity_returns(x_velocities, targets, b)  # (n_episodes, n_agents)
    return np.stack([returns[representatives == j].mean(axis=0) for j in range(k)], axis=1)


def population_env(base_id: str, targets: np.ndarray) -> Any:
    """A velocity population over ``base_id`` (``"HalfCheetah-v5"``) with these targets ``(n_agents,)``."""
    from sb3_rmdp.committee import population_with_agents
    from sb3_rmdp.envs.velocity import make_velocity_env

    return population_with_agents(make_velocity_env(base_id, n_agents=1), np.reshape(targets, (-1, 1)))


# ----------------------------------------------------------------------------------------- one cell
def cell_targets(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """The cell's training targets ``(n_agents,)``, new agents' targets ``(n_new_agents,)`` and ``b``."""
    from sb3_rmdp.envs.velocity import TARGET_RANGES, velocity_targets

    b = TARGET_RANGES[f"{ROBOTS[config['task']]}-v5"]
    seed = config["seed"]
    train_targets = velocity_targets(config["n_agents"], b, seed=seed)
    new_targets = velocity_targets(config["n_new_agents"], b, seed=NEW_AGENT_SEED_OFFSET + seed)
    return train_targets, new_targets, b


def cell_clustering(config: dict[str, Any]) -> Clustering:
    """The cell's prototypes ``(k, 1)`` and training assignment ``(n_agents,)`` (cheap, seeded)."""
    from sb3_rmdp.committee.baselines import cluster_agents

    train_targets, _, _ = cell_targets(config)
    extra = {"dbscan_min_samples": config["dbscan_min_samples"]} if config["algorithm"] == "dbscan" else {}
    return cluster_agents(
        config["algorithm"], train_targets[:, None], config["k"], config["epsilon"], config["seed"], **extra
    )


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train one committee and score it on held-out agents; its metrics (see :data:`METRICS`)."""
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_rmdp import RMDPPPO
    from sb3_rmdp.assigners import FixedAssigner
    from sb3_rmdp.envs import make_rmdp_vec_env
    from sb3_rmdp.experiments.velocity import ppo_kwargs

    base_id, k, seed = f"{ROBOTS[config['task']]}-v5", config["k"], config["seed"]
    train_targets, new_targets, b = cell_targets(config)
    clustering = cell_clustering(config)
    if config["train_on"] == "agents":
        population, assignment = train_targets, clustering.assignment
    else:  # a population of the k prototypes, representative j on prototype j
        population, assignment = clustering.prototypes[:, 0], np.arange(k)
    train_env = VecNormalize(
        make_rmdp_vec_env(partial(population_env, base_id, population), n_envs=k, seed=seed),
        norm_obs=True,
        norm_reward=False,
    )
    model = RMDPPPO(
        "MlpPolicy", train_env, k=k, seed=seed, assigner=FixedAssigner(assignment), **ppo_kwargs(config)
    )
    model.learn(config["budget_per_representative"] * k)

    # Selection and evaluation episodes, all representatives side by side, recorded once.
    n_selection, n_eval = config["few_shot_episodes"], config["eval_episodes"]
    representatives = np.repeat(np.arange(k), n_selection + n_eval)
    episode = np.tile(np.arange(n_selection + n_eval), k)
    is_eval = episode >= n_selection
    reset_seeds = np.where(
        is_eval,
        EVALUATION_SEED + 1000 * seed + episode - n_selection,
        SELECTION_SEED + 1000 * seed + episode,
    )
    x = record_x_velocities(
        model,
        partial(population_env, base_id, np.zeros(1)),
        representatives,
        reset_seeds,
        train_env.normalize_obs,
    )
    tables = {
        "new_eval": agent_return_table(x[is_eval], representatives[is_eval], k, new_targets, b),
        "new_selection": agent_return_table(x[~is_eval], representatives[~is_eval], k, new_targets, b),
        "train_eval": agent_return_table(x[is_eval], representatives[is_eval], k, train_targets, b),
    }
    return score(config, clustering, tables, train_targets, new_targets, b)


def score(
    config: dict[str, Any],
    clustering: Clustering,
    tables: dict[str, np.ndarray],
    train_targets: np.ndarray,
    new_targets: np.ndarray,
    b: float,
) -> dict[str, Any]:
    """A cell's metrics from its committee's return tables and its own prototypes.

    :param tables: ``"new_eval"`` and ``"new_selection"``: ``(n_new_agents, k)`` the new agents' mean
        returns on the evaluation and the selection episodes; ``"train_eval"``: ``(n_agents, k)`` the
        training agents' on the evaluation episodes.
    :param train_targets: ``(n_agents,)``.
    :param new_targets: ``(n_new_agents,)``.
    """
    from sb3_rmdp.committee import assign_to_prototypes
    from sb3_rmdp.deploy import zero_shot_select
    from sb3_rmdp.envs.velocity import welfare_upper_bound

    new_eval, k, gap = tables["new_eval"], config["k"], config["epsilon_welfare"]
    agents = np.arange(len(new_targets))
    zero_shot = np.array([zero_shot_select(clustering.prototypes, np.array([v])) for v in new_targets])
    few_shot = tables["new_selection"].argmax(axis=1)
    best = new_eval.max(axis=1)
    radius = config["epsilon"] if config["epsilon"] is not None else cover_radius(config, b)
    train_welfare = tables["train_eval"][np.arange(len(train_targets)), clustering.assignment].mean()
    sizes = np.bincount(clustering.assignment, minlength=k)
    zero_shot_welfare = round(float(new_eval[agents, zero_shot].mean()), 4)
    bound = round(welfare_upper_bound(new_targets, k, b), 4)
    return {
        "welfare": zero_shot_welfare,
        "upper_bound": bound,
        "welfare_zero_shot": zero_shot_welfare,
        "welfare_few_shot": round(float(new_eval[agents, few_shot].mean()), 4),
        "welfare_best_member": round(float(best.mean()), 4),
        "upper_bound_new": bound,
        "frac_zero_shot_near_best": round(float(np.mean(new_eval[agents, zero_shot] >= best - gap)), 4),
        "frac_few_shot_near_best": round(float(np.mean(new_eval[agents, few_shot] >= best - gap)), 4),
        "welfare_train": round(float(train_welfare), 4),
        "covered_within": radius,
        "covered_train": round(
            float(assign_to_prototypes(train_targets[:, None], clustering.prototypes, radius)[1].mean()), 4
        ),
        "covered_new": round(
            float(assign_to_prototypes(new_targets[:, None], clustering.prototypes, radius)[1].mean()), 4
        ),
        "n_clusters_found": clustering.n_clusters_found,
        "empty_representatives": int(np.sum(sizes == 0)),
        "cluster_sizes": [int(s) for s in sizes],
        "prototypes": [f"{v:.4f}" for v in clustering.prototypes[:, 0]],
    }


def cover_radius(config: dict[str, Any], b: float) -> float:
    """The radius of ``covered_*`` for a method without epsilon: ``cover_radius``, or ``b / 20`` (the
    reward's width) when it is unset."""
    return float(config["cover_radius"]) if config.get("cover_radius") is not None else b / 20


def env_steps(config: dict[str, Any]) -> int:
    """Training steps plus at most the selection and evaluation episodes' (each representative's, full)."""
    k = config["k"]
    episodes = config["few_shot_episodes"] + config["eval_episodes"]
    return int(config["budget_per_representative"] * k + k * episodes * EPISODE_STEPS)


EXPERIMENT = register(
    Experiment(
        name="committee",
        tasks=tuple(ROBOTS),
        params=PARAMS,
        run=run,
        env_steps=env_steps,
        # planning rates (env steps/s on one core of the 2-core dev machine, both cores busy, one torch
        # thread: the committed HalfCheetah cells ran at about 1,600); --dry-run replaces them by the
        # store's measured cells as soon as it has some
        steps_per_second={
            "HalfCheetahCommittee": 1_600.0,
            "HopperCommittee": 1_600.0,
            "Walker2dCommittee": 1_500.0,
            "AntCommittee": 1_000.0,
        },
        shares_k1=False,
        metrics=METRICS,
    )
)
