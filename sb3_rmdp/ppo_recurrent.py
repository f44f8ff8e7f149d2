"""``RMDPRecurrentPPO``: sb3-contrib's RecurrentPPO for represented MDPs (needs the ``contrib`` extra)."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_rmdp.assigners import Assigner
from sb3_rmdp.core import RMDPAlgorithm
from sb3_rmdp.objectives import DEFAULT_TEMPERATURE, WelfareSpec
from sb3_rmdp.ppo import ppo_arguments, ppo_update
from sb3_rmdp.recurrent import (
    RecurrentMultiRepresentativeCnnPolicy,
    RecurrentMultiRepresentativeMultiInputPolicy,
    RecurrentMultiRepresentativePolicy,
    RMDPRecurrentRolloutBuffer,
)

SelfRMDPRecurrentPPO = TypeVar("SelfRMDPRecurrentPPO", bound="RMDPRecurrentPPO")


class RMDPRecurrentPPO(RMDPAlgorithm, RecurrentPPO):
    """RecurrentPPO with k representative policies serving n agents: LSTM policies for partially
    observed r-MDPs.

    Every RecurrentPPO argument keeps its meaning; the r-MDP machinery is
    :class:`~sb3_rmdp.core.RMDPAlgorithm`'s, as for :class:`~sb3_rmdp.RMDPPPO`. The actor and critic
    LSTMs (and the MLP trunk) are shared by the representatives; each env slot carries its own LSTM
    states, the representative of a slot is fixed for a whole episode, and the states are reset when
    an episode starts. The update samples sb3-contrib's padded sequences, with per-agent returns and
    the marginal advantages ``sum_i alpha[i, j] A^{ij}`` normalized per representative over the
    unpadded samples. ``predict(obs, state, episode_start, representative=j)`` carries the LSTM state
    as in sb3-contrib. With ``k = n_agents = 1`` it trains exactly as sb3-contrib's ``RecurrentPPO``.

    Unlike sb3-contrib, :meth:`save` keeps the LSTM states of the episodes in progress, so that a
    resumed run goes on bit for bit (see :class:`~sb3_rmdp.RMDPPPO`).

    :param policy: ``"MlpLstmPolicy"``, ``"CnnLstmPolicy"``, ``"MultiInputLstmPolicy"`` or a subclass of
        :class:`~sb3_rmdp.recurrent.RecurrentMultiRepresentativePolicy`.
    :param env: an r-MDP env id, gymnasium env, env factory, or a VecEnv from
        :func:`~sb3_rmdp.envs.make_rmdp_vec_env`.
    :param k: the policy budget (number of representatives), ``1 <= k <= n_agents``.
    :param assigner: an :class:`~sb3_rmdp.assigners.Assigner` (default ``EMAssigner()``) or a name.
    :param n_envs: env slots to create when ``env`` is not a VecEnv (default ``k``).
    :param env_kwargs: keyword arguments for ``gym.make`` when ``env`` is an id (or for a factory).
    The other parameters are sb3-contrib's :class:`~sb3_contrib.ppo_recurrent.RecurrentPPO`'s.
    """

    algorithm_name: ClassVar[str] = "RMDPRecurrentPPO"
    policy_base = RecurrentMultiRepresentativePolicy
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpLstmPolicy": RecurrentMultiRepresentativePolicy,
        "CnnLstmPolicy": RecurrentMultiRepresentativeCnnPolicy,
        "MultiInputLstmPolicy": RecurrentMultiRepresentativeMultiInputPolicy,
    }
    policy: RecurrentMultiRepresentativePolicy
    rollout_buffer: RMDPRecurrentRolloutBuffer
    _last_lstm_states: RNNStates  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[RecurrentMultiRepresentativePolicy],
        env: GymEnv | str | None,
        k: int = 1,
        assigner: Assigner | str | None = None,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 128,
        batch_size: int | None = 128,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        n_envs: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        welfare: WelfareSpec = "utilitarian",
        welfare_temperature: float = DEFAULT_TEMPERATURE,
        outside_values: float | np.ndarray | None = None,
        c_min: int | None = None,
        c_max: int | None = None,
        _init_setup_model: bool = True,
    ):
        env = self._rmdp_init(
            env,
            k,
            assigner,
            n_envs,
            env_kwargs,
            device,
            use_sde,
            batch_size,
            normalize_advantage,
            welfare=welfare,
            welfare_temperature=welfare_temperature,
            outside_values=outside_values,
            c_min=c_min,
            c_max=c_max,
        )
        super().__init__(
            policy,
            env,  # type: ignore[arg-type]
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=False,
            sde_sample_freq=sde_sample_freq,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=self._rmdp_policy_kwargs(policy_kwargs),
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        if _init_setup_model:
            self._setup_model()

    def _setup_base_model(self) -> None:
        # RecurrentPPO's `_setup_model` (the same draws in the same order), with the r-MDP buffer.
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space,
            self.action_space,
            self.lr_schedule,
            use_sde=self.use_sde,
            **self.policy_kwargs,
        )
        self.policy = self.policy.to(self.device)
        lstm = self.policy.lstm_actor
        shape = (lstm.num_layers, self.n_envs, lstm.hidden_size)
        self._last_lstm_states = RNNStates(
            (th.zeros(shape, device=self.device), th.zeros(shape, device=self.device)),
            (th.zeros(shape, device=self.device), th.zeros(shape, device=self.device)),
        )
        saved = self.__dict__.pop("_lstm_states", None)  # written by `save`: the episodes in progress
        if saved is not None and all(tuple(state.shape) == shape for state in saved):
            h_pi, c_pi, h_vf, c_vf = (state.to(self.device) for state in saved)
            self._last_lstm_states = RNNStates((h_pi, c_pi), (h_vf, c_vf))
        buffer_class: Any = self.rollout_buffer_class
        self.rollout_buffer = buffer_class(
            self.n_steps,
            self.observation_space,
            self.action_space,
            (self.n_steps, lstm.num_layers, self.n_envs, lstm.hidden_size),
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **self.rollout_buffer_kwargs,
        )
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            if isinstance(self.clip_range_vf, (float, int)) and self.clip_range_vf <= 0:
                raise ValueError(f"clip_range_vf={self.clip_range_vf}: pass a positive value, or None.")
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)

    def _default_buffer_class(self, dict_observations: bool) -> type[RMDPRecurrentRolloutBuffer]:
        return RMDPRecurrentRolloutBuffer

    def _excluded_save_params(self) -> list[str]:
        # The states are saved as data by `_extra_save_data` (sb3-contrib drops them).
        return [*super()._excluded_save_params(), "_next_lstm_states"]

    def _extra_save_data(self) -> dict[str, Any]:
        states = self._last_lstm_states
        return {**super()._extra_save_data(), "_lstm_states": (*states.pi, *states.vf)}

    def export_arguments(self, progress: float) -> tuple[type[BaseAlgorithm], dict[str, Any]]:
        """sb3-contrib's ``RecurrentPPO`` and this model's arguments, schedules frozen at ``progress``."""
        return RecurrentPPO, ppo_arguments(self, progress)

    # ------------------------------------------------------------------ LSTM states in the loop
    def _rollout_step(
        self, obs_tensor: Any, env: VecEnv
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, dict[str, Any]]:
        episode_starts = th.tensor(self._last_episode_starts, dtype=th.float32, device=self.device)
        actions, values, log_probs, self._next_lstm_states = self.policy(
            obs_tensor, self._last_lstm_states, episode_starts, representatives=self._slot_representatives
        )
        return actions, values, log_probs, {"lstm_states": self._last_lstm_states}

    def _after_rollout_step(self) -> None:
        self._last_lstm_states = self._next_lstm_states

    def _terminal_values(self, idx: int, terminal_obs: Any, representative: int) -> th.Tensor:
        # sb3-contrib's bootstrap: the critic LSTM's state after the step, as if the episode went on
        vf = self._next_lstm_states.vf
        state = (vf[0][:, idx : idx + 1, :].contiguous(), vf[1][:, idx : idx + 1, :].contiguous())
        episode_starts = th.tensor([False], dtype=th.float32, device=self.device)
        return self.policy.predict_values(
            terminal_obs, state, episode_starts, representatives=representative
        )[0]

    def _final_values(self, new_obs: Any, dones: np.ndarray) -> th.Tensor:
        episode_starts = th.tensor(dones, dtype=th.float32, device=self.device)
        return self.policy.predict_values(
            obs_as_tensor(new_obs, self.device),  # type: ignore[arg-type]
            self._last_lstm_states.vf,
            episode_starts,
            representatives=self._slot_representatives,
        )

    def _evaluate_minibatch(
        self, rollout_data: Any, actions: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        return self.policy.evaluate_actions(
            rollout_data.observations,
            actions,
            rollout_data.lstm_states,
            rollout_data.episode_starts,
            representatives=rollout_data.representatives,
        )

    def _valid_samples(self, rollout_data: Any) -> th.Tensor:
        return rollout_data.mask > 1e-8  # padding is not a sample

    def train(self) -> None:
        """RecurrentPPO's update (PPO's over padded sequences): :func:`~sb3_rmdp.ppo.ppo_update`."""
        ppo_update(self)

    def learn(
        self: SelfRMDPRecurrentPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "RMDPRecurrentPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRMDPRecurrentPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
