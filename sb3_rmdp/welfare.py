"""Social welfare of an assignment, and the agent-returns table from real evaluation episodes.

Vocabulary: a *table* ``Q`` ``(n_agents, k)`` holds the return agent i gets from representative j;
an *assignment* is either hard, ``(n_agents,)`` representative indices, or soft, ``(n_agents, k)``
weights with rows on the simplex.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sb3_rmdp.envs.contract import agent_rewards_of

if TYPE_CHECKING:
    from sb3_rmdp.core import RMDPAlgorithm


#: the hard assignment of an agent that takes its outside option (declines every representative)
OPT_OUT = -1


def _as_weights(assignment: np.ndarray, n_agents: int, k: int) -> np.ndarray:
    array = np.asarray(assignment)
    if array.ndim == 1:
        if array.shape != (n_agents,):
            raise ValueError(f"Hard assignment of shape {array.shape}; expected ({n_agents},).")
        hard = array.astype(np.int64)
        weights = np.zeros((n_agents, k))
        served = hard != OPT_OUT
        weights[np.flatnonzero(served), hard[served]] = 1.0
        return weights
    if array.shape != (n_agents, k):
        raise ValueError(f"Assignment of shape {array.shape}; expected ({n_agents},) or ({n_agents}, {k}).")
    return array.astype(np.float64)


def agent_welfare(table: np.ndarray, assignment: np.ndarray, outside: np.ndarray | None = None) -> np.ndarray:
    """Each agent's expected return ``sum_j alpha[i, j] Q[i, j]``, or its outside value if it opts out.

    :param table: ``(n_agents, k)``.
    :param assignment: hard ``(n_agents,)`` (:data:`OPT_OUT` for an agent that declines every
        representative) or soft ``(n_agents, k)``.
    :param outside: ``(n_agents,)`` outside values ``u_i``, what an opted-out agent gets (``None``: 0).
    :return: ``(n_agents,)``.
    """
    table = np.asarray(table, dtype=np.float64)
    values = (_as_weights(assignment, *table.shape) * table).sum(axis=1)
    hard = np.asarray(assignment)
    if outside is not None and hard.ndim == 1:
        values = np.where(hard == OPT_OUT, np.asarray(outside, dtype=np.float64), values)
    return values


def utilitarian_welfare(
    table: np.ndarray, assignment: np.ndarray, outside: np.ndarray | None = None
) -> float:
    """The social welfare of the paper: the mean over agents of their expected return."""
    return float(agent_welfare(table, assignment, outside).mean())


def egalitarian_welfare(
    table: np.ndarray, assignment: np.ndarray, outside: np.ndarray | None = None
) -> float:
    """The worst-off agent's expected return (min over agents)."""
    return float(agent_welfare(table, assignment, outside).min())


def nash_welfare(table: np.ndarray, assignment: np.ndarray, outside: np.ndarray | None = None) -> float:
    """Nash welfare: the geometric mean of the agents' expected returns.

    Defined for non-negative returns; it is 0 as soon as one agent gets 0 or less.
    """
    values = agent_welfare(table, assignment, outside)
    if np.any(values <= 0):
        return 0.0
    return float(np.exp(np.log(values).mean()))


def welfare_figures(values: np.ndarray, served: np.ndarray | None = None) -> dict[str, float]:
    """What a report shows of the agents' values ``(n_agents,)``: the three welfares, the worst-off
    agent, the 10th percentile, and (with ``served`` ``(n_agents,)`` bool) the share of agents served."""
    values = np.asarray(values, dtype=np.float64)
    figures = {
        "utilitarian": float(values.mean()),
        "egalitarian": float(values.min()),
        "nash": 0.0 if np.any(values <= 0) else float(np.exp(np.log(values).mean())),
        "p10": float(np.percentile(values, 10)),
    }
    if served is not None:
        figures["served_share"] = float(np.mean(served))
    return figures


def best_assignment(table: np.ndarray) -> np.ndarray:
    """The deployed assignment for a table: each agent picks its best representative.

    :param table: ``(n_agents, k)``.
    :return: ``(n_agents,)`` (ties go to the lowest index).
    """
    return np.asarray(table).argmax(axis=1)


def evaluate_agent_returns(
    model: RMDPAlgorithm,
    env: Any,
    n_episodes: int = 1,
    deterministic: bool = True,
) -> np.ndarray:
    """Run real evaluation episodes of every representative and average every agent's return.

    :param model: a trained model (:class:`~sb3_rmdp.RMDPPPO` or another algorithm of the package).
    :param env: an env id, an r-MDP gymnasium env or a VecEnv built by
        :func:`~sb3_rmdp.envs.make_rmdp_vec_env` (use the training VecNormalize statistics if any).
    :param n_episodes: episodes per representative, spread over the VecEnv's slots as SB3's
        ``evaluate_policy`` does (so short episodes are not over-counted).
    :param deterministic: act with the mode of each representative's distribution.
    :return: the table ``Q`` ``(n_agents, k)``: mean undiscounted return of agent i under representative j.
    """
    from sb3_rmdp.envs.vec_env import as_rmdp_vec_env

    if n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes}: evaluate at least one episode per representative.")
    vec_env = as_rmdp_vec_env(env)
    table = np.zeros((model.n_agents, model.k))
    for j in range(model.k):
        table[:, j] = _mean_episode_return(model, vec_env, j, n_episodes, deterministic)
    return table


def act(
    model: Any,
    obs: Any,
    env: Any,
    state: Any,
    episode_start: np.ndarray,
    deterministic: bool,
    representative: int,
) -> tuple[np.ndarray, Any]:
    """One action (and the next recurrent state) of ``representative`` for observations of ``env``.

    The model's ``predict_in_env`` where it has one (it reads what the algorithm needs from the env
    besides the observations, e.g. action masks), else its ``predict(obs, deterministic=,
    representative=)`` (any object with ``k`` and that method serves as a committee).
    """
    predict_in_env = getattr(model, "predict_in_env", None)
    if predict_in_env is not None:
        return predict_in_env(obs, env, state, episode_start, deterministic, representative)
    return model.predict(obs, deterministic=deterministic, representative=representative)


def _mean_episode_return(
    model: RMDPAlgorithm, vec_env: Any, representative: int, n_episodes: int, deterministic: bool
) -> np.ndarray:
    n_envs = vec_env.num_envs
    targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
    counts = np.zeros(n_envs, dtype=np.int64)
    running = np.zeros((n_envs, model.n_agents))
    total = np.zeros(model.n_agents)
    obs = vec_env.reset()
    # `state` and `episode_start` as in SB3's evaluate_policy: recurrent policies carry their memory
    state, episode_start = None, np.ones(n_envs, dtype=bool)
    while np.any(counts < targets):
        actions, state = act(model, obs, vec_env, state, episode_start, deterministic, representative)
        obs, _, dones, infos = vec_env.step(actions)
        episode_start = dones
        running += agent_rewards_of(infos, vec_env)
        for e in np.flatnonzero(dones):
            if counts[e] < targets[e]:
                total += running[e]
                counts[e] += 1
            running[e] = 0.0
    return total / n_episodes
