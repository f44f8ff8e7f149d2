"""Preference populations over MO-Gymnasium: w_i . r_vec exactly, seeding, MO envs as r-MDPs, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sb3_rmdp  # noqa: F401  (registers the envs)
from sb3_rmdp import RMDPPPO
from sb3_rmdp.envs import agent_params_of, n_agents_of
from sb3_rmdp.envs.preference import PreferencePopulation, dirichlet_preferences, make_mo_env


def _random_actions(space: gym.Space, n: int, seed: int) -> list:
    space.seed(seed)
    return [space.sample() for _ in range(n)]


@pytest.mark.parametrize("mo_env", ["mo-halfcheetah-v5", "resource-gathering-v0"])
def test_each_agent_gets_its_weighted_reward_exactly(mo_env: str) -> None:
    base = make_mo_env(mo_env)
    population = PreferencePopulation(make_mo_env(mo_env), n_agents=9, seed=4)
    weights = agent_params_of(population)
    d = base.unwrapped.reward_space.shape[0]
    assert weights.shape == (9, d) and np.allclose(weights.sum(axis=1), 1.0) and np.all(weights >= 0)
    assert n_agents_of(population) == 9
    base.reset(seed=0)
    population.reset(seed=0)
    nonzero = 0
    for action in _random_actions(base.action_space, 300, seed=1):
        _, reward_vector, done, cut, _ = base.step(action)
        _, rewards, done_p, cut_p, _ = population.step(action)
        assert rewards.shape == (9,) and rewards.dtype == np.float32
        assert np.allclose(rewards, weights @ reward_vector, rtol=1e-6, atol=1e-7)
        assert (done, cut) == (done_p, cut_p)
        nonzero += bool(np.any(reward_vector != 0))
        if done or cut:
            base.reset()
            population.reset()
    assert nonzero > 0  # the comparison saw real rewards


def test_preferences_are_reproducible_from_the_seed() -> None:
    assert np.array_equal(dirichlet_preferences(5, 3, seed=2), dirichlet_preferences(5, 3, seed=2))
    assert not np.array_equal(dirichlet_preferences(5, 3, seed=2), dirichlet_preferences(5, 3, seed=3))
    env = gym.make("sb3_rmdp/Preference-v0", mo_env="resource-gathering-v0", n_agents=4, seed=2)
    assert np.array_equal(agent_params_of(env), dirichlet_preferences(4, 3, seed=2))


def test_reward_space_bounds_hold_the_weighted_rewards() -> None:
    population = PreferencePopulation(make_mo_env("resource-gathering-v0"), n_agents=6, seed=0)
    space = population.reward_space
    assert space.shape == (6,)
    # resource-gathering's objectives lie in [-1, 0] x [0, 1] x [0, 1]
    assert np.all(space.low <= 0) and np.all(space.high <= 1) and np.all(space.low >= -1)


def test_rmdpppo_trains_on_a_preference_population_and_on_a_raw_mo_env() -> None:
    model = RMDPPPO(
        "MlpPolicy",
        "sb3_rmdp/Preference-v0",
        k=2,
        env_kwargs={"mo_env": "resource-gathering-v0", "n_agents": 6, "seed": 0},
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        policy_kwargs={"net_arch": [8]},
        seed=0,
    )
    model.learn(128)
    assert model.n_agents == 6 and model.agent_params.shape == (6, 3)
    # an MO-Gymnasium env directly: one agent per objective
    raw = RMDPPPO(
        "MlpPolicy",
        lambda: make_mo_env("resource-gathering-v0"),
        k=2,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        policy_kwargs={"net_arch": [8]},
        seed=0,
    )
    raw.learn(128)
    assert raw.n_agents == 3 and raw.assignment().shape == (3,)


def test_bad_preference_kwargs_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="at least one agent"):
        PreferencePopulation(make_mo_env("resource-gathering-v0"), n_agents=0)
    with pytest.raises(ValueError, match=r"shape \(n_agents, 3\)"):
        PreferencePopulation(make_mo_env("resource-gathering-v0"), weights=np.ones((4, 2)) / 2)
    with pytest.raises(ValueError, match="Unknown MO-Gymnasium env"):
        make_mo_env("mo-no-such-env-v0")
    with pytest.raises(ValueError, match="not an r-MDP env"):
        PreferencePopulation(gym.make("CartPole-v1"), n_agents=2)
