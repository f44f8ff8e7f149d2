"""``ResourceGatheringVec``: many Resource Gathering slots stepped together in NumPy, as one SB3 VecEnv.

``DummyVecEnv`` steps each slot's Python env object in turn (through ``AgentRewardsWrapper`` and
``Monitor``) and deep-copies every info dict; on a 5x5 grid that overhead is most of a rollout's
environment time. This VecEnv keeps every slot's state in arrays and steps all slots with a few
array operations, with the same transitions, rewards and infos as::

    make_rmdp_vec_env("sb3_rmdp/ResourceGathering-v0", n_envs=num_envs, env_kwargs=kwargs)

so ``RMDPPPO("MlpPolicy", ResourceGatheringVec(k), k=k)`` trains exactly as on that VecEnv (same seed,
same parameters). It is not chosen automatically: pass it in place of the env id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from sb3_rmdp.envs.contract import AGENT_REWARDS_KEY, AgentRewardsWrapper
from sb3_rmdp.envs.resource_gathering import ACTIONS, ResourceGathering

_D_ROW = np.array([d_row for d_row, _ in ACTIONS], dtype=np.int64)
_D_COL = np.array([d_col for _, d_col in ACTIONS], dtype=np.int64)

#: attributes of the configuration that ``set_attr`` may change (they do not resize any array)
_SETTABLE = ("reward_scale", "max_steps")


class ResourceGatheringVec(VecEnv):
    """``num_envs`` slots of :class:`~sb3_rmdp.envs.resource_gathering.ResourceGathering`, stepped at once.

    Each slot behaves as ``Monitor(AgentRewardsWrapper(ResourceGathering(**kwargs)))`` in SB3's
    ``DummyVecEnv``: ``step`` returns the mean over agents as the scalar reward, ``info["agent_rewards"]``
    ``(n_agents,)`` float32, ``info["position"]``, ``info["TimeLimit.truncated"]`` (always ``False``: the
    step cutoff is ``terminated`` in this env), and a finished slot is reset at once, with its last
    observation in ``info["terminal_observation"]`` and, if ``monitor``, Monitor's
    ``info["episode"] = {"r", "l", "t"}`` (so ``rollout/ep_rew_mean`` is logged without ``VecMonitor``).

    ``n_agents``, ``reward_space``, ``agent_params`` and the env's other settings are read with
    ``get_attr`` as on a ``DummyVecEnv`` (every slot shares one configuration). The dynamics are
    deterministic: ``seed`` only records seeds, as SB3's VecEnvs do.

    :param num_envs: number of env slots.
    :param monitor: add Monitor's episode statistics to the infos (``env_is_wrapped(Monitor)`` is then
        ``True``); with ``False``, wrap the VecEnv in ``VecMonitor`` to log episode returns.
    :param env_kwargs: keyword arguments of :class:`ResourceGathering` (``size``, ``max_steps``,
        ``reward_scale``, ``render_mode``).
    """

    def __init__(self, num_envs: int = 1, monitor: bool = True, **env_kwargs: Any):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a whole number >= 1, got {num_envs}.")
        # One env object holds (and validates) the shared configuration; it is never stepped.
        self._config = ResourceGathering(**env_kwargs)
        self.monitor = bool(monitor)
        super().__init__(int(num_envs), self._config.observation_space, self._config.action_space)
        config = self._config
        self.n_agents = config.n_agents
        self.size = config.size
        self._home_row, self._home_col = config.home
        n = self.num_envs
        self._slots = np.arange(n)
        self._row = np.full(n, self._home_row, dtype=np.int64)
        self._col = np.full(n, self._home_col, dtype=np.int64)
        self._steps = np.zeros(n, dtype=np.int64)
        #: ``(num_envs, 2 + n_agents)`` float32: each slot's observation (position, then visited flags)
        self._obs = np.zeros((n, 2 + self.n_agents), dtype=np.float32)
        self._episode_return = np.zeros(n, dtype=np.float64)
        self._episode_length = np.zeros(n, dtype=np.int64)
        self._t_start = time.time()
        self._actions = np.zeros(n, dtype=np.int64)
        self._needs_reset = True
        self._reset_slots(self._slots)

    # ------------------------------------------------------------------ the r-MDP contract
    @property
    def reward_space(self) -> gym.spaces.Box:
        """``Box(n_agents,)`` of each slot's reward vector."""
        return self._config.reward_space

    @property
    def agent_params(self) -> np.ndarray:
        """``(n_agents, 2)``: the ``(row, col)`` of each agent's cell."""
        return self._config.agent_params

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> VecEnvObs:
        """Put every slot's character home (a new episode in each slot).

        :return: observations ``(num_envs, 2 + n_agents)`` float32.
        """
        self._reset_slots(self._slots)
        self.reset_infos = [self._position_info(self._home_row, self._home_col) for _ in self._slots]
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        self._needs_reset = False
        self._reset_seeds()
        self._reset_options()
        return self._obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        """Record each slot's action.

        :param actions: ``(num_envs,)`` (or ``(num_envs, 1)``) ints in ``[0, 4)``.
        """
        actions = np.asarray(actions)
        if actions.size != self.num_envs or not np.all((actions >= 0) & (actions < len(ACTIONS))):
            raise ValueError(
                f"Invalid actions {actions!r}: expected {self.num_envs} ints in [0, {len(ACTIONS) - 1}], "
                "one per env slot."
            )
        self._actions = actions.reshape(self.num_envs).astype(np.int64, copy=False)

    def step_wait(self) -> VecEnvStepReturn:
        """Step every slot; reset finished slots.

        :return: ``(obs (num_envs, 2 + n_agents) float32, rewards (num_envs,) float32 (mean over agents),
            dones (num_envs,) bool, infos)``.
        """
        if self._needs_reset:
            raise RuntimeError("ResourceGatheringVec: call reset() before step().")
        config = self._config
        actions = self._actions
        row = self._row + _D_ROW[actions]
        col = self._col + _D_COL[actions]
        inside = (row >= 0) & (row < self.size) & (col >= 0) & (col < self.size)
        np.copyto(self._row, row, where=inside)
        np.copyto(self._col, col, where=inside)
        self._steps += 1
        obs = self._obs
        obs[:, 0] = self._row
        obs[:, 1] = self._col
        obs[self._slots, 2 + self._row * self.size + self._col] = 1.0

        at_home = (self._row == self._home_row) & (self._col == self._home_col)
        dones = at_home | (self._steps >= config.max_steps)
        agent_rewards = np.zeros((self.num_envs, self.n_agents), dtype=np.float32)
        if at_home.any():
            # Same arithmetic as the single env: a float64 payment stored into float32.
            payment = config.reward_scale * (100 - self._steps[at_home])
            agent_rewards[at_home] = np.where(obs[at_home, 2:] > 0, payment[:, None], 0.0)
        rewards = agent_rewards.mean(axis=1)  # float32, as AgentRewardsWrapper's float(mean)
        self._episode_return += rewards
        self._episode_length += 1

        infos: list[dict[str, Any]] = [
            {"position": (r, c), AGENT_REWARDS_KEY: agent_rewards[e], "TimeLimit.truncated": False}
            for e, (r, c) in enumerate(zip(self._row.tolist(), self._col.tolist()))
        ]
        finished = np.flatnonzero(dones)
        if len(finished):
            now = time.time()
            for e in finished.tolist():
                info = infos[e]
                if self.monitor:
                    info["episode"] = {
                        "r": round(float(self._episode_return[e]), 6),
                        "l": int(self._episode_length[e]),
                        "t": round(now - self._t_start, 6),
                    }
                info["terminal_observation"] = obs[e].copy()
                self.reset_infos[e] = self._position_info(self._home_row, self._home_col)
            self._reset_slots(finished)
            self._episode_return[finished] = 0.0
            self._episode_length[finished] = 0
        return obs.copy(), rewards, dones, infos

    def close(self) -> None:
        """Nothing to release."""

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The env setting ``attr_name`` (shared by all slots) once per slot in ``indices``.

        Per-slot state lives in this VecEnv's arrays, not in env attributes, so private names are refused.
        """
        if attr_name.startswith("_"):
            raise AttributeError(
                f"ResourceGatheringVec keeps each slot's state in arrays: '{attr_name}' is not available "
                "per slot. Use a DummyVecEnv of ResourceGathering to read private env state."
            )
        value = getattr(self._config, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Change ``reward_scale`` or ``max_steps`` of every slot (one configuration is shared)."""
        targets = list(self._get_indices(indices))
        if attr_name not in _SETTABLE or sorted(targets) != list(range(self.num_envs)):
            raise AttributeError(
                f"ResourceGatheringVec can only set {_SETTABLE} and only on all slots at once (they share "
                f"one configuration); got '{attr_name}' on slots {targets}. Build a new ResourceGatheringVec "
                "with the settings you need."
            )
        setattr(self._config, attr_name, type(getattr(self._config, attr_name))(value))

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Not supported: the slots are not env objects (there is no per-slot method to call)."""
        raise NotImplementedError(
            f"ResourceGatheringVec has no per-slot env objects to call '{method_name}' on: use a DummyVecEnv "
            "of ResourceGathering (make_rmdp_vec_env) when you need env methods."
        )

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """``True`` for ``AgentRewardsWrapper`` (and ``Monitor`` with ``monitor=True``): the slots behave as
        envs wrapped by them, which is what ``as_rmdp_vec_env`` and SB3's Monitor checks look for."""
        wrapped = issubclass(AgentRewardsWrapper, wrapper_class) or (
            self.monitor and issubclass(Monitor, wrapper_class)
        )
        return [wrapped for _ in self._get_indices(indices)]

    # ------------------------------------------------------------------ helpers
    def _reset_slots(self, slots: np.ndarray) -> None:
        """Put the character of ``slots`` home with only the home cell visited."""
        self._row[slots] = self._home_row
        self._col[slots] = self._home_col
        self._steps[slots] = 0
        self._obs[slots] = 0.0
        self._obs[slots, 0] = self._home_row
        self._obs[slots, 1] = self._home_col
        self._obs[slots, 2 + self._home_row * self.size + self._home_col] = 1.0

    @staticmethod
    def _position_info(row: int, col: int) -> dict[str, Any]:
        return {"position": (row, col)}
