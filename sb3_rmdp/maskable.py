"""Invalid action masking for k representatives: sb3-contrib's masked distributions on every action head.

:class:`MaskableMultiRepresentativePolicy` is :class:`~sb3_rmdp.policies.MultiRepresentativePolicy`
with sb3-contrib's masked distributions: each sample's action distribution is its representative's
head with the sample's mask applied (the mask belongs to the state, whoever acts). With ``k = n_agents
= 1`` it is created and evaluated exactly as sb3-contrib's ``MaskableActorCriticPolicy``. The
buffers store one mask per transition, as ``MaskableRolloutBuffer`` does. Needs sb3-contrib (the
``contrib`` extra).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import (
    MaskableCategoricalDistribution,
    MaskableDistribution,
    MaskableMultiCategoricalDistribution,
    make_masked_proba_distribution,
)
from sb3_contrib.common.maskable.policies import (
    MaskableActorCriticCnnPolicy,
    MaskableActorCriticPolicy,
    MaskableMultiInputActorCriticPolicy,
)
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule

from sb3_rmdp.buffers import RMDPDictRolloutBuffer, RMDPRolloutBuffer, RMDPRolloutBufferSamples
from sb3_rmdp.policies import MultiRepresentativePolicy, RepresentativesLike


class MaskableMultiRepresentativePolicy(MultiRepresentativePolicy):
    """:class:`~sb3_rmdp.policies.MultiRepresentativePolicy` with invalid action masking (Discrete,
    MultiDiscrete and MultiBinary actions); every method takes ``action_masks`` ``(batch, mask_dims)``
    as sb3-contrib's ``MaskableActorCriticPolicy`` does, besides ``representatives``."""

    stock_policy: ClassVar[type[BasePolicy]] = MaskableActorCriticPolicy

    def _build(self, lr_schedule: Schedule) -> None:
        # sb3-contrib's distribution replaces SB3's before the heads are sized from it.
        self.action_dist = make_masked_proba_distribution(self.action_space)
        super()._build(lr_schedule)

    def _action_head_size(self) -> int:
        dist = self.action_dist
        if isinstance(dist, MaskableCategoricalDistribution):
            return int(dist.action_dim)
        if isinstance(dist, MaskableMultiCategoricalDistribution):  # MultiBinary: [2] * n
            return int(sum(dist.action_dims))
        raise ValueError(f"Unsupported action distribution {type(dist).__name__} for masking.")

    def _masked(self, distribution: Any, action_masks: th.Tensor | np.ndarray | None) -> MaskableDistribution:
        if action_masks is not None:
            distribution.apply_masking(action_masks)
        return distribution

    def forward(
        self,
        obs: th.Tensor,
        deterministic: bool = False,
        representatives: RepresentativesLike = None,
        action_masks: th.Tensor | np.ndarray | None = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Act, evaluate and score in one pass, each sample's distribution masked by its mask.

        :param action_masks: ``(batch, mask_dims)`` with True (or 1) for the valid actions, or ``None``.
        :return: actions ``(batch, *action_shape)``, values ``(batch, n_agents)``, log-probabilities
            ``(batch,)``.
        """
        latent_pi, latent_vf, groups = self._latents(obs, representatives)
        values = self._values_from_latent(latent_vf, groups)
        distribution = self._masked(self._get_action_dist_from_latent(latent_pi, groups), action_masks)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, values, log_prob

    def evaluate_actions(
        self,
        obs: PyTorchObs,
        actions: th.Tensor,
        representatives: RepresentativesLike = None,
        action_masks: th.Tensor | np.ndarray | None = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """Values ``(batch, n_agents)``, log-likelihood and entropy ``(batch,)`` of ``actions``, masked."""
        latent_pi, latent_vf, groups = self._latents(obs, representatives)
        distribution = self._masked(self._get_action_dist_from_latent(latent_pi, groups), action_masks)
        log_prob = distribution.log_prob(actions)
        values = self._values_from_latent(latent_vf, groups)
        return values, log_prob, distribution.entropy()

    def get_distribution(
        self,
        obs: PyTorchObs,
        representatives: RepresentativesLike = None,
        action_masks: th.Tensor | np.ndarray | None = None,
    ) -> MaskableDistribution:
        return self._masked(super().get_distribution(obs, representatives), action_masks)

    def _predict(
        self,
        observation: PyTorchObs,
        deterministic: bool = False,
        representatives: RepresentativesLike = None,
        action_masks: th.Tensor | np.ndarray | None = None,
    ) -> th.Tensor:
        distribution = self.get_distribution(observation, representatives, action_masks)
        return distribution.get_actions(deterministic=deterministic)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        representative: RepresentativesLike = None,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict`` for one representative (an int) or one per observation, masked by
        ``action_masks`` (``(mask_dims,)`` or ``(n_envs, mask_dims)``; ``None``: every action valid)."""
        return self._predict_numpy(
            observation, state, deterministic, representative, action_masks=action_masks
        )


class MaskableMultiRepresentativeCnnPolicy(MaskableMultiRepresentativePolicy):
    """:class:`MaskableMultiRepresentativePolicy` on images (``NatureCNN``; the ``"CnnPolicy"`` alias)."""

    default_features_extractor = NatureCNN
    stock_policy = MaskableActorCriticCnnPolicy


class MaskableMultiRepresentativeMultiInputPolicy(MaskableMultiRepresentativePolicy):
    """:class:`MaskableMultiRepresentativePolicy` on ``Dict`` observations (``CombinedExtractor``; the
    ``"MultiInputPolicy"`` alias)."""

    default_features_extractor = CombinedExtractor
    stock_policy = MaskableMultiInputActorCriticPolicy


def mask_dims(action_space: spaces.Space) -> int:
    """Entries of one action mask: ``n`` (Discrete), ``sum(nvec)`` (MultiDiscrete), ``2 n`` (MultiBinary).

    :raises ValueError: for an action space masking does not cover, naming the ones it does.
    """
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        return int(np.sum(action_space.nvec))
    if isinstance(action_space, spaces.MultiBinary) and isinstance(action_space.n, int):
        return 2 * action_space.n
    raise ValueError(
        f"Action masking covers Discrete, MultiDiscrete and 1-D MultiBinary actions, not {action_space}."
    )


class _ActionMasks:
    """The mask storage of the masked buffers: ``action_masks`` ``(n_steps, n_envs, mask_dims)``."""

    action_masks: np.ndarray
    buffer_size: int
    n_envs: int
    pos: int
    action_space: spaces.Space

    def _allocate_masks(self) -> None:
        self.mask_dims = mask_dims(self.action_space)
        self.action_masks = np.ones((self.buffer_size, self.n_envs, self.mask_dims), dtype=np.float32)

    def _store_masks(self, action_masks: np.ndarray | None) -> None:
        if action_masks is not None:
            self.action_masks[self.pos] = np.asarray(action_masks).reshape((self.n_envs, self.mask_dims))

    def _masks_of(self, samples: RMDPRolloutBufferSamples, rows: np.ndarray) -> RMDPRolloutBufferSamples:
        masks = self.action_masks.reshape(-1, self.mask_dims)[rows]
        return samples._replace(action_masks=self.to_torch(masks, copy=False))  # type: ignore[attr-defined]


class RMDPMaskableRolloutBuffer(_ActionMasks, RMDPRolloutBuffer):
    """:class:`~sb3_rmdp.buffers.RMDPRolloutBuffer` that also stores each transition's action mask
    (``add(..., action_masks=)``; minibatches carry ``action_masks`` ``(B, mask_dims)``)."""

    def reset(self) -> None:
        self._allocate_masks()
        super().reset()

    def add(self, *args: Any, action_masks: np.ndarray | None = None, **kwargs: Any) -> None:
        self._store_masks(action_masks)
        super().add(*args, **kwargs)

    def _with_extras(self, samples: RMDPRolloutBufferSamples, rows: np.ndarray) -> RMDPRolloutBufferSamples:
        return self._masks_of(samples, rows)


class RMDPMaskableDictRolloutBuffer(_ActionMasks, RMDPDictRolloutBuffer):
    """:class:`RMDPMaskableRolloutBuffer` for ``Dict`` observations."""

    def reset(self) -> None:
        self._allocate_masks()
        super().reset()

    def add(self, *args: Any, action_masks: np.ndarray | None = None, **kwargs: Any) -> None:
        self._store_masks(action_masks)
        super().add(*args, **kwargs)

    def _with_extras(self, samples: RMDPRolloutBufferSamples, rows: np.ndarray) -> RMDPRolloutBufferSamples:
        return self._masks_of(samples, rows)
