"""``RMDPMaskablePPO``: sb3-contrib's MaskablePPO for represented MDPs (needs the ``contrib`` extra)."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule
from stable_baselines3.common.vec_env import VecEnv

from sb3_rmdp.assigners import Assigner
from sb3_rmdp.buffers import RMDPRolloutBuffer
from sb3_rmdp.core import RMDPAlgorithm, _masks_message
from sb3_rmdp.maskable import (
    MaskableMultiRepresentativeCnnPolicy,
    MaskableMultiRepresentativeMultiInputPolicy,
    MaskableMultiRepresentativePolicy,
    RMDPMaskableDictRolloutBuffer,
    RMDPMaskableRolloutBuffer,
)
from sb3_rmdp.objectives import DEFAULT_TEMPERATURE, WelfareSpec
from sb3_rmdp.ppo import ppo_arguments, ppo_update

SelfRMDPMaskablePPO = TypeVar("SelfRMDPMaskablePPO", bound="RMDPMaskablePPO")


class RMDPMaskablePPO(RMDPAlgorithm, MaskablePPO):
    """MaskablePPO with k representative policies serving n agents: invalid actions masked on every
    representative's head.

    Every MaskablePPO argument keeps its meaning; the r-MDP machinery is
    :class:`~sb3_rmdp.core.RMDPAlgorithm`'s, as for :class:`~sb3_rmdp.RMDPPPO`. The envs say which
    actions are valid as sb3-contrib expects: an ``action_masks()`` method returning ``(mask_dims,)``
    booleans (True: valid), on the env itself or through ``sb3_contrib.common.wrappers.ActionMasker``
    applied before vectorizing. Each step's masks are stored with the transition and applied again in
    the update; ``predict(obs, representative=j, action_masks=masks)`` serves one representative. With
    ``k = n_agents = 1`` it trains exactly as sb3-contrib's ``MaskablePPO``.

    :param policy: ``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a subclass of
        :class:`~sb3_rmdp.maskable.MaskableMultiRepresentativePolicy`.
    :param env: an r-MDP env id, gymnasium env, env factory, or a VecEnv from
        :func:`~sb3_rmdp.envs.make_rmdp_vec_env`, whose envs expose ``action_masks()``.
    :param k: the policy budget (number of representatives), ``1 <= k <= n_agents``.
    :param assigner: an :class:`~sb3_rmdp.assigners.Assigner` (default ``EMAssigner()``) or a name.
    :param n_envs: env slots to create when ``env`` is not a VecEnv (default ``k``).
    :param env_kwargs: keyword arguments for ``gym.make`` when ``env`` is an id (or for a factory).
    The other parameters are sb3-contrib's :class:`~sb3_contrib.ppo_mask.MaskablePPO`'s.
    """

    algorithm_name: ClassVar[str] = "RMDPMaskablePPO"
    policy_base = MaskableMultiRepresentativePolicy
    uses_action_masks = True
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MaskableMultiRepresentativePolicy,
        "CnnPolicy": MaskableMultiRepresentativeCnnPolicy,
        "MultiInputPolicy": MaskableMultiRepresentativeMultiInputPolicy,
    }
    policy: MaskableMultiRepresentativePolicy  # type: ignore[assignment]
    rollout_buffer: RMDPRolloutBuffer  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[MaskableMultiRepresentativePolicy],
        env: GymEnv | str | None,
        k: int = 1,
        assigner: Assigner | str | None = None,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
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
            False,
            batch_size,
            normalize_advantage,
            welfare=welfare,
            welfare_temperature=welfare_temperature,
            outside_values=outside_values,
            c_min=c_min,
            c_max=c_max,
        )
        self._use_masking = True
        super().__init__(
            policy,  # type: ignore[arg-type]
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
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
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

    def _default_buffer_class(self, dict_observations: bool) -> type[RMDPRolloutBuffer]:
        return RMDPMaskableDictRolloutBuffer if dict_observations else RMDPMaskableRolloutBuffer

    def _setup_base_model(self) -> None:
        # MaskablePPO's `_setup_model` with the buffer class chosen above and without its check that the
        # policy subclasses MaskableActorCriticPolicy (ours subclasses ActorCriticPolicy); the buffer is
        # built before the policy here, which draws nothing from the random streams.
        OnPolicyAlgorithm._setup_model(self)
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            if isinstance(self.clip_range_vf, (float, int)) and self.clip_range_vf <= 0:
                raise ValueError(f"clip_range_vf={self.clip_range_vf}: pass a positive value, or None.")
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)

    def export_arguments(self, progress: float) -> tuple[type[BaseAlgorithm], dict[str, Any]]:
        """sb3-contrib's ``MaskablePPO`` and this model's arguments, schedules frozen at ``progress``."""
        return MaskablePPO, ppo_arguments(self, progress)

    # ------------------------------------------------------------------ masks in the loop
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
        use_masking: bool = True,
    ) -> bool:
        """:meth:`RMDPAlgorithm.collect_rollouts`, reading every slot's action mask before it acts.

        :param use_masking: apply the envs' masks (sb3-contrib's switch; ``False`` trains unmasked).
        """
        if use_masking and not is_masking_supported(env):
            raise ValueError(_masks_message(type(self).__name__, True))
        self._use_masking = use_masking
        return RMDPAlgorithm.collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps)

    def _rollout_step(
        self, obs_tensor: Any, env: VecEnv
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, dict[str, Any]]:
        action_masks = get_action_masks(env) if self._use_masking else None
        actions, values, log_probs = self.policy(
            obs_tensor, representatives=self._slot_representatives, action_masks=action_masks
        )
        return actions, values, log_probs, {"action_masks": action_masks}

    def _evaluate_minibatch(
        self, rollout_data: Any, actions: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        return self.policy.evaluate_actions(
            rollout_data.observations,
            actions,
            representatives=rollout_data.representatives,
            action_masks=rollout_data.action_masks,
        )

    def train(self) -> None:
        """MaskablePPO's update (PPO's, with each sample's mask applied): :func:`~sb3_rmdp.ppo.ppo_update`."""
        ppo_update(self)

    # ------------------------------------------------------------------ acting
    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        representative: int | np.ndarray | None = None,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """``predict`` served by ``representative``, masked by ``action_masks`` (``None``: all valid)."""
        return self.policy.predict(
            observation, state, episode_start, deterministic, representative, action_masks=action_masks
        )

    def predict_in_env(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        env: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        representative: int | np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """:meth:`predict` with the masks of ``env`` (a VecEnv or a gymnasium env) in its current state."""
        if not is_masking_supported(env):
            raise ValueError(_masks_message(type(self).__name__, True))
        masks = get_action_masks(env)
        return self.predict(
            observation, state, episode_start, deterministic, representative, action_masks=masks
        )

    def learn(  # type: ignore[override]
        self: SelfRMDPMaskablePPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "RMDPMaskablePPO",
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfRMDPMaskablePPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            use_masking=use_masking,
            progress_bar=progress_bar,
        )
