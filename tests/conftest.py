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
