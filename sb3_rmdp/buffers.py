"""``RMDPRolloutBuffer``: SB3's rollout buffer with a trailing agent axis and each slot's representative."""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecNormalize

from sb3_rmdp.policies import RepresentativeGroups


def slot_representatives(n_envs: int, k: int) -> np.ndarray:
    """The representative driving each env slot for the whole run: slot ``e`` -> ``e % k``.

    :return: ``(n_envs,)`` int64.
    """
    return np.arange(n_envs, dtype=np.int64) % k


def normalize_sorted_groups(advantages: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`sb3_rmdp.ppo.normalize_per_representative` in NumPy, for samples sorted by representative.

    Each group is shifted to zero mean and divided by its unbiased std (+ 1e-8); a group of one sample
    gets 0. A handful of vectorized NumPy calls whatever k: the fixed-assignment path of every minibatch.

    :param advantages: ``(batch,)`` float32, sorted by representative.
    :param counts: ``(k,)`` samples per representative.
    :return: ``(batch,)`` float32.
    """
    sizes = counts[counts > 0]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    means = np.add.reduceat(advantages, starts) / sizes.astype(np.float32)
    deviations = advantages - np.repeat(means, sizes)
    stds = np.sqrt(
        np.add.reduceat(deviations * deviations, starts) / np.maximum(sizes - 1, 1).astype(np.float32)
    )
    normalized = deviations / (np.repeat(stds, sizes) + np.float32(1e-8))
    normalized[np.repeat(sizes, sizes) < 2] = 0.0
    return normalized.astype(np.float32, copy=False)


class RMDPRolloutBufferSamples(NamedTuple):
    """A minibatch. Shapes: observations ``(B, *obs_shape)``, actions ``(B, action_dim)``,
    old_values / returns ``(B, n_agents)``, old_log_prob ``(B,)``; advantages: per-agent ``(B, n_agents)``,
    or the marginal advantages ``(B,)`` when the buffer holds a fixed assignment (see
    :meth:`RMDPRolloutBuffer.fix_assignment`; normalized per representative if it was asked to);
    representatives: each sample's representative ``(B,)``
    with the samples grouped (sorted) by representative."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    representatives: RepresentativeGroups


class RMDPRolloutBuffer(RolloutBuffer):
    """Rollout buffer whose rewards, values, returns and advantages are ``(n_steps, n_envs, n_agents)``.

    GAE runs per agent, vectorized over agents, with exactly SB3's arithmetic (with ``n_agents=1`` it
    equals :meth:`RolloutBuffer.compute_returns_and_advantage` bit for bit). Slot ``e`` is driven by
    representative ``e % k``; each sample carries that index. The buffer stores **per-agent**
    advantages; the marginal advantages ``sum_i alpha[i, j] A^{ij}`` are formed for each update, after
    the assigner ran at rollout end: once for the whole buffer when the assignment is fixed during the
    update (:meth:`fix_assignment`), else by ``RMDPPPO.train`` per minibatch (a learned assignment).

    Memory is linear in ``n_agents x transitions``, never in ``k``: three per-agent arrays (rewards,
    values, advantages); the returns ``advantages + values`` are formed per minibatch (the same float32
    sum SB3 stores), and :attr:`returns` computes them on demand.

    :param n_agents: number of agents (the reward vector's length).
    :param k: number of representatives.
    """

    rewards: np.ndarray
    values: np.ndarray
    advantages: np.ndarray
    #: ``(n_steps * n_envs,)`` marginal advantages of a fixed assignment (see :meth:`fix_assignment`)
    marginal_advantages: np.ndarray | None
    _alpha: np.ndarray | None

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        n_agents: int = 1,
        k: int = 1,
    ):
        self.n_agents = int(n_agents)
        self.k = int(k)
        self.slot_representatives = slot_representatives(n_envs, self.k)
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)

    def reset(self) -> None:
        # Free the last rollout's arrays before allocating this one's (peak memory); SB3's reset
        # replaces rewards, values and advantages with small (n_steps, n_envs) arrays.
        self.marginal_advantages = None
        super().reset()
        shape = (self.buffer_size, self.n_envs, self.n_agents)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.advantages = np.zeros(shape, dtype=np.float32)
        self._alpha = None
        self.normalizes_marginals = False
        self.marginal_advantages = None
        # Samples are flattened env-major by `swap_and_flatten`: sample e * n_steps + t is slot e.
        self.sample_representatives = np.repeat(self.slot_representatives, self.buffer_size)

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: th.Tensor,
        log_prob: th.Tensor,
    ) -> None:
        """Store one step of all slots.

        :param reward: ``(n_envs, n_agents)`` agent rewards.
        :param episode_start: ``(n_envs,)``.
        :param value: ``(n_envs, n_agents)`` critic values of the slot's representative.
        :param log_prob: ``(n_envs,)``.
        """
        if len(log_prob.shape) == 0:
            log_prob = log_prob.reshape(-1, 1)
        if isinstance(self.observation_space, spaces.Discrete):
            obs = obs.reshape((self.n_envs, *self.obs_shape))
        action = action.reshape((self.n_envs, self.action_dim))
        self.observations[self.pos] = np.array(obs)
        self.actions[self.pos] = np.array(action)
        self.rewards[self.pos] = np.asarray(reward).reshape(self.n_envs, self.n_agents)
        self.episode_starts[self.pos] = np.array(episode_start)
        self.values[self.pos] = value.clone().cpu().numpy().reshape(self.n_envs, self.n_agents)
        self.log_probs[self.pos] = log_prob.clone().cpu().numpy()
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True

    def compute_returns_and_advantage(self, last_values: th.Tensor, dones: np.ndarray) -> None:
        """Per-agent GAE(lambda) and TD(lambda) returns, vectorized over agents.

        :param last_values: ``(n_envs, n_agents)`` values of the observation after the last step.
        :param dones: ``(n_envs,)`` whether the last step ended an episode.
        """
        last_values_np = last_values.clone().cpu().numpy().reshape(self.n_envs, self.n_agents)
        last_gae_lam: np.ndarray | float = 0
        for step in reversed(range(self.buffer_size)):
            if step == self.buffer_size - 1:
                next_non_terminal = (1.0 - dones.astype(np.float32))[:, None]
                next_values = last_values_np
            else:
                next_non_terminal = (1.0 - self.episode_starts[step + 1])[:, None]
                next_values = self.values[step + 1]
            # Same expression, same operation order as SB3, with an agent axis broadcast.
            delta = self.rewards[step] + self.gamma * next_values * next_non_terminal - self.values[step]
            last_gae_lam = delta + self.gamma * self.gae_lambda * next_non_terminal * last_gae_lam
            self.advantages[step] = last_gae_lam

    @property
    def returns(self) -> np.ndarray:
        """TD(lambda) returns ``advantages + values``, same layout (computed on each access)."""
        return self.advantages + self.values

    @returns.setter
    def returns(self, _value: np.ndarray) -> None:
        """Ignored: ``RolloutBuffer.reset`` allocates a returns array, which this buffer derives instead.

        Returns are always ``advantages + values``: to change what the critic is trained on, change
        ``advantages`` (or ``values``); writing into :attr:`returns` has no effect.
        """

    def explained_variance(self, chunk_elements: int = 1 << 24) -> float:
        """SB3's ``explained_variance(values, returns)`` over every sample and agent, in bounded memory.

        Up to ``chunk_elements`` values it is SB3's function on the flattened arrays; above, the two
        variances are accumulated over chunks of samples in float64 (Chan's parallel formula), so that
        no temporary the size of the buffer is allocated (at n=1000 and 102,400 transitions one such
        array is 410 MB).
        """
        values = self.values.reshape(-1, self.n_agents)
        advantages = self.advantages.reshape(-1, self.n_agents)
        if values.size <= chunk_elements:
            return explained_variance(values.ravel(), (advantages + values).ravel())
        rows = max(1, chunk_elements // self.n_agents)
        stats = {"y": [0, 0.0, 0.0], "d": [0, 0.0, 0.0]}  # count, mean, sum of squared deviations
        for start in range(0, len(values), rows):
            y = (advantages[start : start + rows] + values[start : start + rows]).astype(np.float64)
            for key, x in (("y", y), ("d", y - values[start : start + rows])):
                count, mean, m2 = stats[key]
                n, x_mean = x.size, float(x.mean())
                x_m2 = float(((x - x_mean) ** 2).sum())
                delta, total = x_mean - mean, count + n
                stats[key] = [total, mean + delta * n / total, m2 + x_m2 + delta**2 * count * n / total]
        var_y, var_d = stats["y"][2] / stats["y"][0], stats["d"][2] / stats["d"][0]
        return float("nan") if var_y == 0 else float(1 - var_d / var_y)

    def fix_assignment(self, alpha: np.ndarray | None, normalize: bool = False) -> None:
        """Form the marginal advantages ``sum_i alpha[i, j] A^{ij}`` once for this update.

        For an assignment that does not change during the update (every assigner but a learning one),
        each sample's marginal advantage is computed once per rollout instead of once per minibatch
        and epoch; minibatches then carry ``(B,)`` marginal advantages. ``None`` goes back to per-agent
        advantages (for an assignment learned in the update).

        :param alpha: ``(n_agents, k)`` assignment weights, or ``None``.
        :param normalize: normalize each minibatch's marginal advantages per representative here (with
            ``k > 1``; see :func:`normalize_sorted_groups`), so that they arrive ready for the loss.
        """
        self._alpha = None if alpha is None else np.asarray(alpha, dtype=np.float32)
        self.normalizes_marginals = alpha is not None and normalize and self.k > 1
        self.marginal_advantages = None

    def _compute_marginal_advantages(self, alpha: np.ndarray) -> np.ndarray:
        """``(n_steps * n_envs,)`` marginal advantages of the flattened (env-major) samples."""
        marginal = np.empty(self.buffer_size * self.n_envs, dtype=np.float32)
        for slot, representative in enumerate(self.slot_representatives):
            rows = slice(slot * self.buffer_size, (slot + 1) * self.buffer_size)
            marginal[rows] = self.advantages[rows] @ alpha[:, representative]
        return marginal

    def get(self, batch_size: int | None = None) -> Generator[RMDPRolloutBufferSamples, None, None]:  # type: ignore[override]
        """SB3's minibatch generator (the same permutation from NumPy's global stream, as SB3 draws it),
        without a returns array."""
        assert self.full, ""
        indices = np.random.permutation(self.buffer_size * self.n_envs)  # noqa: NPY002
        if not self.generator_ready:
            for name in ("observations", "actions", "values", "log_probs", "advantages"):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True
        if self._alpha is not None and self.marginal_advantages is None:
            self.marginal_advantages = self._compute_marginal_advantages(self._alpha)
        if batch_size is None:
            batch_size = self.buffer_size * self.n_envs
        start_idx = 0
        while start_idx < self.buffer_size * self.n_envs:
            yield self._get_samples(indices[start_idx : start_idx + batch_size])
            start_idx += batch_size

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> RMDPRolloutBufferSamples:
        sample_representatives = self.sample_representatives[batch_inds]
        if self.k > 1:
            # Group the minibatch by representative (the loss is a mean: order does not matter), so the
            # policy runs one matrix product per representative with no permutation.
            order = np.argsort(sample_representatives, kind="stable")
            batch_inds, sample_representatives = batch_inds[order], sample_representatives[order]
        counts = np.bincount(sample_representatives, minlength=self.k)
        values, advantages = self.values[batch_inds], self.advantages[batch_inds]
        returns = advantages + values
        if self.marginal_advantages is not None:
            advantages = self.marginal_advantages[batch_inds]
            if self.normalizes_marginals and len(advantages) > 1:
                advantages = normalize_sorted_groups(advantages, counts)
        data = (
            self.observations[batch_inds],
            self.actions[batch_inds].astype(np.float32, copy=False),
            values,
            self.log_probs[batch_inds].flatten(),
            advantages,
            returns,
        )
        # Every array is a fresh copy (fancy indexing): the tensors may share its memory.
        observations, actions, old_values, old_log_prob, advantages, returns = (
            self.to_torch(array, copy=False) for array in data
        )
        representatives = RepresentativeGroups(
            index=th.as_tensor(sample_representatives, device=self.device),
            order=None,
            counts=counts.tolist(),
        )
        return RMDPRolloutBufferSamples(
            observations, actions, old_values, old_log_prob, advantages, returns, representatives
        )
