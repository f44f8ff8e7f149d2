"""The MuJoCo velocity experiment (the paper's Figures 3-5): welfare vs k on four robots.

A cell (task, algorithm, k, n_agents, seed) draws ``n_agents`` target velocities from ``seed``, trains
``RMDPPPO`` for ``budget_per_representative x k`` env steps with the reference code's PPO settings
(two 64-unit tanh layers, 10 epochs, lr 3e-4 -> 1e-4, observations normalized by SB3's ``VecNormalize``;
1024 steps per slot and minibatches of 256), then runs real deterministic evaluation episodes of every
representative and scores the **deployed** hard assignment (``welfare``). ``upper_bound`` is
:func:`sb3_rmdp.envs.velocity.welfare_upper_bound` for the cell's targets: no k policies do better.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sb3_rmdp.experiments.grid import Experiment, Param, register

ROBOTS = ("HalfCheetah", "Hopper", "Walker2d", "Ant")
ALGORITHMS = ("em", "end_to_end", "kmeans", "random", "oracle")
WELFARES = ("utilitarian", "egalitarian", "nash")
EPISODE_STEPS = 1000

PARAMS: dict[str, Param] = {
    "algorithm": Param(str, "em", choices=ALGORITHMS, help="the assigner"),
    "k": Param(int, 5, minimum=1, help="the policy budget"),
    "n_agents": Param(int, 100, minimum=1, help="agents, target velocities U[0, b]"),
    "seed": Param(int, 0, minimum=0, help="seeds the targets, the assigner and SB3"),
    "budget_per_representative": Param(int, 100_000, minimum=1, help="training env steps per policy"),
    "log_std_init": Param(float, 0.0, help="initial log std of the Gaussian actions (rl-zoo: -2)"),
    "n_steps": Param(int, 1024, minimum=1, help="env steps per slot and update"),
    "batch_size": Param(int, 256, minimum=2, help="PPO minibatch size"),
    "n_epochs": Param(int, 10, minimum=1, help="PPO epochs per update"),
    "eval_episodes": Param(int, 2, minimum=1, help="deterministic evaluation episodes per representative"),
    "em_mixing": Param(float, 0.05, minimum=0.0, algorithms=("em",), help="EM's moving-average rate"),
    "em_warm_start_updates": Param(int, 10, minimum=0, algorithms=("em",), help="updates before E-steps"),
    "em_revive_idle": Param(bool, True, algorithms=("em",), help="EM revives idle representatives"),
    "end_to_end_lr": Param(float, 2e-3, minimum=0.0, algorithms=("end_to_end",), help="logits' Adam lr"),
    "end_to_end_init_scale": Param(float, 1.0, minimum=0.0, algorithms=("end_to_end",)),
    "end_to_end_gradient_statistics": Param(
        str, "mean", choices=("mean", "both", "none"), algorithms=("end_to_end",)
    ),
    "end_to_end_deploy": Param(
        str, "argmax", choices=("argmax", "best_response"), algorithms=("end_to_end",)
    ),
    "end_to_end_mixing": Param(float, 1.0, minimum=0.0, algorithms=("end_to_end",)),
    "kmeans_pretrain_fraction": Param(float, 0.5, minimum=0.0, algorithms=("kmeans",)),
    # the welfare objective the model trains for (`welfare=`; the `welfare` column is the measured
    # utilitarian welfare); added after the stores were written: their cells keep their keys
    "objective": Param(
        str, "utilitarian", choices=WELFARES, keyed_default=False, help="the objective the M-step follows"
    ),
    "objective_temperature": Param(
        float, 1.0, minimum=0.0, keyed_default=False, help="the egalitarian smooth minimum's temperature"
    ),
    # scaling options (added after stores were written: out of the cell key while at their defaults)
    "critic_agents": Param(
        int, 0, minimum=0, keyed_default=False, help="agents the critic trains on per minibatch (0: all)"
    ),
    "compact_rewards": Param(
        bool, False, keyed_default=False, help="rewards from the per-step speed, batched (exact)"
    ),
    "tracked_agents": Param(
        int, 0, minimum=0, keyed_default=False, help="aggregate agents by representative, track m (0: off)"
    ),
    # "population" is what the stored cells ran before the option (the library's default is "assignment")
    "tracked_from": Param(
        str,
        "population",
        choices=("assignment", "population"),
        keyed_default=False,
        help="where each representative's tracked agents come from (with tracked_agents)",
    ),
    "minibatches": Param(
        str,
        "mixed",
        choices=("mixed", "per_representative"),
        keyed_default=False,
        help="the rollout buffer's minibatches (per_representative: one representative each)",
    ),
}

METRICS = (
    "welfare",
    "upper_bound",
    "fraction_of_bound",
    "welfare_train",
    "welfare_reassigned",
    "welfare_min",
    "welfare_p10",
    "welfare_argmax",
    "welfare_best_response_latest",
    "interval_breaks",
    "served",
    "served_interval_breaks",
    "interval_welfare_share",
    "assignment",
    "targets",
    "returns",
)


def ppo_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The reference code's PPO settings in SB3's terms, with the cell's rollout and minibatch sizes and
    its scaling options (a sampled critic, agents aggregated by representative, minibatches)."""
    import torch as th
    from stable_baselines3.common.utils import LinearSchedule

    kwargs: dict[str, Any] = {
        "n_steps": config["n_steps"],
        "batch_size": config["batch_size"],
        "n_epochs": config["n_epochs"],
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "ent_coef": 1e-3,
        "learning_rate": LinearSchedule(3e-4, 1e-4, 1.0),
        "policy_kwargs": {
            "net_arch": [64, 64],
            "activation_fn": th.nn.Tanh,
            "log_std_init": config["log_std_init"],
        },
    }
    if config.get("critic_agents"):
        kwargs["policy_kwargs"]["critic_agents"] = config["critic_agents"]
    if config.get("tracked_agents"):
        from sb3_rmdp.aggregate import RMDPAggregateRolloutBuffer

        kwargs["rollout_buffer_class"] = RMDPAggregateRolloutBuffer
        kwargs["rollout_buffer_kwargs"] = {
            "tracked_agents": config["tracked_agents"],
            "tracked_from": config.get("tracked_from", "population"),
        }
    if config.get("minibatches", "mixed") != "mixed":
        kwargs.setdefault("rollout_buffer_kwargs", {})["minibatches"] = config["minibatches"]
    return kwargs


def make_assigner(config: dict[str, Any], b: float) -> Any:
    """The cell's assigner, seeded by its seed."""
    from sb3_rmdp.assigners import (
        EMAssigner,
        EndToEndAssigner,
        KMeansAssigner,
        OracleAssigner,
        RandomAssigner,
    )

    algorithm, seed = config["algorithm"], config["seed"]
    if algorithm == "em":
        return EMAssigner(
            mixing=config["em_mixing"],
            warm_start_updates=config["em_warm_start_updates"],
            revive_idle=config["em_revive_idle"],
        )
    if algorithm == "end_to_end":
        return EndToEndAssigner(
            lr=config["end_to_end_lr"],
            init_scale=config["end_to_end_init_scale"],
            gradient_statistics=config["end_to_end_gradient_statistics"],
            deploy=config["end_to_end_deploy"],
            mixing=config["end_to_end_mixing"],
            seed=seed,
        )
    if algorithm == "kmeans":
        return KMeansAssigner(
            pretrain_fraction=config["kmeans_pretrain_fraction"], n_samples=10_000, seed=seed
        )
    if algorithm == "random":
        return RandomAssigner(seed=seed)
    return OracleAssigner(low=0.0, high=b)


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one velocity cell; its metrics (see :data:`METRICS`)."""
    import torch as th
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_rmdp import RMDPPPO
    from sb3_rmdp.assigners import best_response
    from sb3_rmdp.envs import make_rmdp_vec_env
    from sb3_rmdp.envs.velocity import TARGET_RANGES, welfare_upper_bound
    from sb3_rmdp.welfare import agent_welfare, best_assignment, evaluate_agent_returns, utilitarian_welfare

    task, k, seed = config["task"], config["k"], config["seed"]
    env_id = f"sb3_rmdp/{task}Velocity-v0"
    b = TARGET_RANGES[f"{task}-v5"]
    env_kwargs = {"n_agents": config["n_agents"], "seed": seed}
    if config.get("compact_rewards"):
        env_kwargs["compact_rewards"] = True
    train_env = VecNormalize(
        make_rmdp_vec_env(env_id, n_envs=k, seed=seed, env_kwargs=env_kwargs),
        norm_obs=True,
        norm_reward=False,
    )
    kwargs = ppo_kwargs(config)
    model = RMDPPPO(
        "MlpPolicy",
        train_env,
        k=k,
        seed=seed,
        assigner=make_assigner(config, b),
        welfare=config["objective"],
        welfare_temperature=config["objective_temperature"],
        **kwargs,
    )
    model.learn(config["budget_per_representative"] * k)

    eval_env = VecNormalize(
        make_rmdp_vec_env(env_id, n_envs=1, seed=10_000 + seed, env_kwargs=env_kwargs),
        training=False,
        norm_obs=True,
        norm_reward=False,
    )
    eval_env.obs_rms = train_env.obs_rms
    table = evaluate_agent_returns(model, eval_env, n_episodes=config["eval_episodes"])
    with th.no_grad():
        weights = model.assigner.weights().cpu().numpy()
    assert model.agent_params is not None, "velocity populations carry their targets"
    targets = model.agent_params.reshape(-1)
    bound = welfare_upper_bound(targets, k, b)
    deployed = model.assignment()
    returns = agent_welfare(table, deployed)
    welfare = utilitarian_welfare(table, deployed)
    end_to_end = config["algorithm"] == "end_to_end"
    argmax = weights.argmax(axis=1)
    served = returns > 0
    metrics: dict[str, Any] = {
        "welfare": round(welfare, 4),
        "upper_bound": round(bound, 4),
        "fraction_of_bound": round(welfare / bound, 4),
        "welfare_train": round(utilitarian_welfare(model.training_returns, weights), 4),
        "welfare_reassigned": round(utilitarian_welfare(table, best_assignment(table)), 4),
        "welfare_min": round(float(returns.min()), 4),
        "welfare_p10": round(float(np.percentile(returns, 10)), 4),
        # the same run deployed by its logits' argmax and by the best response to the latest returns
        "welfare_argmax": round(utilitarian_welfare(table, argmax), 4) if end_to_end else None,
        "welfare_best_response_latest": (
            round(utilitarian_welfare(table, best_response(model.training_returns, argmax)), 4)
            if end_to_end and np.all(np.isfinite(model.training_returns))
            else None
        ),
        "interval_breaks": interval_breaks(targets, deployed),
        "served": int(served.sum()),
        "served_interval_breaks": interval_breaks(targets[served], deployed[served]),
        "interval_welfare_share": round(interval_welfare_share(targets, deployed, returns), 4),
        "assignment": [int(j) for j in deployed],
        "targets": [f"{v:.4f}" for v in targets],
        "returns": [f"{v:.2f}" for v in returns],
    }
    return metrics


def env_steps(config: dict[str, Any]) -> int:
    """Training steps plus at most the evaluation episodes' (every representative, full length)."""
    k = config["k"]
    return int(config["budget_per_representative"] * k + k * config["eval_episodes"] * EPISODE_STEPS)


def interval_breaks(targets: Any, assignment: Any) -> int:
    """How far an assignment is from splitting the velocity range into contiguous intervals.

    Agents sorted by target velocity form runs of equal representatives; an interval split has one
    run per representative used. Returns ``runs - representatives used`` (0: contiguous intervals).

    :param targets: ``(n_agents,)`` target velocities.
    :param assignment: ``(n_agents,)`` representative of each agent.
    """
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
    contiguous intervals; a fragment of agents that earn little hardly lowers it, where
    :func:`interval_breaks` counts it as a whole break.

    :param targets: ``(n_agents,)`` target velocities.
    :param assignment: ``(n_agents,)`` representative of each agent.
    :param returns: ``(n_agents,)`` each agent's return under its representative (non-negative).
    :return: in [0, 1]; 1 when nobody earns anything.
    """
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


EXPERIMENT = register(
    Experiment(
        name="velocity",
        tasks=ROBOTS,
        params=PARAMS,
        run=run,
        env_steps=env_steps,
        # planning rates (env steps/s on one core of the 2-core dev machine, one torch thread); --dry-run
        # replaces them by the store's own measured cells as soon as it has some
        steps_per_second={"HalfCheetah": 2_800.0, "Hopper": 2_800.0, "Walker2d": 2_600.0, "Ant": 1_800.0},
        shares_k1=True,
        metrics=METRICS,
    )
)
