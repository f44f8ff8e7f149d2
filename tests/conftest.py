"""Shared test fixtures: small r-MDP envs built from classic-control tasks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback


class ScaledRewardsEnv(gym.Wrapper):
    """An r-MDP of ``len(scales)`` agents over a scalar env: agent i's reward is ``scales[i] * reward``.

    ``bad`` injects faulty rewards for the error tests: ``"shape"`` (one entry too many) or ``"nan"``.
    """

    def __init__(self, env: gym.Env, scales: Any = (1.0, 2.0, 3.0), bad: str | None = None):
        super().__init__(env)
        self.scales = np.asarray(scales, dtype=np.float32)
        self.reward_space = spaces.Box(-np.inf, np.inf, shape=self.scales.shape, dtype=np.float32)
        self.agent_params = self.scales.reshape(-1, 1).astype(np.float64)
        self.bad = bad

    def step(self, action: Any) -> tuple[Any, np.ndarray, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        rewards = self.scales * np.float32(reward)
        if self.bad == "shape":
            rewards = np.append(rewards, 0.0)
        elif self.bad == "nan":
            rewards = rewards.copy()
            rewards[0] = np.nan
        return obs, rewards, terminated, truncated, info


def make_scaled(env_id: str = "CartPole-v1", n_agents: int = 3, **kwargs: Any) -> ScaledRewardsEnv:
    return ScaledRewardsEnv(gym.make(env_id), scales=np.arange(1, n_agents + 1, dtype=np.float32), **kwargs)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    # Two threads on two cores collapse whenever the other core is busy (pytest-xdist runs two workers).
    th.set_num_threads(1)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) as a module, for tests of its pure parts."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class LogRecorder(BaseCallback):
    """Keeps the logger's values at every rollout end: after the assigner logged (RMDPPPO runs it first),
    before SB3 dumps the logs and before the update; ``on_record(callback)`` may keep more."""

    def __init__(self, on_record: Any = None):
        super().__init__()
        self.recorded: list[dict[str, object]] = []
        self.on_record = on_record

    def _on_rollout_end(self) -> None:
        self.recorded.append(dict(self.logger.name_to_value))
        if self.on_record is not None:
            self.on_record(self)

    def _on_step(self) -> bool:
        return True


class ImageWalk(gym.Env):
    """A scalar-reward image task: a lit column on a ``(1, size, size)`` uint8 image (or ``(size, size, 1)``
    with ``channel_last``) walks left or right; the reward is ``-|column - target| / size``.

    Deterministic (the start column comes from ``reset``'s seed), 20 steps, truncated.

    :param discrete: ``Discrete(3)`` actions (left, stay, right), else ``Box(-1, 1, (1,))``.
    """

    def __init__(self, discrete: bool = True, size: int = 36, target: int = 30, channel_last: bool = False):
        self.size, self.target = size, target
        shape = (size, size, 1) if channel_last else (1, size, size)
        self.observation_space = spaces.Box(0, 255, shape=shape, dtype=np.uint8)
        self.action_space = spaces.Discrete(3) if discrete else spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.channel_last = channel_last
        self.column, self.steps = 0, 0

    def _obs(self) -> np.ndarray:
        image = np.zeros((self.size, self.size), dtype=np.uint8)
        image[:, self.column] = 255
        return image[:, :, None] if self.channel_last else image[None]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.column, self.steps = int(self.np_random.integers(self.size)), 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if isinstance(self.action_space, spaces.Discrete):
            move = int(action) - 1
        else:
            move = int(np.round(2 * float(np.asarray(action).reshape(-1)[0])))
        self.column = int(np.clip(self.column + move, 0, self.size - 1))
        self.steps += 1
        reward = -abs(self.column - self.target) / self.size
        return self._obs(), reward, False, self.steps >= 20, {}


class DictObservation(gym.ObservationWrapper):
    """``{"state": obs, "profile": a constant (2,) vector}``: a Dict observation space over any Box task."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = spaces.Dict(
            {"state": env.observation_space, "profile": spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)}
        )

    def observation(self, observation: Any) -> dict[str, np.ndarray]:
        return {"state": observation, "profile": np.array([0.5, -0.5], dtype=np.float32)}


def assert_same_training(reference: Any, ours: Any) -> None:
    """The parameters and the optimizer state of ``ours`` equal ``reference``'s bit for bit (same names)."""
    expected = dict(reference.policy.named_parameters())
    got = dict(ours.policy.named_parameters())
    assert sorted(expected) == sorted(got)
    for name, parameter in expected.items():
        assert th.equal(parameter.detach().flatten(), got[name].detach().flatten()), name
    # The optimizer moments too: the next update would be identical as well.
    for p_ref, p_ours in zip(reference.policy.parameters(), ours.policy.parameters(), strict=True):
        s_ref, s_ours = reference.policy.optimizer.state[p_ref], ours.policy.optimizer.state[p_ours]
        assert sorted(s_ref) == sorted(s_ours)
        for key, value in s_ref.items():
            assert th.equal(th.as_tensor(value).flatten(), th.as_tensor(s_ours[key]).flatten()), key
    assert ours.num_timesteps == reference.num_timesteps
