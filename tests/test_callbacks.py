"""SB3's own callbacks on r-MDP models, as a new user writes them: EvalCallback scores the deployed
assignment, CheckpointCallback saves the whole model, and the assigner may sit in the CallbackList."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_rmdp import RMDPA2C, RMDPPPO, EMAssigner, RandomAssigner, RMDPMaskablePPO, RMDPRecurrentPPO
from sb3_rmdp.callbacks import AgentScoringVecEnv
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.welfare import evaluate_agent_returns, utilitarian_welfare


class Corridor(gym.Env):
    """An r-MDP written from the docs' contract: a walk on 5 cells; agent i is paid 1 per step on cell i.

    Deterministic: the walk starts in the middle, 8 steps, truncated.
    """

    def __init__(self, masked: bool = False):
        self.observation_space = spaces.Box(0.0, 1.0, shape=(5,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)  # 0 left, 1 right
        self.reward_space = spaces.Box(0.0, 1.0, shape=(5,), dtype=np.float32)
        self.agent_params = np.arange(5, dtype=np.float64).reshape(5, 1)
        self.masked = masked
        self.position, self.steps = 2, 0

    def _obs(self) -> np.ndarray:
        return np.eye(5, dtype=np.float32)[self.position]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.position, self.steps = 2, 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, np.ndarray, bool, bool, dict]:
        self.position = int(np.clip(self.position + (1 if int(action) == 1 else -1), 0, 4))
        self.steps += 1
        rewards = np.eye(5, dtype=np.float32)[self.position]
        return self._obs(), rewards, False, self.steps >= 8, {}

    def action_masks(self) -> np.ndarray:  # only on the masked variant (see __getattribute__)
        return np.array([self.position > 0, self.position < 4])

    def __getattribute__(self, name: str) -> Any:
        if name == "action_masks" and not object.__getattribute__(self, "masked"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)


SMALL = dict(n_steps=32, batch_size=32, n_epochs=2, seed=0, policy_kwargs=dict(net_arch=[16]))


def test_eval_checkpoint_and_the_assigner_in_one_callback_list(tmp_path: Path) -> None:
    model = RMDPPPO("MlpPolicy", make_rmdp_vec_env(Corridor, n_envs=2), k=2, assigner=EMAssigner(), **SMALL)
    evaluation = EvalCallback(
        make_rmdp_vec_env(Corridor),
        n_eval_episodes=5,  # one per agent: eval/mean_reward is the deployed welfare
        eval_freq=32,  # calls, as in SB3: 32 steps of 2 slots
        best_model_save_path=str(tmp_path / "best"),
        log_path=str(tmp_path / "eval"),
        verbose=0,
    )
    checkpoints = CheckpointCallback(save_freq=32, save_path=str(tmp_path / "checkpoints"))
    model.learn(8 * 64, callback=CallbackList([model.assigner, evaluation, checkpoints]))

    assert model.assigner.n_rollouts == 8  # run once per rollout, first, not twice
    assert len(evaluation.evaluations_results) == 8
    # eval/mean_reward is the welfare of the deployed assignment, each agent scored by its representative
    welfare = utilitarian_welfare(evaluate_agent_returns(model, Corridor(), n_episodes=1), model.assignment())
    rewards, _ = evaluate_policy(evaluation.model, evaluation.eval_env, n_eval_episodes=5)  # type: ignore[arg-type]
    assert rewards == pytest.approx(welfare)
    assert evaluation.last_mean_reward == pytest.approx(np.mean(evaluation.evaluations_results[-1]))
    # the best model and the checkpoints are whole models
    best = RMDPPPO.load(tmp_path / "best" / "best_model.zip")
    assert best.k == 2 and best.n_agents == 5
    saved = sorted((tmp_path / "checkpoints").glob("*.zip"), key=lambda path: path.stat().st_mtime)
    assert len(saved) == 8 and RMDPPPO.load(saved[-1]).num_timesteps == 8 * 64
    # a second learn reuses the callbacks (the eval env is wrapped once)
    model.learn(64, callback=CallbackList([model.assigner, evaluation]), reset_num_timesteps=False)
    assert isinstance(evaluation.eval_env, AgentScoringVecEnv)
    assert not isinstance(evaluation.eval_env.venv, AgentScoringVecEnv)


def test_scoring_spreads_the_episodes_over_the_agents() -> None:
    env = AgentScoringVecEnv(make_rmdp_vec_env(Corridor, n_envs=2), n_agents=5, n_episodes=10)
    env.reset()
    scored = [env.scored_agents.copy()]
    for _ in range(8 * 4):
        before = env.scored_agents.copy()
        _, _, dones, infos = env.step(np.ones(2, dtype=np.int64))  # always right: cells 3, then 4 x 7
        if dones.any():
            for slot in range(2):  # Monitor's episode return is the scored agent's
                assert infos[slot]["episode"]["r"] == {3: 1.0, 4: 7.0}.get(int(before[slot]), 0.0)
            scored.append(env.scored_agents.copy())
    # slot 0 runs counted episodes 0-4, slot 1 episodes 5-9: agents 0, 0, 1, 1, 2 and 2, 3, 3, 4, 4
    np.testing.assert_array_equal(np.stack(scored)[:5], [[0, 2], [0, 3], [1, 3], [1, 4], [2, 4]])


def test_eval_callback_takes_the_plain_r_mdp_env_too() -> None:
    model = RMDPA2C("MlpPolicy", Corridor, k=2, n_envs=2, n_steps=8, seed=0)
    evaluation = EvalCallback(Corridor(), n_eval_episodes=5, eval_freq=16, verbose=0)
    model.learn(64, callback=evaluation)
    assert isinstance(evaluation.eval_env, AgentScoringVecEnv) and np.isfinite(evaluation.last_mean_reward)


@pytest.mark.parametrize("algorithm", ["maskable", "recurrent"])
def test_eval_callback_with_masks_and_lstm_states(algorithm: str) -> None:
    if algorithm == "maskable":
        env = make_rmdp_vec_env(lambda: Corridor(masked=True), n_envs=2)
        model: Any = RMDPMaskablePPO("MlpPolicy", env, k=2, **SMALL)
        eval_env = make_rmdp_vec_env(lambda: Corridor(masked=True))
    else:
        env = make_rmdp_vec_env(Corridor, n_envs=2)
        model = RMDPRecurrentPPO(
            "MlpLstmPolicy", env, k=2, **{**SMALL, "policy_kwargs": {"lstm_hidden_size": 8}}
        )
        eval_env = make_rmdp_vec_env(Corridor)
    evaluation = EvalCallback(eval_env, n_eval_episodes=5, eval_freq=32, verbose=0)
    model.learn(2 * 64, callback=evaluation)
    assert np.isfinite(evaluation.last_mean_reward)
    # (the last evaluation ran before the last update: evaluate the final model the callback's way)
    rewards, _ = evaluate_policy(evaluation.model, evaluation.eval_env, n_eval_episodes=5)  # type: ignore[arg-type]
    welfare = utilitarian_welfare(evaluate_agent_returns(model, eval_env, n_episodes=1), model.assignment())
    assert rewards == pytest.approx(welfare)


def test_another_assigner_in_the_callbacks_is_refused() -> None:
    model = RMDPPPO("MlpPolicy", Corridor, k=2, assigner=EMAssigner(), **SMALL)
    with pytest.raises(ValueError, match=r"RandomAssigner that is not this model's assigner.*assigner="):
        model.learn(64, callback=[RandomAssigner()])
