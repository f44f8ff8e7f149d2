"""``RMDPA2C``: SB3's A2C at n = k = 1 bit for bit, and A2C's r-MDP training with every assigner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from conftest import assert_same_training, make_scaled
from stable_baselines3 import A2C

from sb3_rmdp import RMDPA2C, export_representative
from sb3_rmdp.assigners import make_assigner
from sb3_rmdp.envs import SingleAgentRMDP, make_rmdp_vec_env


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"normalize_advantage": True, "use_rms_prop": False, "n_steps": 16, "gae_lambda": 0.9}],
    ids=["defaults", "adam-normalized"],
)
def test_one_agent_one_representative_is_sb3_a2c(env_id: str, kwargs: dict[str, Any]) -> None:
    # Pendulum ends every episode by time-limit truncation: this also checks the value bootstrap.
    reference = A2C("MlpPolicy", gym.make(env_id), seed=3, **kwargs).learn(400)
    ours = RMDPA2C("MlpPolicy", SingleAgentRMDP(gym.make(env_id)), k=1, seed=3, **kwargs).learn(400)
    assert_same_training(reference, ours)


@pytest.mark.parametrize("assigner", ["em", "end_to_end", "kmeans", "random", "oracle"])
def test_every_assigner_trains_saves_and_resumes(assigner: str, tmp_path: Path) -> None:
    env = make_rmdp_vec_env(make_scaled, n_envs=2)
    model = RMDPA2C("MlpPolicy", env, k=2, assigner=make_assigner(assigner), n_steps=8, seed=0)
    model.learn(400)
    assert set(model.assignment()) <= {0, 1} and len(model.assignment()) == 3
    if assigner in ("em", "random", "kmeans"):  # these never leave a representative without agents
        assert np.bincount(model.assignment(), minlength=2).min() >= 1
    model.save(tmp_path / "a2c.zip")
    loaded = RMDPA2C.load(tmp_path / "a2c.zip", env=model.get_env(), force_reset=False)
    np.testing.assert_array_equal(loaded.assignment(), model.assignment())
    loaded.learn(160, reset_num_timesteps=False)
    assert loaded.num_timesteps == 560


def test_a_representative_exports_as_sb3_a2c(tmp_path: Path) -> None:
    model = RMDPA2C("MlpPolicy", make_rmdp_vec_env(make_scaled, n_envs=2), k=2, n_steps=8, seed=0).learn(160)
    exported = A2C.load(export_representative(model, 1, tmp_path / "rep1"))
    obs = np.stack([gym.make("CartPole-v1").reset(seed=s)[0] for s in range(8)])
    np.testing.assert_array_equal(
        exported.predict(obs, deterministic=True)[0],
        model.predict(obs, representative=1, deterministic=True)[0],
    )
    assert type(exported.policy.optimizer).__name__ == "RMSprop"
