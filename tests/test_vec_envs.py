"""SB3's VecEnvs carry r-MDP envs unchanged: Subproc, VecMonitor, VecNormalize(norm_reward=False)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from conftest import make_scaled
from stable_baselines3.common.vec_env import SubprocVecEnv, VecMonitor, VecNormalize

from sb3_rmdp import RMDPPPO
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.welfare import evaluate_agent_returns


def test_subproc_vecmonitor_and_vecnormalize_train_and_keep_raw_agent_rewards() -> None:
    vec_env = make_rmdp_vec_env(make_scaled, n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, monitor=False)
    vec_env = VecNormalize(VecMonitor(vec_env), norm_obs=True, norm_reward=False)
    try:
        model = RMDPPPO("MlpPolicy", vec_env, k=2, n_steps=64, batch_size=64, n_epochs=1, seed=0)
        model.learn(256)
        # CartPole pays 1 per step: agent i gets (i + 1) per step, so its episode return is (i + 1) x length.
        for returns in model.rollout_episode_returns:
            assert len(returns) > 0
            assert np.allclose(returns / returns[:, :1], [1.0, 2.0, 3.0])
        assert len(model.ep_info_buffer) > 0  # VecMonitor's episode statistics reach SB3's logs
        assert vec_env.obs_rms.count > 256  # observations were normalized
    finally:
        vec_env.close()


def test_env_id_gym_env_and_vec_env_are_all_accepted() -> None:
    by_id = RMDPPPO("MlpPolicy", "sb3_rmdp/ResourceGathering-v0", k=5, n_steps=8, batch_size=40)
    assert by_id.n_envs == 5 and by_id.n_agents == 25 and by_id.agent_params.shape == (25, 2)
    by_env = RMDPPPO("MlpPolicy", gym.make("sb3_rmdp/ResourceGathering-v0"), k=2, n_steps=8, batch_size=16)
    assert by_env.n_envs == 2
    by_vec = RMDPPPO(
        "MlpPolicy",
        make_rmdp_vec_env("sb3_rmdp/ResourceGathering-v0", n_envs=6),
        k=3,
        n_steps=8,
        batch_size=48,
    )
    assert by_vec.n_envs == 6
    table = evaluate_agent_returns(by_vec, "sb3_rmdp/ResourceGathering-v0", n_episodes=2)
    assert table.shape == (25, 3) and np.all(table >= 0)
