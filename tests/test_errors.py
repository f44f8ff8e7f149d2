"""Bad input gets a ValueError that names the problem and the fix."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import make_scaled

from sb3_rmdp import RMDPPPO, FixedAssigner
from sb3_rmdp.envs import make_rmdp_vec_env

SMALL = dict(n_steps=16, batch_size=16, n_epochs=1)


def test_scalar_reward_env_is_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"reward_space.*SingleAgentRMDP"):
        RMDPPPO("MlpPolicy", "CartPole-v1")
    with pytest.raises(ValueError, match="reward_space"):
        RMDPPPO("MlpPolicy", gym.make("CartPole-v1"))


def test_more_representatives_than_agents() -> None:
    with pytest.raises(ValueError, match=r"k=4 representatives for 3 agents.*1 <= k <= n_agents"):
        RMDPPPO("MlpPolicy", make_scaled(n_agents=3), k=4)


@pytest.mark.parametrize("k", [0, -1])
def test_fewer_than_one_representative(k: int) -> None:
    with pytest.raises(ValueError, match="k >= 1"):
        RMDPPPO("MlpPolicy", make_scaled(), k=k)


def test_env_slots_not_a_multiple_of_k() -> None:
    with pytest.raises(ValueError, match=r"n_envs=5 .* k=2 .* multiple of k"):
        RMDPPPO("MlpPolicy", make_scaled, k=2, n_envs=5)
    vec_env = make_rmdp_vec_env(make_scaled, n_envs=3)
    with pytest.raises(ValueError, match="multiple of k"):
        RMDPPPO("MlpPolicy", vec_env, k=2)


@pytest.mark.parametrize(
    ("bad", "message"), [("shape", r"shape \(4,\).*3 agents"), ("nan", "non-finite.*agents \\[0\\]")]
)
def test_bad_reward_vectors(bad: str, message: str) -> None:
    model = RMDPPPO("MlpPolicy", make_scaled(bad=bad), k=1, **SMALL)
    with pytest.raises(ValueError, match=message):
        model.learn(16)


@pytest.mark.parametrize("assignment", [np.zeros(2, dtype=int), np.full((3, 3), 1 / 3), np.array([0, 1, 2])])
def test_assignment_of_the_wrong_shape_or_range(assignment: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"[Aa]ssignment"):
        RMDPPPO("MlpPolicy", make_scaled, k=2, n_envs=2, assigner=FixedAssigner(assignment))


def test_vec_env_without_agent_rewards() -> None:
    from stable_baselines3.common.env_util import make_vec_env

    with pytest.raises(ValueError, match="AgentRewardsWrapper"):
        RMDPPPO("MlpPolicy", make_vec_env(make_scaled, n_envs=1), k=1)


def test_predict_without_a_representative_when_k_is_above_one() -> None:
    model = RMDPPPO("MlpPolicy", make_scaled, k=2, n_envs=2, **SMALL)
    obs = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="representative=j"):
        model.predict(obs)
    with pytest.raises(ValueError, match=r"integers in \[0, 2\)"):
        model.predict(obs, representative=2)
