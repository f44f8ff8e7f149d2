"""Serving a new agent: pick its representative from a trained committee.

- **Zero-shot** (:func:`zero_shot_select`): the new agent's params are known; it gets the
  representative of the nearest prototype (L-infinity), as PACMAN's zero-shot guarantee assumes. Needs
  the prototypes of an epsilon-cover (a model trained with
  :class:`~sb3_rmdp.assigners.CoverageAssigner`, or a :class:`~sb3_rmdp.committee.CoverResult`).
- **Few-shot** (:func:`select_representative`): the new agent's reward can be observed; each of the k
  representatives runs a few episodes in the new agent's env and the best is kept. The cost is
  ``k * n_episodes`` episodes, whatever the size of the state and action spaces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from sb3_rmdp.committee.cover import CoverResult, linf_distances
from sb3_rmdp.envs.contract import n_agents_of
from sb3_rmdp.welfare import act

if TYPE_CHECKING:
    from sb3_rmdp.core import RMDPAlgorithm


def committee_prototypes(committee: RMDPAlgorithm | CoverResult | np.ndarray) -> np.ndarray:
    """The prototypes ``(k, d)`` of a committee: a model trained with ``CoverageAssigner``, a cover, or
    the prototypes themselves.

    :raises ValueError: if the model's assigner did not compute a cover.
    """
    if isinstance(committee, CoverResult):
        return committee.prototypes
    if isinstance(committee, np.ndarray | list):
        prototypes = np.asarray(committee, dtype=np.float64)
        if prototypes.ndim != 2 or len(prototypes) < 1:
            raise ValueError(f"prototypes of shape {prototypes.shape}: pass an array (k, d), one row each.")
        return prototypes
    cover = getattr(getattr(committee, "assigner", None), "cover", None)
    if not isinstance(cover, CoverResult):
        assigner = type(getattr(committee, "assigner", None)).__name__
        raise ValueError(
            f"Zero-shot selection needs the prototypes of an epsilon-cover, but this model's assigner "
            f"({assigner}) has none: train with assigner=CoverageAssigner(epsilon), pass the prototypes "
            "(k, d) yourself, or pick by a few episodes with select_representative(model, env)."
        )
    return cover.prototypes


def zero_shot_select(
    committee: RMDPAlgorithm | CoverResult | np.ndarray, new_params: np.ndarray | float
) -> int:
    """The representative of a new agent from its params alone: the nearest prototype in L-infinity.

    :param committee: a model trained with :class:`~sb3_rmdp.assigners.CoverageAssigner`, its
        :class:`~sb3_rmdp.committee.CoverResult`, or prototypes ``(k, d)``.
    :param new_params: the new agent's params ``(d,)`` (a number when ``d = 1``).
    :return: the representative ``j`` in ``[0, k)`` (ties to the lowest index).
    :raises ValueError: if ``new_params`` does not have the prototypes' dimension d.
    """
    prototypes = committee_prototypes(committee)
    d = prototypes.shape[1]
    params = np.asarray(new_params, dtype=np.float64)
    if params.size != d or params.ndim > 2 or (params.ndim == 2 and params.shape[0] != 1):
        raise ValueError(
            f"The new agent's params have shape {params.shape}, but the committee's agents have d={d} "
            f"params: pass one agent's params as an array of shape ({d},)."
        )
    if not np.all(np.isfinite(params)):
        raise ValueError("The new agent's params contain NaN or inf: pass finite params.")
    return int(linf_distances(params.reshape(1, d), prototypes)[0].argmin())


def select_representative(
    model: RMDPAlgorithm | Any,
    env: gym.Env,
    n_episodes: int = 3,
    deterministic: bool = True,
    seed: int | None = 0,
    agent: int | None = None,
) -> tuple[int, np.ndarray]:
    """Few-shot selection: run every representative in the new agent's env and keep the best.

    Every representative plays the same ``n_episodes`` episodes (episode e starts from
    ``env.reset(seed=seed + e)``), so the comparison is not blurred by different starts.

    :param model: a trained model of the package (anything with ``k`` and
        ``predict(obs, representative=j, deterministic=...)``).
    :param env: the new agent's env, any of: a scalar-reward env whose reward is the new agent's; an
        r-MDP with one agent (e.g. a velocity population with ``targets=[v_new]``); or an r-MDP of
        several agents with ``agent`` the new agent's index in it (e.g. your own env built with the new
        agent's params among the others). Its observations must look like the model's training
        observations (apply the same normalization).
    :param n_episodes: episodes per representative.
    :param deterministic: act with the mode of each representative's distribution.
    :param seed: seed of the first episode's reset (``None``: unseeded resets).
    :param agent: which entry of an r-MDP's reward vector is the new agent's (needed with several).
    :return: the best representative ``j`` and the mean returns ``(k,)`` of all of them.
    :raises ValueError: for an r-MDP of several agents without ``agent`` (or with one out of range), or
        ``n_episodes < 1``.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes}: run at least one episode per representative.")
    column = _reward_column(env, agent)
    returns = np.zeros(int(model.k))
    for j in range(len(returns)):
        for episode in range(n_episodes):
            returns[j] += _episode_return(
                model, env, j, deterministic, None if seed is None else seed + episode, column
            )
    returns /= n_episodes
    return int(returns.argmax()), returns


def _reward_column(env: gym.Env, agent: int | None) -> int | None:
    """The entry of the env's reward vector that is the new agent's (``None``: a scalar reward)."""
    try:
        n_agents = n_agents_of(env)
    except ValueError:  # no reward_space: a scalar-reward env, the new agent's own
        if agent not in (None, 0):
            raise ValueError(
                f"agent={agent}: this env has a scalar reward (one agent): leave agent out."
            ) from None
        return None
    if agent is None:
        if n_agents != 1:
            raise ValueError(
                f"select_representative needs the new agent's reward, and this r-MDP has {n_agents} agents: "
                "pass agent=i, the new agent's index in its reward vector (or give the new agent's own "
                "scalar-reward env, or an r-MDP with one agent, the new agent alone, e.g. "
                "VelocityPopulation(env, b, targets=[v_new]))."
            )
        return 0
    if int(agent) != agent or not 0 <= agent < n_agents:
        raise ValueError(f"agent={agent}: this r-MDP has {n_agents} agents, 0 <= agent < {n_agents}.")
    return int(agent)


def _episode_return(
    model: Any, env: gym.Env, representative: int, deterministic: bool, seed: int | None, column: int | None
) -> float:
    """Undiscounted return of one episode of ``representative``: the reward's ``column`` (or the scalar)."""
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    state, episode_start = None, np.ones(1, dtype=bool)
    while not done:
        action, state = act(model, obs, env, state, episode_start, deterministic, representative)
        obs, reward, terminated, truncated, _ = env.step(action)
        episode_start = np.zeros(1, dtype=bool)
        total += float(np.asarray(reward, dtype=np.float64).reshape(-1)[column or 0])
        done = bool(terminated or truncated)
    return total
