"""``ResourceGatheringVec`` equals a DummyVecEnv of ``ResourceGathering`` step for step, trains the same."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_rmdp import RMDPPPO
from sb3_rmdp.envs import AgentRewardsWrapper, ResourceGatheringVec, as_rmdp_vec_env, make_rmdp_vec_env
from sb3_rmdp.envs.vec_env import vec_env_agent_params, vec_env_n_agents

ENV_ID = "sb3_rmdp/ResourceGathering-v0"


def _reference(num_envs: int, **env_kwargs: Any) -> DummyVecEnv:
    vec_env = make_rmdp_vec_env(ENV_ID, n_envs=num_envs, env_kwargs=env_kwargs)
    assert isinstance(vec_env, DummyVecEnv)
    return vec_env


def _assert_same_info(info: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(info) == set(expected)
    for key, value in expected.items():
        if key == "episode":
            assert info[key]["r"] == value["r"] and info[key]["l"] == value["l"]
            assert isinstance(info[key]["l"], int) and isinstance(info[key]["r"], float)
        elif isinstance(value, np.ndarray):
            assert info[key].dtype == value.dtype and info[key].shape == value.shape
            np.testing.assert_array_equal(info[key], value)
        else:
            assert info[key] == value and type(info[key]) is type(value)


@pytest.mark.parametrize(
    ("env_kwargs", "p_up"),
    [({}, 0.25), ({}, 0.6), ({"reward_scale": 0.37}, 0.4), ({"size": 3, "max_steps": 6}, 0.5)],
)
def test_same_transitions_as_dummy_vec_env(env_kwargs: dict[str, Any], p_up: float) -> None:
    num_envs = 4
    reference, batched = _reference(num_envs, **env_kwargs), ResourceGatheringVec(num_envs, **env_kwargs)
    obs, expected_obs = batched.reset(), reference.reset()
    assert isinstance(obs, np.ndarray) and isinstance(expected_obs, np.ndarray)
    assert obs.dtype == expected_obs.dtype == np.float32
    np.testing.assert_array_equal(obs, expected_obs)
    assert batched.reset_infos == reference.reset_infos

    rng = np.random.default_rng(0)
    p_rest = (1.0 - p_up) / 3
    n_done, n_cutoff, n_paid = 0, 0, 0
    for _ in range(400):
        actions = rng.choice(4, size=num_envs, p=[p_up, p_rest, p_rest, p_rest])
        obs, rewards, dones, infos = batched.step(actions)
        expected_obs, expected_rewards, expected_dones, expected_infos = reference.step(actions)
        np.testing.assert_array_equal(obs, expected_obs)
        assert rewards.dtype == expected_rewards.dtype == np.float32
        np.testing.assert_array_equal(rewards, expected_rewards)
        np.testing.assert_array_equal(dones, expected_dones)
        for info, expected in zip(infos, expected_infos):
            _assert_same_info(info, expected)
        assert batched.reset_infos == reference.reset_infos
        n_done += int(dones.sum())
        n_paid += sum(float(info["agent_rewards"].sum()) > 0 for info in infos)
        n_cutoff += sum(d and float(i["agent_rewards"].sum()) == 0 for d, i in zip(dones, infos))
    # The random walks exercised home returns with payments and cutoffs away from home.
    assert n_done > 20 and n_paid > 5 and n_cutoff > 0


def test_contract_attributes_and_rmdp_checks() -> None:
    batched = ResourceGatheringVec(6)
    assert as_rmdp_vec_env(batched) is batched
    assert vec_env_n_agents(batched) == 25
    np.testing.assert_array_equal(vec_env_agent_params(batched), vec_env_agent_params(_reference(1)))
    assert batched.get_attr("reward_space", indices=[0])[0].shape == (25,)
    assert batched.env_is_wrapped(AgentRewardsWrapper) == [True] * 6
    assert batched.env_is_wrapped(Monitor) == [True] * 6
    assert ResourceGatheringVec(2, monitor=False).env_is_wrapped(Monitor) == [False, False]
    assert batched.seed(3) == [3, 4, 5, 6, 7, 8]
    batched.set_attr("reward_scale", 2.0)
    assert batched.get_attr("reward_scale") == [2.0] * 6
    with pytest.raises(AttributeError, match="all slots"):
        batched.set_attr("reward_scale", 1.0, indices=[0])
    with pytest.raises(AttributeError, match="arrays"):
        batched.get_attr("_row")
    with pytest.raises(RuntimeError, match="reset"):
        batched.step(np.zeros(6, dtype=np.int64))
    batched.reset()
    with pytest.raises(ValueError, match="Invalid actions"):
        batched.step(np.full(6, 4))


def _train(env: Any, total: int) -> RMDPPPO:
    model = RMDPPPO("MlpPolicy", env, k=3, n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu")
    return model.learn(total)


def test_trains_bit_identically_to_dummy_vec_env() -> None:
    total = 3 * 64 * 3
    batched = _train(ResourceGatheringVec(3), total)
    reference = _train(_reference(3), total)
    assert batched.num_timesteps == reference.num_timesteps == total
    for (name, value), expected in zip(
        batched.policy.state_dict().items(), reference.policy.state_dict().values()
    ):
        assert th.equal(value, expected), name
    np.testing.assert_array_equal(batched.training_returns, reference.training_returns)
    episodes, expected_episodes = batched.ep_info_buffer, reference.ep_info_buffer
    assert episodes is not None and expected_episodes is not None
    assert len(episodes) > 0  # Monitor-like episode statistics reach SB3's logs
    assert [(e["r"], e["l"]) for e in episodes] == [(e["r"], e["l"]) for e in expected_episodes]
