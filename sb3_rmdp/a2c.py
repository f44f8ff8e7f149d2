"""``RMDPA2C``: SB3's A2C for represented MDPs (k representatives serving n agents)."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import A2C
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from torch.nn import functional as F

from sb3_rmdp.assigners import Assigner
from sb3_rmdp.core import RMDPAlgorithm
from sb3_rmdp.objectives import DEFAULT_TEMPERATURE, WelfareSpec
from sb3_rmdp.policies import (
    MultiRepresentativeCnnPolicy,
    MultiRepresentativeMultiInputPolicy,
    MultiRepresentativePolicy,
)

SelfRMDPA2C = TypeVar("SelfRMDPA2C", bound="RMDPA2C")


class RMDPA2C(RMDPAlgorithm, A2C):
    """A2C with k representative policies serving n agents, each with its own reward (an r-MDP).

    Every A2C argument keeps its meaning (RMSprop by default, ``n_steps=5`` per env slot, one gradient
    step per rollout, advantages not normalized unless ``normalize_advantage``); the r-MDP machinery is
    :class:`~sb3_rmdp.core.RMDPAlgorithm`'s, as for :class:`~sb3_rmdp.RMDPPPO`: env slot ``e`` acted by
    representative ``e % k``, per-agent GAE, the policy gradient of a sample collected by j weighted by
    its marginal advantage ``sum_i alpha[i, j] A^{ij}`` (normalized per representative when
    ``normalize_advantage``), the value loss the MSE over all agents. With ``k = n_agents = 1`` it
    trains exactly as SB3's ``A2C``.

    :param policy: ``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a subclass of
        :class:`~sb3_rmdp.policies.MultiRepresentativePolicy`.
    :param env: an r-MDP env id, gymnasium env, env factory, or a VecEnv from
        :func:`~sb3_rmdp.envs.make_rmdp_vec_env`.
    :param k: the policy budget (number of representatives), ``1 <= k <= n_agents``.
    :param assigner: an :class:`~sb3_rmdp.assigners.Assigner` (default ``EMAssigner()``) or a name.
    :param n_envs: env slots to create when ``env`` is not a VecEnv (default ``k``).
    :param env_kwargs: keyword arguments for ``gym.make`` when ``env`` is an id (or for a factory).
    The other parameters are SB3's :class:`~stable_baselines3.A2C`'s. Saving, loading and resuming work
    as for :class:`~sb3_rmdp.RMDPPPO`.
    """

    algorithm_name: ClassVar[str] = "RMDPA2C"
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MultiRepresentativePolicy,
        "CnnPolicy": MultiRepresentativeCnnPolicy,
        "MultiInputPolicy": MultiRepresentativeMultiInputPolicy,
    }

    def __init__(
        self,
        policy: str | type[MultiRepresentativePolicy],
        env: GymEnv | str | None,
        k: int = 1,
        assigner: Assigner | str | None = None,
        learning_rate: float | Schedule = 7e-4,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        rms_prop_eps: float = 1e-5,
        use_rms_prop: bool = True,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = False,
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
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            rms_prop_eps=rms_prop_eps,
            use_rms_prop=use_rms_prop,
            use_sde=False,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            normalize_advantage=normalize_advantage,
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

    def export_arguments(self, progress: float) -> tuple[type[BaseAlgorithm], dict[str, Any]]:
        """:class:`~stable_baselines3.A2C` and its arguments (the optimizer is in ``policy_kwargs``)."""
        return A2C, {
            "n_steps": self.n_steps,
            "gamma": self.gamma,
            "gae_lambda": self.gae_lambda,
            "ent_coef": self.ent_coef,
            "vf_coef": self.vf_coef,
            "max_grad_norm": self.max_grad_norm,
            "normalize_advantage": self.normalize_advantage,
        }

    def train(self) -> None:
        """SB3's A2C update (one gradient step on the whole rollout), with marginal advantages and a
        per-agent value loss; the assigner's own optimizer (if any) steps in the same backward pass."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        self._prepare_update(samples_old_values=False)  # A2C never reads the old values

        for rollout_data in self.rollout_buffer.get(batch_size=None):
            actions = rollout_data.actions
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.long().flatten()
            representatives = rollout_data.representatives

            values, log_prob, entropy = self.policy.evaluate_actions(
                rollout_data.observations, actions, representatives=representatives
            )
            advantages = self.marginal_advantages(rollout_data.advantages, representatives.index)
            policy_loss = -(advantages * log_prob).mean()
            # Per-agent critic of the collecting representative: MSE over all agents (paper eq. 8).
            value_loss = F.mse_loss(rollout_data.returns, values)
            if entropy is None:
                entropy_loss = -th.mean(-log_prob)
            else:
                entropy_loss = -th.mean(entropy)
            loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

            self.policy.optimizer.zero_grad()
            self.assigner.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            self.assigner.step()

        self.rollout_buffer.samples_old_values = True  # SB3's full samples for anyone else
        explained_var = self.rollout_buffer.explained_variance()
        self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/entropy_loss", entropy_loss.item())
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/value_loss", value_loss.item())
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

    def learn(
        self: SelfRMDPA2C,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "RMDPA2C",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRMDPA2C:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
