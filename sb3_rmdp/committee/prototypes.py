"""Prototype populations: train each representative on its prototype's own reward (PACMAN's step 2).

``RMDPPPO`` learns from the per-agent rewards the env returns, so the simplest honest way to train a
representative on a prototype's reward is to make the prototype an agent: :func:`prototype_population`
rebuilds the population with the k prototypes appended as agents ``n_agents .. n_agents + k - 1``, and
``CoverageAssigner(train_on="prototype")`` gives representative j weight 1 on prototype agent
``n_agents + j`` only; :func:`population_with_agents` builds any set of agents, e.g. one new agent
for few-shot selection. This needs a population that computes the reward of *any* parameter: velocity
populations (a target speed) and preference populations (a preference vector) do.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from sb3_rmdp.committee.cover import CoverResult
from sb3_rmdp.envs.preference import PreferencePopulation
from sb3_rmdp.envs.velocity import VelocityPopulation


def find_population(env: gym.Env) -> VelocityPopulation | PreferencePopulation | None:
    """The velocity or preference population along ``env``'s wrapper chain (the outermost), or ``None``."""
    current: gym.Env = env
    while True:
        if isinstance(current, (VelocityPopulation, PreferencePopulation)):
            return current
        if not isinstance(current, gym.Wrapper):
            return None
        current = current.env


def _require_population(env: gym.Env) -> VelocityPopulation | PreferencePopulation:
    population = find_population(env)
    if population is None:
        raise ValueError(
            f"{env.unwrapped.__class__.__name__} is not a population that computes the reward of any "
            "parameter (VelocityPopulation or PreferencePopulation), so it cannot serve new agents or "
            "prototypes: with CoverageAssigner use train_on='agents', which trains each representative "
            "on its agents' rewards."
        )
    return population


def population_with_agents(
    env: gym.Env, agent_params: np.ndarray | list
) -> VelocityPopulation | PreferencePopulation:
    """The same population over the same base env, with the given agents instead of its own.

    E.g. a population of one new agent, for :func:`~sb3_rmdp.deploy.select_representative`. Wrappers
    outside the population are not kept, and the given ``env`` should be used no more: the two share
    the base env.

    :param env: a velocity or preference population (wrapped or not).
    :param agent_params: ``(n_agents, d)`` the new agents' params: target speeds ``(n_agents, 1)`` for
        a velocity population, preference weights ``(n_agents, n_objectives)`` for a preference one.
    :return: a population of ``n_agents`` agents.
    :raises ValueError: if ``env`` cannot compute the reward of any parameter, or the params do not fit.
    """
    population = _require_population(env)
    params = np.asarray(agent_params, dtype=np.float64)
    d = population.agent_params.shape[1]
    if params.ndim != 2 or params.shape[1] != d or len(params) < 1:
        raise ValueError(
            f"agent_params of shape {params.shape} do not fit {type(population).__name__}, whose agents "
            f"have d={d} params: pass an array (n_agents, {d})."
        )
    if isinstance(population, VelocityPopulation):
        return VelocityPopulation(population.env, population.b, targets=params[:, 0])
    return PreferencePopulation(population.env, weights=params)


def prototype_population(env: gym.Env, cover: CoverResult) -> VelocityPopulation | PreferencePopulation:
    """The same population with the cover's k prototypes appended as agents.

    The returned env (see :func:`population_with_agents`) has ``n_agents + k`` agents and
    ``agent_params`` ``(n_agents + k, d)`` whose last k rows are ``cover.prototypes``: the env for
    ``CoverageAssigner(train_on="prototype")``.

    :param env: a velocity or preference population (wrapped or not), the one the cover was computed on.
    :param cover: :func:`~sb3_rmdp.committee.epsilon_cover` of that population's ``agent_params``.
    :return: the extended population.
    :raises ValueError: if ``env`` cannot compute the reward of a prototype, or the cover does not
        belong to it.
    """
    population = _require_population(env)
    params = np.asarray(population.agent_params, dtype=np.float64)
    if cover.n_agents != len(params) or cover.prototypes.shape[1] != params.shape[1]:
        raise ValueError(
            f"The cover has {cover.n_agents} agents with {cover.prototypes.shape[1]} params each, the "
            f"population {len(params)} agents with {params.shape[1]}: compute the cover on this "
            "population's agent_params (epsilon_cover(agent_params_of(env), k, epsilon))."
        )
    return population_with_agents(population, np.concatenate([params, cover.prototypes]))
