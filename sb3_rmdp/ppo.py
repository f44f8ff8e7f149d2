"""``RMDPPPO``: SB3's PPO for represented MDPs (k representatives serving n agents)."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from torch.nn import functional as F

from sb3_rmdp.aggregate import agent_generator
from sb3_rmdp.assigners import Assigner
from sb3_rmdp.core import RETURN_SCALE_LIMIT, RMDPAlgorithm, normalize_per_representative
from sb3_rmdp.objectives import DEFAULT_TEMPERATURE, WelfareSpec
from sb3_rmdp.policies import (
    MultiRepresentativeCnnPolicy,
    MultiRepresentativeMultiInputPolicy,
    MultiRepresentativePolicy,
)

__all__ = ["RETURN_SCALE_LIMIT", "RMDPPPO", "normalize_per_representative"]

SelfRMDPPPO = TypeVar("SelfRMDPPPO", bound="RMDPPPO")


class RMDPPPO(RMDPAlgorithm, PPO):
    """PPO with k representative policies serving n agents, each with its own reward (an r-MDP).

    Every PPO argument keeps its meaning; ``n_steps`` is per env slot. Env slot ``e`` is driven by
    representative ``e % k`` for the whole run when ``n_envs`` is a multiple of k, so every
    representative collects the same number of transitions; otherwise representatives rotate over the
    slots at episode ends (:attr:`~sb3_rmdp.core.RMDPAlgorithm.rotates_representatives`). Each
    transition yields all n agent rewards; a per-agent critic learns ``V^{ij}`` and per-agent GAE gives
    ``A^{ij}``; the policy loss of a sample collected by j uses the marginal
    advantage ``sum_i alpha[i, j] A^{ij}`` with the assigner's current ``alpha`` (paper eq. 9),
    normalized per representative within the minibatch; the value loss is the MSE over all agents.

    :param policy: ``"MlpPolicy"``, ``"CnnPolicy"`` (images), ``"MultiInputPolicy"`` (``Dict``
        observations) or a subclass of :class:`~sb3_rmdp.policies.MultiRepresentativePolicy`.
    :param env: an r-MDP env id, gymnasium env, env factory, or a VecEnv from
        :func:`~sb3_rmdp.envs.make_rmdp_vec_env`.
    :param k: the policy budget (number of representatives), ``1 <= k <= n_agents``.
    :param assigner: an :class:`~sb3_rmdp.assigners.Assigner` (default ``EMAssigner()``) or a name.
    :param n_envs: env slots to create when ``env`` is not a VecEnv (default ``k``).
    :param env_kwargs: keyword arguments for ``gym.make`` when ``env`` is an id (or for a factory).
    The other parameters are SB3's :class:`~stable_baselines3.PPO`'s.

    **Saving and resuming.** :meth:`save` writes SB3's zip: the policy and its optimizer as state dicts,
    and everything else as data (:mod:`sb3_rmdp.serialization`; no pickle, so that :meth:`load` runs no
    code from the file), the assigner included with its whole state (weights, EM's table and
    counters, end-to-end's logits, their Adam state and its copy of the returns, K-means's phase and
    recorded rewards, its generators), the rollout state
    (``_last_obs``, ``_last_episode_starts``, the returns of the episodes in progress,
    ``training_returns``) and the global Python, NumPy and torch random states (NumPy's shuffles the
    minibatches, torch's samples the actions), which :meth:`load` restores. So::

        model.learn(n); model.save(path)  # and keep the env in its state, e.g. pickle model.get_env()
        model = RMDPPPO.load(path, env=env_in_that_state, force_reset=False)
        model.learn(n, reset_num_timesteps=False)

    trains exactly, bit for bit, as ``learn(n); learn(n, reset_num_timesteps=False)`` without the
    round trip. The envs are not in the zip (SB3 never saves them): give back the same VecEnv, or a copy
    pickled at save time (``cloudpickle.dump(model.get_env(), f)``; VecNormalize statistics included),
    with ``force_reset=False``. With SB3's default ``force_reset=True`` the envs are reset and the
    episodes in progress are dropped: training goes on correctly, but not bit for bit. ``learn(2 * n)``
    equals the two calls as long as nothing is planned from a call's budget (learning-rate and clip
    schedules follow each call's progress; EM's warm-start cap and K-means's switch are set by the
    first call).
    """

    algorithm_name: ClassVar[str] = "RMDPPPO"
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
        use_sde: bool = False,
        sde_sample_freq: int = -1,
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

    def export_arguments(self, progress: float) -> tuple[type[BaseAlgorithm], dict[str, Any]]:
        """:class:`~stable_baselines3.PPO` and this model's arguments, schedules frozen at ``progress``."""
        return PPO, ppo_arguments(self, progress)

    def train(self) -> None:
        """SB3's PPO update, with marginal advantages and a per-agent value loss (:func:`ppo_update`).

        With the policy's ``critic_agents`` set (a sampled critic), every minibatch's value loss runs
        over that many agents drawn uniformly without replacement, by the model's own generator
        (seeded from ``seed``, saved with the model), so SB3's random streams are left as they are. When
        every minibatch trains the critic on the same agents (an aggregate buffer's tracked agents, with
        ``critic_agents`` at least their number), their rows are pinned for the update
        (:meth:`~sb3_rmdp.policies.MultiRepresentativePolicy.pinned_critic`).
        """
        critic_agents = getattr(self.policy, "critic_agents", None)
        if critic_agents is not None and critic_agents >= self.rollout_buffer.n_agents:
            critic_agents = None  # an aggregate buffer tracks fewer agents than the population
        self.rollout_buffer.critic_agents = critic_agents
        if critic_agents is not None:
            self.rollout_buffer.agent_generator = agent_generator(self)
        pinned = self.rollout_buffer.update_agents()
        try:
            if pinned is not None and self.policy.can_pin_critic():
                with self.policy.pinned_critic(pinned):
                    ppo_update(self)
            else:
                ppo_update(self)
        finally:
            self.rollout_buffer.critic_agents = None

    def _evaluate_minibatch(
        self, rollout_data: Any, actions: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """The policy's values (of the minibatch's sampled agents, with a sampled critic), log-probabilities
        and entropies of a minibatch's actions under their representatives."""
        return self.policy.evaluate_actions(
            rollout_data.observations,
            actions,
            representatives=rollout_data.representatives,
            agents=rollout_data.agents,
        )

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        if reset_num_timesteps or self._last_obs is None:
            # SB3 resets the env: the aggregate rollouts have no episode in progress (sb3_rmdp.aggregate)
            self._episode_statistics = None
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    def learn(
        self: SelfRMDPPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "RMDPPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRMDPPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


def ppo_update(model: Any) -> None:
    """SB3's PPO update (clipped surrogate, value clipping, target KL, entropy, grad clipping), with
    marginal advantages and a per-agent value loss; the one update of RMDPPPO, RMDPMaskablePPO and
    RMDPRecurrentPPO.

    Each minibatch is scored by ``model._evaluate_minibatch`` (the base's own extras: action masks, LSTM
    states); ``model._valid_samples`` marks the samples that count (RecurrentPPO pads sequences; the
    means then run over the valid ones, as sb3-contrib's). The assigner's own optimizer (if any) steps
    in the same backward pass as the policy's. A fixed assignment's marginal advantages are formed once
    per update by the buffer.

    :param model: an :class:`~sb3_rmdp.core.RMDPAlgorithm` of the PPO family.
    """
    # PPO reads the old values only to clip the value function: skip their (batch, n_agents) gather
    model._prepare_update(samples_old_values=model.clip_range_vf is not None)
    model.policy.set_training_mode(True)
    model._update_learning_rate(model.policy.optimizer)
    clip_range = model.clip_range(model._current_progress_remaining)
    if model.clip_range_vf is not None:
        clip_range_vf = model.clip_range_vf(model._current_progress_remaining)

    # listed once: walking the module tree for every minibatch's gradient clipping costs 30-40 us
    parameters = list(model.policy.parameters())
    entropy_losses = []
    pg_losses, value_losses = [], []
    clip_fractions = []

    continue_training = True
    for epoch in range(model.n_epochs):
        approx_kl_divs = []
        for rollout_data in model.rollout_buffer.get(model.batch_size):
            actions = rollout_data.actions
            if isinstance(model.action_space, spaces.Discrete):
                actions = rollout_data.actions.long().flatten()
            representatives = rollout_data.representatives

            values, log_prob, entropy = model._evaluate_minibatch(rollout_data, actions)
            valid = model._valid_samples(rollout_data)
            advantages = model.marginal_advantages(rollout_data.advantages, representatives.index, valid)

            ratio = th.exp(log_prob - rollout_data.old_log_prob)
            policy_loss_1 = advantages * ratio
            policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
            policy_loss = -_mean(th.min(policy_loss_1, policy_loss_2), valid)

            pg_losses.append(policy_loss.item())
            clip_fraction = _mean((th.abs(ratio - 1) > clip_range).float(), valid).item()
            clip_fractions.append(clip_fraction)

            if model.clip_range_vf is None:
                values_pred = values
            else:
                old_values = rollout_data.old_values
                assert old_values is not None  # the buffer samples them when clip_range_vf is set
                values_pred = old_values + th.clamp(values - old_values, -clip_range_vf, clip_range_vf)
            # Per-agent critic of the collecting representative: MSE over all agents (paper eq. 8).
            if valid is None:
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
            else:
                value_loss = th.mean(((rollout_data.returns - values_pred) ** 2)[valid])
            value_losses.append(value_loss.item())

            if entropy is None:
                entropy_loss = -_mean(-log_prob, valid)
            else:
                entropy_loss = -_mean(entropy, valid)
            entropy_losses.append(entropy_loss.item())

            loss = policy_loss + model.ent_coef * entropy_loss + model.vf_coef * value_loss

            with th.no_grad():
                log_ratio = log_prob - rollout_data.old_log_prob
                approx_kl_div = _mean((th.exp(log_ratio) - 1) - log_ratio, valid).cpu().numpy()
                approx_kl_divs.append(approx_kl_div)

            if model.target_kl is not None and approx_kl_div > 1.5 * model.target_kl:
                continue_training = False
                if model.verbose >= 1:
                    print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                break

            model.policy.optimizer.zero_grad()
            model.assigner.zero_grad()
            loss.backward()
            sampled_rows = model.policy.sampled_critic_parameters()  # a sampled critic's rows, if any
            th.nn.utils.clip_grad_norm_(
                [*parameters, *sampled_rows] if sampled_rows else parameters, model.max_grad_norm
            )
            model.policy.optimizer.step()
            model.policy.step_sampled_critic()
            model.assigner.step()

        model._n_updates += 1
        if not continue_training:
            break

    model.rollout_buffer.samples_old_values = True  # SB3's full samples for anyone else
    explained_var = model.rollout_buffer.explained_variance()

    model.logger.record("train/entropy_loss", np.mean(entropy_losses))
    model.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
    model.logger.record("train/value_loss", np.mean(value_losses))
    model.logger.record("train/approx_kl", np.mean(approx_kl_divs))
    model.logger.record("train/clip_fraction", np.mean(clip_fractions))
    model.logger.record("train/loss", loss.item())
    model.logger.record("train/explained_variance", explained_var)
    if hasattr(model.policy, "log_std"):
        model.logger.record("train/std", th.exp(model.policy.log_std).mean().item())
    model.logger.record("train/n_updates", model._n_updates, exclude="tensorboard")
    model.logger.record("train/clip_range", clip_range)
    if model.clip_range_vf is not None:
        model.logger.record("train/clip_range_vf", clip_range_vf)


def _mean(values: th.Tensor, valid: th.Tensor | None) -> th.Tensor:
    """The mean of ``values`` ``(batch,)``, over the ``valid`` samples only when given."""
    return th.mean(values) if valid is None else th.mean(values[valid])


def ppo_arguments(model: Any, progress: float) -> dict[str, Any]:
    """The constructor arguments the PPO family (PPO, MaskablePPO, RecurrentPPO) shares, read from
    ``model``, with the clip ranges frozen at ``progress``."""
    return {
        "n_steps": model.n_steps,
        "batch_size": model.batch_size,
        "n_epochs": model.n_epochs,
        "gamma": model.gamma,
        "gae_lambda": model.gae_lambda,
        "clip_range": float(model.clip_range(progress)),
        "clip_range_vf": None if model.clip_range_vf is None else float(model.clip_range_vf(progress)),
        "normalize_advantage": model.normalize_advantage,
        "ent_coef": model.ent_coef,
        "vf_coef": model.vf_coef,
        "max_grad_norm": model.max_grad_norm,
        "target_kl": model.target_kl,
    }
