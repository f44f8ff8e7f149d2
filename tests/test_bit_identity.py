"""With n_agents=1 and k=1, RMDPPPO is SB3's PPO: the same parameters, bit for bit."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3 import PPO

from sb3_rmdp import RMDPPPO
from sb3_rmdp.assigners import make_assigner
from sb3_rmdp.envs import SingleAgentRMDP


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
@pytest.mark.parametrize("assigner", ["em", "random", "end_to_end"])
def test_one_agent_one_representative_is_sb3_ppo(env_id: str, assigner: str) -> None:
    # Pendulum ends every episode by time-limit truncation: this also checks the value bootstrap.
    kwargs = dict(n_steps=256, batch_size=64, n_epochs=3, seed=7)
    reference = PPO("MlpPolicy", gym.make(env_id), **kwargs).learn(3 * 256)
    ours = RMDPPPO(
        "MlpPolicy",
        SingleAgentRMDP(gym.make(env_id)),
        k=1,
        assigner=make_assigner(assigner),
        **kwargs,
    ).learn(3 * 256)

    expected = dict(reference.policy.named_parameters())
    got = dict(ours.policy.named_parameters())
    assert sorted(expected) == sorted(got)
    for name, parameter in expected.items():
        assert th.equal(parameter.detach().flatten(), got[name].detach().flatten()), name
    # The optimizer moments too: the next update would be identical as well.
    for p_ref, p_ours in zip(reference.policy.parameters(), ours.policy.parameters()):
        s_ref, s_ours = reference.policy.optimizer.state[p_ref], ours.policy.optimizer.state[p_ours]
        assert th.equal(s_ref["exp_avg"].flatten(), s_ours["exp_avg"].flatten())
        assert th.equal(s_ref["exp_avg_sq"].flatten(), s_ours["exp_avg_sq"].flatten())
    assert ours.num_timesteps == reference.num_timesteps
