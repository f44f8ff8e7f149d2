"""``RMDPRecurrentPPO``: sb3-contrib's RecurrentPPO at n = k = 1 bit for bit, LSTM states per env slot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import DictObservation, ScaledRewardsEnv, assert_same_training, make_scaled
from sb3_contrib import RecurrentPPO

from sb3_rmdp import RMDPRecurrentPPO, export_representative
from sb3_rmdp.assigners import EMAssigner, make_assigner
from sb3_rmdp.envs import SingleAgentRMDP, make_rmdp_vec_env
from sb3_rmdp.welfare import evaluate_agent_returns

SMALL: dict[str, Any] = dict(n_steps=64, batch_size=32, n_epochs=2, seed=2)
LSTMS = {
    "two-lstms": dict(lstm_hidden_size=16),
    "feed-forward-critic": dict(lstm_hidden_size=16, enable_critic_lstm=False),
    "shared-lstm": dict(lstm_hidden_size=8, shared_lstm=True, enable_critic_lstm=False),
}


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("lstm", sorted(LSTMS))
def test_one_agent_one_representative_is_sb3_contribs_recurrent_ppo(env_id: str, lstm: str) -> None:
    # Pendulum ends every episode by time-limit truncation: the LSTM critic's bootstrap is checked too.
    kwargs = dict(SMALL, policy_kwargs=LSTMS[lstm])
    reference = RecurrentPPO("MlpLstmPolicy", gym.make(env_id), **kwargs).learn(3 * 64)
    ours = RMDPRecurrentPPO("MlpLstmPolicy", SingleAgentRMDP(gym.make(env_id)), k=1, **kwargs).learn(3 * 64)
    assert_same_training(reference, ours)


def _model(assigner: Any = "em", env: Any = None, **kwargs: Any) -> RMDPRecurrentPPO:
    env = make_rmdp_vec_env(make_scaled, n_envs=2) if env is None else env
    policy_kwargs = {"lstm_hidden_size": 8, **kwargs.pop("policy_kwargs", {})}
    return RMDPRecurrentPPO(
        "MlpLstmPolicy", env, k=2, assigner=assigner, policy_kwargs=policy_kwargs, **{**SMALL, **kwargs}
    )


@pytest.mark.parametrize("assigner", ["em", "end_to_end", "kmeans", "random", "oracle"])
def test_every_assigner_trains_and_evaluates(assigner: str) -> None:
    model = _model(make_assigner(assigner)).learn(3 * 128)
    assert set(model.assignment()) <= {0, 1} and len(model.assignment()) == 3
    if assigner in ("em", "random", "kmeans"):  # these never leave a representative without agents
        assert np.bincount(model.assignment(), minlength=2).min() >= 1
    table = evaluate_agent_returns(model, make_rmdp_vec_env(make_scaled, n_envs=2), n_episodes=2)
    assert table.shape == (3, 2) and np.all(table > 0)


def test_resume_is_bit_exact_with_the_lstm_states_of_the_episodes_in_progress(tmp_path: Path) -> None:
    def assigner() -> EMAssigner:
        return EMAssigner(mixing=0.5, warm_start_updates=1, max_warm_start_fraction=1.0)

    uninterrupted = _model(assigner()).learn(4 * 128)
    model = _model(assigner()).learn(2 * 128)
    assert model._last_lstm_states.pi[0].abs().sum() > 0  # episodes are in progress: states to keep
    model.save(tmp_path / "model.zip")
    env = cloudpickle.loads(cloudpickle.dumps(model.get_env()))
    th.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    loaded = RMDPRecurrentPPO.load(tmp_path / "model.zip", env=env, force_reset=False)
    for saved, restored in zip(model._last_lstm_states, loaded._last_lstm_states, strict=True):
        assert all(th.equal(a, b) for a, b in zip(saved, restored, strict=True))
    loaded.learn(2 * 128, reset_num_timesteps=False)
    assert_same_training(uninterrupted, loaded)
    np.testing.assert_array_equal(uninterrupted.assigner.q_table, loaded.assigner.q_table)


def test_dict_observations_and_a_conditioned_critic() -> None:
    env = make_rmdp_vec_env(lambda: ScaledRewardsEnv(DictObservation(gym.make("CartPole-v1"))), n_envs=2)
    model = RMDPRecurrentPPO(
        "MultiInputLstmPolicy",
        env,
        k=2,
        policy_kwargs={"lstm_hidden_size": 8, "critic": "conditioned"},
        **SMALL,
    ).learn(2 * 128)
    assert model.policy.critic_layout == "conditioned" and model.policy.critic is None
    assert type(model.rollout_buffer).__name__ == "RMDPRecurrentRolloutBuffer"


def test_a_representative_exports_as_recurrent_ppo_and_keeps_its_memory(tmp_path: Path) -> None:
    model = _model().learn(128)
    exported = RecurrentPPO.load(export_representative(model, 1, tmp_path / "rep1.zip"))
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=0)
    ours_state = theirs_state = None
    start = np.ones(1, dtype=bool)
    for _ in range(20):
        ours, ours_state = model.predict(obs[None], ours_state, start, deterministic=True, representative=1)
        theirs, theirs_state = exported.predict(obs[None], theirs_state, start, deterministic=True)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(ours_state[0], theirs_state[0])
        obs, _, terminated, truncated, _ = env.step(int(ours[0]))
        start = np.array([terminated or truncated])
        if start[0]:
            obs, _ = env.reset()
