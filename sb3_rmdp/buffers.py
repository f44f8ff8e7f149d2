"""``RMDPRolloutBuffer``: SB3's rollout buffer with a trailing agent axis and each slot's representative."""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecNormalize

from sb3_rmdp.arrays import large_zeros
from sb3_rmdp.policies import RepresentativeGroups

#: ``minibatches`` of :class:`RMDPRolloutBuffer`
MINIBATCHES = ("mixed", "per_representative")


def slot_representatives(n_envs: int, k: int) -> np.ndarray:
    """The representative driving each env slot at the start: slot ``e`` -> ``e % k`` (for the whole run
    when ``n_envs`` is a multiple of k; otherwise representatives rotate over the slots at episode ends).

    :return: ``(n_envs,)`` int64.
    """
    return np.arange(n_envs, dtype=np.int64) % k


def normalize_sorted_groups(advantages: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`sb3_rmdp.core.normalize_per_representative` in NumPy, for samples sorted by representative.

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


def normalize_one_group(advantages: np.ndarray) -> np.ndarray:
    """:func:`normalize_sorted_groups` of one representative's samples ``(batch,)`` float32, ``batch >= 2``:
    SB3's ``(a - mean) / (std + 1e-8)``, the std unbiased, in float32."""
    deviations = advantages - advantages.mean(dtype=np.float32)
    std = np.sqrt(np.dot(deviations, deviations) / np.float32(len(advantages) - 1))
    return (deviations / (std + np.float32(1e-8))).astype(np.float32, copy=False)


class RMDPRolloutBufferSamples(NamedTuple):
    """A minibatch. Shapes: observations ``(B, *obs_shape)``, actions ``(B, action_dim)``,
    returns ``(B, n_agents)``, old_log_prob ``(B,)``; old_values ``(B, n_agents)``, or ``None`` when
    the buffer was told they are not needed (:attr:`RMDPRolloutBuffer.samples_old_values`: PPO reads
    them only to clip the value function); advantages: per-agent ``(B, n_agents)``,
    or the marginal advantages ``(B,)`` when the buffer holds a fixed assignment (see
    :meth:`RMDPRolloutBuffer.fix_assignment`; normalized per representative if it was asked to);
    representatives: each sample's representative ``(B,)``
    with the samples grouped (sorted) by representative."""

    observations: th.Tensor | dict[str, th.Tensor]
    actions: th.Tensor
    old_values: th.Tensor | None
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    representatives: RepresentativeGroups
    #: ``(B, mask_dims)`` the action masks of the samples (masked buffers only)
    action_masks: th.Tensor | None = None
    #: ``(m,)`` the agents of ``returns`` and ``old_values`` (then ``(B, m)``) when the buffer samples
    #: agents for the critic (:attr:`RMDPRolloutBuffer.critic_agents`); ``None``: all of them
    agents: th.Tensor | None = None


class RMDPRolloutBuffer(RolloutBuffer):
    """Rollout buffer whose rewards, values, returns and advantages are ``(n_steps, n_envs, n_agents)``.

    GAE runs per agent, vectorized over agents, with exactly SB3's arithmetic (with ``n_agents=1`` it
    equals :meth:`RolloutBuffer.compute_returns_and_advantage` bit for bit). Slot ``e`` is driven by
    representative ``e % k`` (or by the representatives that rotate over it); each sample carries its
    representative. The buffer stores **per-agent**
    advantages; the marginal advantages ``sum_i alpha[i, j] A^{ij}`` are formed for each update, after
    the assigner ran at rollout end: once for the whole buffer when the assignment is fixed during the
    update (:meth:`fix_assignment`), else by ``RMDPPPO.train`` per minibatch (a learned assignment).

    Memory is linear in ``n_agents x transitions``, never in ``k``: four per-agent arrays (rewards,
    values, advantages, returns), allocated once and reused by every rollout. Unlike SB3's buffer it
    never copies them into an env-major layout for minibatches: :meth:`get` draws SB3's env-major sample
    indices (the same permutation, so the same minibatches) and reads the time-major rows they name.

    Unlike SB3's buffer, therefore: after :meth:`get` every array keeps its ``(n_steps, n_envs, ...)``
    layout (SB3 leaves them flattened env-major, ``generator_ready`` stays ``False``); between
    :meth:`reset` and GAE, rows not yet written hold the previous rollout's data, not zeros (every row
    is written before GAE reads it); and minibatches carry ``old_values=None`` while
    :attr:`samples_old_values` is ``False`` (only during ``RMDPPPO.train`` without ``clip_range_vf``).

    :param n_agents: number of agents (the reward vector's length).
    :param k: number of representatives.
    :param minibatches: ``"mixed"`` (default): SB3's minibatches, a permutation of all samples cut in
        ``batch_size`` pieces. ``"per_representative"``: the same permutation, split by representative
        and each representative's samples cut in ``batch_size`` pieces, the pieces taken in turn
        (representative 0's first, 1's first, ..., 0's second, ...), as the paper's reference code
        runs one PPO per representative on its own transitions. Every minibatch then holds one
        representative's samples, so the policy runs that representative's rows only (its action head,
        log-std and critic block): cheaper per minibatch at large k, and a different, not an
        approximate, training (each representative's advantages are normalized over its own minibatch
        either way). With ``k = 1`` both are SB3's.
    """

    rewards: np.ndarray
    values: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    #: ``(n_steps, n_envs)`` marginal advantages of a fixed assignment (see :meth:`fix_assignment`)
    marginal_advantages: np.ndarray | None
    _alpha: np.ndarray | None
    #: whether minibatches carry ``old_values`` (PPO needs them only with ``clip_range_vf``); set by
    #: ``RMDPPPO.train``. With ``False`` their ``(B, n_agents)`` gather is skipped.
    samples_old_values: bool
    #: agents per minibatch whose returns the minibatches carry (a sampled critic; ``None``: all), drawn
    #: by :attr:`agent_generator`; set by ``RMDPPPO.train`` from the policy's ``critic_agents``
    critic_agents: int | None
    agent_generator: np.random.Generator | None
    #: GAE writes the advantages over the rewards (one per-agent array less): for a buffer whose per-agent
    #: rewards are read by GAE only (:class:`~sb3_rmdp.aggregate.RMDPAggregateRolloutBuffer`)
    advantages_overwrite_rewards = False

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
        minibatches: str = "mixed",
    ):
        if minibatches not in MINIBATCHES:
            raise ValueError(f"minibatches={minibatches!r}: choose one of {MINIBATCHES}.")
        self.minibatches = minibatches
        self.n_agents = int(n_agents)
        self.k = int(k)
        self.slot_representatives = slot_representatives(n_envs, self.k)
        self._per_agent: tuple[np.ndarray, ...] = ()
        self.samples_old_values = True
        self.critic_agents = None
        self.agent_generator = None
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)

    def reset(self) -> None:
        # SB3's reset allocates small (n_steps, n_envs) rewards, values, advantages and returns; the
        # per-agent arrays replace them. They are allocated once and reused: every entry is written (by
        # `add`, then by GAE) before it is read, and a fresh multi-megabyte array per rollout would cost
        # its page faults again on every write.
        self._reset_sb3_arrays()
        shape = (self.buffer_size, self.n_envs, self.n_agents)
        if not self._per_agent or self._per_agent[0].shape != shape:
            self._per_agent = ()  # free the old arrays before allocating new ones (peak memory)
            arrays = 3 if self.advantages_overwrite_rewards else 4
            self._per_agent = tuple(large_zeros(shape, np.float32) for _ in range(arrays))
        if self.advantages_overwrite_rewards:
            self.rewards, self.values, self.returns = self._per_agent
            self.advantages = self.rewards
        else:
            self.rewards, self.values, self.advantages, self.returns = self._per_agent
        self._alpha = None
        self.normalizes_marginals = False
        self.marginal_advantages = None
        #: ``(n_steps, n_envs)`` the representative that acted at each step of each slot
        self.step_representatives = np.empty((self.buffer_size, self.n_envs), dtype=np.int64)
        self.step_representatives[:] = self.slot_representatives
        self._sample_representatives: np.ndarray | None = None

    @property
    def sample_representatives(self) -> np.ndarray:
        """``(n_steps * n_envs,)`` each sample's representative, numbered env-major as in SB3's
        ``swap_and_flatten`` (sample ``e * n_steps + t`` is step t of slot e)."""
        if self._sample_representatives is None:
            self._sample_representatives = self.step_representatives.T.reshape(-1).copy()
        return self._sample_representatives

    @property
    def slots_keep_their_representatives(self) -> bool:
        """Whether every slot was acted by one representative for the whole rollout."""
        return bool(np.all(self.step_representatives == self.step_representatives[:1]))

    def _reset_sb3_arrays(self) -> None:
        """SB3's ``reset``: the observation, action, start and log-probability arrays, position 0."""
        RolloutBuffer.reset(self)

    def _store_observations(self, obs: np.ndarray) -> None:
        if isinstance(self.observation_space, spaces.Discrete):
            obs = obs.reshape((self.n_envs, *self.obs_shape))
        self.observations[self.pos] = np.array(obs)

    def _observations_at(self, rows: np.ndarray) -> th.Tensor | dict[str, th.Tensor]:
        """The observations of time-major ``rows``, as a fresh tensor ``(B, *obs_shape)``."""
        return self.to_torch(self.observations.reshape(-1, *self.observations.shape[2:])[rows], copy=False)

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: th.Tensor,
        log_prob: th.Tensor,
        representatives: np.ndarray | None = None,
    ) -> None:
        """Store one step of all slots.

        :param reward: ``(n_envs, n_agents)`` agent rewards.
        :param episode_start: ``(n_envs,)``.
        :param value: ``(n_envs, n_agents)`` critic values of the slot's representative.
        :param log_prob: ``(n_envs,)``.
        :param representatives: ``(n_envs,)`` the representative acting in each slot (default: slot e's
            first, ``e % k``).
        """
        if representatives is not None:
            self.step_representatives[self.pos] = representatives
            self._sample_representatives = None
        if len(log_prob.shape) == 0:
            log_prob = log_prob.reshape(-1, 1)
        self._store_observations(obs)
        action = action.reshape((self.n_envs, self.action_dim))
        self.actions[self.pos] = np.array(action)
        self.rewards[self.pos] = np.asarray(reward).reshape(self.n_envs, self.n_agents)
        self.episode_starts[self.pos] = np.array(episode_start)
        self.values[self.pos] = value.detach().cpu().numpy().reshape(self.n_envs, self.n_agents)
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
        # SB3's recursion, ``delta = r + gamma * V' * nnt - V`` and ``A = delta + gamma * lambda * nnt * A'``,
        # with the same operations in the same order and SB3's dtype (float32 unless gamma, lambda or
        # the values are float64), written into two preallocated arrays: no (n_envs, n_agents)
        # temporaries per step. ``carry`` is SB3's unrounded ``last_gae_lam``, 0 before the last step.
        dtype = np.result_type(self.gamma, self.gae_lambda, self.rewards, self.values, last_values_np)
        delta = np.empty((self.n_envs, self.n_agents), dtype=dtype)
        carry = np.zeros((self.n_envs, self.n_agents), dtype=dtype)
        for step in reversed(range(self.buffer_size)):
            if step == self.buffer_size - 1:
                next_non_terminal = (1.0 - dones.astype(np.float32))[:, None]
                next_values = last_values_np
            else:
                next_non_terminal = (1.0 - self.episode_starts[step + 1])[:, None]
                next_values = self.values[step + 1]
            np.multiply(self.gamma, next_values, out=delta)
            np.multiply(delta, next_non_terminal, out=delta)
            np.add(self.rewards[step], delta, out=delta)
            np.subtract(delta, self.values[step], out=delta)
            np.multiply(self.gamma * self.gae_lambda * next_non_terminal, carry, out=carry)
            np.add(delta, carry, out=carry)
            self.advantages[step] = carry
        np.add(self.advantages, self.values, out=self.returns)  # SB3's `returns = advantages + values`

    def explained_variance(self, exact_up_to: int = 1 << 20) -> float:
        """SB3's ``explained_variance(values, returns)`` over every sample and agent, in bounded memory.

        Up to ``exact_up_to`` values it is SB3's function on the arrays flattened as SB3 flattens them
        (env-major), so it logs SB3's figure. Above, no temporary the size of the buffer is allocated
        (at n=1000 and 102,400 transitions one such array is 410 MB, and page-faulting a fresh one costs
        more than the arithmetic): both variances are one pass of torch's Welford kernel (double
        accumulation) over the arrays in place, ``var(returns - values)`` being the variance of the
        advantages, which GAE stored (``returns`` is their float32 sum with the values, so the two differ
        by that sum's rounding only).
        """
        if self.values.size <= exact_up_to:  # in SB3's env-major order: float32 sums depend on it
            return explained_variance(self.values.swapaxes(0, 1).ravel(), self.returns.swapaxes(0, 1).ravel())
        var_y = th.var(th.from_numpy(self.returns.ravel()), correction=0).item()
        var_d = th.var(th.from_numpy(self.advantages.ravel()), correction=0).item()
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
        """``(n_steps, n_envs)`` marginal advantages: each step weighted by its representative's column."""
        marginal = np.empty((self.buffer_size, self.n_envs), dtype=np.float32)
        if not self.slots_keep_their_representatives:
            for j in np.unique(self.step_representatives):
                acted = self.step_representatives == j
                marginal[acted] = self.advantages[acted] @ alpha[:, j]
            return marginal
        rows = np.empty((self.buffer_size, self.n_agents), dtype=np.float32)
        for slot, representative in enumerate(self.step_representatives[0]):
            # A contiguous copy of the slot's rows: BLAS sums a strided view in another order (1 ulp).
            np.copyto(rows, self.advantages[:, slot])
            marginal[:, slot] = rows @ alpha[:, representative]
        return marginal

    def _rows(self, batch_inds: np.ndarray) -> np.ndarray:
        """Rows of the time-major ``(n_steps * n_envs, ...)`` arrays holding env-major ``batch_inds``.

        Sample ``e * n_steps + t`` (SB3's numbering after ``swap_and_flatten``) is row ``t * n_envs + e``.
        """
        steps, slots = np.divmod(batch_inds, self.buffer_size)[::-1]
        return steps * self.n_envs + slots

    def get(self, batch_size: int | None = None) -> Generator[RMDPRolloutBufferSamples, None, None]:  # type: ignore[override]
        """SB3's minibatch generator: the same permutation from NumPy's global stream, as SB3 draws it,
        over the same env-major sample numbering, read in place from the time-major arrays."""
        assert self.full, ""
        indices = np.random.permutation(self.buffer_size * self.n_envs)  # noqa: NPY002
        if self._alpha is not None and self.marginal_advantages is None:
            self.marginal_advantages = self._compute_marginal_advantages(self._alpha)
        if batch_size is None:
            batch_size = self.buffer_size * self.n_envs
        if self.minibatches == "per_representative" and self.k > 1:
            for batch_inds, representative in self._per_representative_minibatches(indices, batch_size):
                yield self._get_samples(batch_inds, representative=representative)
            return
        start_idx = 0
        while start_idx < self.buffer_size * self.n_envs:
            yield self._get_samples(indices[start_idx : start_idx + batch_size])
            start_idx += batch_size

    def _per_representative_minibatches(
        self, indices: np.ndarray, batch_size: int
    ) -> Generator[tuple[np.ndarray, int], None, None]:
        """``minibatches="per_representative"``: the permutation ``indices`` split by representative (each
        in its permuted order), cut in ``batch_size`` pieces, the pieces of the representatives in turn."""
        representatives = self.sample_representatives[indices]
        grouped = indices[np.argsort(representatives, kind="stable")]
        counts = np.bincount(representatives, minlength=self.k)
        starts = np.concatenate(([0], np.cumsum(counts)))
        for offset in range(0, int(counts.max()), batch_size):
            for j in np.flatnonzero(counts > offset):
                start = starts[j] + offset
                yield grouped[start : min(start + batch_size, starts[j + 1])], int(j)

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None, representative: int | None = None
    ) -> RMDPRolloutBufferSamples:
        """The minibatch of env-major ``batch_inds``; ``representative``: they are all its samples."""
        sample_representatives = self.sample_representatives[batch_inds]
        if representative is not None:
            counts = np.zeros(self.k, dtype=np.int64)
            counts[representative] = len(batch_inds)
        else:
            if self.k > 1:
                # Group the minibatch by representative (the loss is a mean: order does not matter), so the
                # policy runs one matrix product per representative with no permutation.
                order = np.argsort(sample_representatives, kind="stable")
                batch_inds, sample_representatives = batch_inds[order], sample_representatives[order]
            counts = np.bincount(sample_representatives, minlength=self.k)
        rows = self._rows(batch_inds)
        samples = self.buffer_size * self.n_envs

        def flat(array: np.ndarray) -> np.ndarray:
            return array.reshape(samples, *array.shape[2:])

        if self.marginal_advantages is not None:
            advantages = flat(self.marginal_advantages)[rows]
            if self.normalizes_marginals and len(advantages) > 1:
                advantages = (
                    normalize_sorted_groups(advantages, counts)
                    if representative is None
                    else normalize_one_group(advantages)
                )
        else:
            advantages = flat(self.advantages)[rows]
        columns, agents = self._critic_columns()

        def per_agent(array: np.ndarray) -> np.ndarray:
            """``(B, n_agents)`` rows of a per-agent array, or ``(B, m)`` of the sampled agents."""
            return flat(array)[rows] if columns is None else flat(array)[rows[:, None], columns]

        data = (
            flat(self.actions)[rows].astype(np.float32, copy=False),
            flat(self.log_probs)[rows],
            advantages,
            per_agent(self.returns),
        )
        # Every array is a fresh copy (fancy indexing): the tensors may share its memory.
        observations = self._observations_at(rows)
        actions, old_log_prob, advantages, returns = (self.to_torch(array, copy=False) for array in data)
        old_values = self.to_torch(per_agent(self.values), copy=False) if self.samples_old_values else None
        representatives = RepresentativeGroups(
            index=th.as_tensor(sample_representatives, device=self.device),
            order=None,
            counts=counts.tolist(),
            single=representative,
        )
        minibatch = RMDPRolloutBufferSamples(
            observations,
            actions,
            old_values,
            old_log_prob,
            advantages,
            returns,
            representatives,
            agents=None if agents is None else th.as_tensor(agents, device=self.device),  # (a tensor: itself)
        )
        return self._with_extras(minibatch, rows)

    def update_agents(self) -> th.Tensor | None:
        """``(m,)`` the agents of every minibatch's critic targets in this update when they are the same
        for the whole update and not the whole population (``None`` otherwise): what
        :meth:`~sb3_rmdp.policies.MultiRepresentativePolicy.pinned_critic` pins."""
        return None

    def _critic_columns(self) -> tuple[np.ndarray | None, np.ndarray | th.Tensor | None]:
        """A minibatch's columns of the per-agent arrays and the agents they hold, ``(m,)`` each: a fresh
        sample of :attr:`critic_agents` agents, or ``(None, None)`` for all of them."""
        if self.critic_agents is None:
            return None, None
        assert self.agent_generator is not None, "a sampled critic needs the buffer's agent_generator"
        agents = np.sort(self.agent_generator.choice(self.n_agents, self.critic_agents, replace=False))
        return agents, agents

    def _with_extras(self, samples: RMDPRolloutBufferSamples, rows: np.ndarray) -> RMDPRolloutBufferSamples:
        """``samples`` with what a subclass stores besides SB3's fields (e.g. action masks) of ``rows``."""
        return samples


class RMDPDictRolloutBuffer(RMDPRolloutBuffer):
    """:class:`RMDPRolloutBuffer` for ``Dict`` observations (SB3's ``DictRolloutBuffer`` layout: one
    ``(n_steps, n_envs, *shape)`` array per key); minibatch observations are dicts of tensors."""

    observations: dict[str, np.ndarray]  # type: ignore[assignment]

    def _reset_sb3_arrays(self) -> None:
        DictRolloutBuffer.reset(self)  # type: ignore[arg-type]

    def _store_observations(self, obs: dict[str, np.ndarray]) -> None:  # type: ignore[override]
        assert isinstance(self.observation_space, spaces.Dict) and isinstance(self.obs_shape, dict)
        for key, array in self.observations.items():
            value = np.array(obs[key])
            if isinstance(self.observation_space.spaces[key], spaces.Discrete):
                value = value.reshape((self.n_envs, *self.obs_shape[key]))
            array[self.pos] = value

    def _observations_at(self, rows: np.ndarray) -> dict[str, th.Tensor]:
        return {
            key: self.to_torch(array.reshape(-1, *array.shape[2:])[rows], copy=False)
            for key, array in self.observations.items()
        }
