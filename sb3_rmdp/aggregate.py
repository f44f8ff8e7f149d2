"""Rollouts whose cost does not grow with ``n_agents``: agents aggregated by representative.

The actor loss needs the agents only through each representative's marginal advantage
``sum_i alpha[i, j] A^{ij}``, and GAE is linear in the rewards and the values: for an assignment fixed
during the update, the marginal advantage is the GAE of the aggregate reward ``sum_i alpha[i, j] r^i``
with the aggregate value ``sum_i alpha[i, j] V^{ij} = (alpha[:, j] @ W_j) . h + alpha[:, j] @ c_j`` of the
linear critic head ``(W_j, c_j)`` on the critic latent ``h``. So :class:`RMDPAggregateRolloutBuffer`
stores, per step, the env's compact reward statistic (e.g. the forward speed) and the critic latent
``(latent_dim,)``, and forms the marginal advantages once per update from them, after the assigner's
E-step; the aggregate rewards come from the env in ``O(log n_agents)`` per step
(``weighted_rewards_from_statistics``). Only ``tracked_agents`` agents per representative, drawn afresh
for every rollout, get per-agent rewards, values and GAE: they are the critic's training targets (a
sampled critic). By default (``tracked_from="assignment"``) a representative's tracked agents are those
assigned to it (a sample of them when they are more, topped up with others when fewer): the rows of its
critic head that its aggregate value weighs. Each
finished episode's return vector, which the assigners read, comes from the episode's statistics
(``episode_returns_from_statistics``).

Exact in arithmetic for the marginal advantages (equal to the per-agent path up to float rounding);
the critic is trained on the tracked agents only (an approximation). Needs an env with compact rewards
that provides both functions (``VelocityPopulation(compact_rewards=True)``), ``RMDPPPO``, env slots that
keep their representative (``n_envs`` a multiple of k) and an assignment that is fixed during each
update (EM, K-means, fixed, random, coverage; not end-to-end, whose gradient needs every agent's
advantages). K-means records its pretraining rewards from the statistics, all n agents' per step over its
last ``n_samples`` steps, as on the per-agent path.

    RMDPPPO("MlpPolicy", env, k=10, rollout_buffer_class=RMDPAggregateRolloutBuffer,
            rollout_buffer_kwargs={"tracked_agents": 256})

With ``policy_kwargs={"critic_agents": M}`` at least ``tracked_agents`` every minibatch trains the critic on
the same tracked agents, whose head rows ``RMDPPPO.train`` then pins for the update
(:meth:`~sb3_rmdp.policies.MultiRepresentativePolicy.pinned_critic`); with
``minibatches="per_representative"`` each minibatch runs one representative's rows only (see
:class:`~sb3_rmdp.buffers.RMDPRolloutBuffer`). Both together are the fastest path at large n.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_rmdp.arrays import large_zeros
from sb3_rmdp.buffers import RMDPRolloutBuffer
from sb3_rmdp.envs.contract import AGENT_REWARD_STATISTIC_KEY
from sb3_rmdp.policies import MultiRepresentativePolicy

#: where :class:`RMDPAggregateRolloutBuffer` draws each representative's tracked agents from
TRACKED_FROM = ("assignment", "population")


def agent_generator(model: Any) -> np.random.Generator:
    """The model's own generator of agent samples (seeded from its seed, saved with it), created once."""
    if getattr(model, "_critic_agent_generator", None) is None:
        model._critic_agent_generator = np.random.default_rng(
            None if model.seed is None else [int(model.seed), 25]
        )
    return model._critic_agent_generator


def aggregate_value_head(
    policy: MultiRepresentativePolicy, alpha: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each representative's aggregate value head ``(alpha[:, j] @ W_j, alpha[:, j] @ c_j)``.

    :param alpha: ``(n_agents, k)``.
    :return: weights ``(k, latent_dim)`` and biases ``(k,)``, float64.
    """
    weight = policy.value_net.weight.detach().cpu().numpy().astype(np.float64)
    bias = policy.value_net.bias.detach().cpu().numpy().astype(np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if policy.critic_layout == "conditioned":
        return alpha.T @ weight, alpha.T @ bias
    k, n_agents = alpha.shape[1], alpha.shape[0]
    blocks = weight.reshape(k, n_agents, -1)
    return np.einsum("nk,knd->kd", alpha, blocks), np.einsum("nk,kn->k", alpha, bias.reshape(k, n_agents))


class RMDPAggregateRolloutBuffer(RMDPRolloutBuffer):
    """A rollout buffer that aggregates the agents by representative (see the module notes).

    Its per-agent arrays hold the ``tracked_agents`` agents of the rollout only
    (``(n_steps, n_envs, tracked_agents)``; after GAE, ``rewards`` holds their advantages: it is the same
    array as ``advantages``); besides them it stores each step's reward statistic
    ``(n_steps, n_envs)`` and critic latent ``(n_steps, n_envs, latent_dim)``.

    :param n_agents: the population's size.
    :param tracked_agents: agents per representative whose rewards, values and GAE the buffer keeps, the
        critic's targets; drawn afresh for every rollout by the model's agent generator (all of them when
        ``tracked_agents >= n_agents``).
    :param tracked_from: ``"assignment"`` (default): each representative tracks the agents assigned to
        it at the rollout's start (``alpha[i, j] > 0``; a uniform sample of ``tracked_agents`` of them
        when they are more, all of them and a uniform sample of the others when they are fewer), so its
        critic learns the values its aggregate value head weighs. ``"population"``: one uniform sample
        of the population for every representative.
    """

    statistics: np.ndarray
    latents: np.ndarray
    #: the tracked agents' rewards are GAE's input only: their advantages overwrite them
    advantages_overwrite_rewards = True

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
        tracked_agents: int = 256,
        minibatches: str = "mixed",
        tracked_from: str = "assignment",
    ):
        if int(tracked_agents) < 1:
            raise ValueError(f"tracked_agents={tracked_agents}: track at least one agent for the critic.")
        if tracked_from not in TRACKED_FROM:
            raise ValueError(f"tracked_from={tracked_from!r}: choose one of {TRACKED_FROM}.")
        self.tracked_from = tracked_from
        self.population = int(n_agents)
        n_tracked = min(int(tracked_agents), self.population)
        #: the agents of the per-agent arrays' columns, ascending: ``(tracked_agents,)`` the same for every
        #: slot, or ``(k, tracked_agents)`` row j those of representative j's slots
        self.tracked: np.ndarray = np.arange(n_tracked)
        #: the policy whose critic head aggregates the values (set by the rollout loop)
        self.policy: MultiRepresentativePolicy | None = None
        self.weighted_rewards: Any = None
        self._tracked_tensor: th.Tensor | None = None
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device,
            gae_lambda,
            gamma,
            n_envs,
            n_tracked,
            k,
            minibatches=minibatches,
        )

    def reset(self) -> None:
        super().reset()
        self.statistics = np.zeros((self.buffer_size, self.n_envs), dtype=np.float64)
        #: ``(step, slot, critic latent of the terminal observation)`` of each truncated episode
        self.bootstraps: list[tuple[int, int, np.ndarray]] = []
        self.last_latents: np.ndarray | None = None
        self.last_dones: np.ndarray | None = None

    def draw_tracked(self, generator: np.random.Generator, alpha: np.ndarray | None = None) -> None:
        """Draw this rollout's tracked agents (all of them when they are at most ``tracked_agents``): from
        each representative's assigned agents under ``alpha`` ``(n_agents, k)`` (see ``tracked_from``), or
        one sample of the population (``tracked_from="population"``, ``alpha`` None or one representative).
        """
        self._tracked_tensor = None
        m = self.n_agents
        if m >= self.population:
            return
        if self.tracked_from == "population" or alpha is None or self.k == 1:
            self.tracked = np.sort(generator.choice(self.population, m, replace=False))
            return
        tracked = np.empty((self.k, m), dtype=np.int64)
        for j in range(self.k):
            assigned = np.flatnonzero(alpha[:, j] > 0)
            if len(assigned) >= m:
                tracked[j] = np.sort(generator.choice(assigned, m, replace=False))
                continue
            others = np.setdiff1d(np.arange(self.population), assigned, assume_unique=True)
            tracked[j] = np.sort(
                np.concatenate((assigned, generator.choice(others, m - len(assigned), replace=False)))
            )
        self.tracked = tracked

    def tracked_of(self, j: int) -> np.ndarray:
        """``(tracked_agents,)`` the tracked agents of representative ``j``'s slots."""
        return self.tracked if self.tracked.ndim == 1 else self.tracked[j]

    def add_step(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        episode_start: np.ndarray,
        log_prob: th.Tensor,
        representatives: np.ndarray,
        statistics: np.ndarray,
        latents: th.Tensor,
    ) -> None:
        """Store one step of all slots: SB3's fields, the reward statistics ``(n_envs,)`` and the critic
        latents ``(n_envs, latent_dim)``. The tracked agents' rewards and values are formed for the whole
        rollout at once, by :meth:`finish`."""
        latents_np = latents.detach().cpu().numpy()
        if getattr(self, "latents", None) is None or self.latents.shape[2:] != latents_np.shape[1:]:
            self.latents = large_zeros((self.buffer_size, self.n_envs, *latents_np.shape[1:]), np.float32)
        self.statistics[self.pos] = statistics
        self.latents[self.pos] = latents_np
        self.step_representatives[self.pos] = representatives
        self._sample_representatives = None
        self._store_observations(obs)
        self.actions[self.pos] = np.array(action).reshape((self.n_envs, self.action_dim))
        self.episode_starts[self.pos] = np.array(episode_start)
        self.log_probs[self.pos] = log_prob.cpu().numpy()
        self.pos += 1
        self.full = self.pos == self.buffer_size

    @th.no_grad()
    def finish(self, rewards_of: Any, last_latents: th.Tensor, dones: np.ndarray) -> None:
        """The tracked agents' rewards (from the statistics, plus the time-limit bootstraps) and values (from
        the latents), then their GAE.

        :param rewards_of: the env's ``rewards_from_statistics``.
        :param last_latents: ``(n_envs, latent_dim)`` critic latents of the observations after the last step.
        :param dones: ``(n_envs,)`` whether the last step ended an episode.
        """
        assert self.policy is not None
        self.last_latents = last_latents.cpu().numpy().astype(np.float64)
        self.last_dones = np.asarray(dones).copy()
        representatives = self.step_representatives[0]
        for slot, j in enumerate(representatives):  # a slot at a time: no temporary the size of the buffer
            self.rewards[:, slot] = rewards_of(self.statistics[:, slot], self.tracked_of(j))
        one_head = self.policy.critic_layout == "conditioned" or self.policy.k == 1
        if one_head and self.tracked.ndim == 1:  # one head and the same agents for every slot
            latents = th.as_tensor(self.latents.reshape(-1, self.latents.shape[-1]), device=self.device)
            values = self.policy._values_from_latent(latents, int(representatives[0]), self.tracked_tensor)
            self.values[:] = values.cpu().numpy().reshape(self.values.shape)
        else:
            for slot, j in enumerate(representatives):
                latents = th.as_tensor(self.latents[:, slot], device=self.device)
                values = self.policy._values_from_latent(latents, int(j), self._tracked_tensor_of(j))
                self.values[:, slot] = values.cpu().numpy()
        for step, slot, latent in self.bootstraps:
            j = int(representatives[slot])
            latent_t = th.as_tensor(latent[None], dtype=th.float32, device=self.device)
            bootstrap = self.policy._values_from_latent(latent_t, j, self._tracked_tensor_of(j))[0]
            self.rewards[step, slot] += self.gamma * bootstrap.cpu().numpy()
        last_values = th.stack(
            [
                self.policy._values_from_latent(
                    last_latents[slot : slot + 1], int(j), self._tracked_tensor_of(j)
                )[0]
                for slot, j in enumerate(representatives)
            ]
        )
        super().compute_returns_and_advantage(last_values, dones)

    def fix_assignment(self, alpha: np.ndarray | None, normalize: bool = False) -> None:
        if alpha is None:
            raise ValueError(
                "RMDPAggregateRolloutBuffer forms the marginal advantages once per update, for an "
                "assignment fixed during it; an assigner that learns the assignment in the update "
                "(end-to-end) needs every agent's advantages: use RMDPRolloutBuffer, or EM / fixed / "
                "random / coverage."
            )
        super().fix_assignment(alpha, normalize)

    def _compute_marginal_advantages(self, alpha: np.ndarray) -> np.ndarray:
        """GAE of each slot's aggregate reward and value under its representative's column of ``alpha``."""
        if not self.slots_keep_their_representatives:
            raise ValueError(
                "RMDPAggregateRolloutBuffer needs slots that keep their representative (n_envs % k == 0)."
            )
        assert self.policy is not None and self.last_latents is not None and self.last_dones is not None
        weights, biases = aggregate_value_head(self.policy, alpha)
        representatives = self.step_representatives[0]
        rewards = np.empty((self.buffer_size, self.n_envs))
        for slot, j in enumerate(representatives):
            rewards[:, slot] = self.weighted_rewards(self.statistics[:, slot], alpha[:, j])
        head = weights[representatives]  # (n_envs, latent_dim)
        values = np.einsum("ted,ed->te", self.latents, head) + biases[representatives]
        last_values = np.einsum("ed,ed->e", self.last_latents, head) + biases[representatives]
        for step, slot, latent in self.bootstraps:
            j = representatives[slot]
            rewards[step, slot] += self.gamma * (latent @ weights[j] + biases[j])
        marginal = np.empty((self.buffer_size, self.n_envs))
        carry = np.zeros(self.n_envs)
        for step in reversed(range(self.buffer_size)):
            if step == self.buffer_size - 1:
                next_non_terminal, next_values = 1.0 - self.last_dones.astype(np.float64), last_values
            else:
                next_non_terminal, next_values = 1.0 - self.episode_starts[step + 1], values[step + 1]
            delta = rewards[step] + self.gamma * next_values * next_non_terminal - values[step]
            carry = delta + self.gamma * self.gae_lambda * next_non_terminal * carry
            marginal[step] = carry
        return marginal.astype(np.float32)

    @property
    def tracked_tensor(self) -> th.Tensor:
        """:attr:`tracked` as one long tensor for the rollout (the same object for every minibatch of its
        update, so that the policy recognizes its pinned critic rows)."""
        if self._tracked_tensor is None:
            self._tracked_tensor = th.as_tensor(self.tracked, device=self.device)
        return self._tracked_tensor

    def _tracked_tensor_of(self, j: int) -> th.Tensor:
        tracked = self.tracked_tensor
        return tracked if tracked.dim() == 1 else tracked[j]

    def update_agents(self) -> th.Tensor | None:
        if self.critic_agents is not None or self.n_agents == self.population:
            return None
        return self.tracked_tensor

    def _critic_columns(self) -> tuple[np.ndarray | None, np.ndarray | th.Tensor | None]:
        columns, _ = super()._critic_columns()
        if self.n_agents == self.population:
            return columns, columns
        if columns is None:  # every tracked agent: all the columns of the per-agent arrays
            return None, self.tracked_tensor
        return columns, self.tracked[..., columns]


def collect_aggregate_rollouts(
    model: Any, env: VecEnv, callback: BaseCallback, buffer: RMDPAggregateRolloutBuffer, n_rollout_steps: int
) -> bool:
    """``RMDPAlgorithm.collect_rollouts`` for :class:`RMDPAggregateRolloutBuffer`: SB3's loop, with each
    step's reward statistics and critic latents stored, the tracked agents' rewards and values, and the
    finished episodes' return vectors from their statistics."""
    assert model._last_obs is not None, "No previous observation was provided"
    policy: MultiRepresentativePolicy = model.policy
    policy.set_training_mode(False)
    n_steps = 0
    buffer.reset()
    buffer.draw_tracked(agent_generator(model), model.assigner.weights().detach().cpu().numpy())
    buffer.policy = policy
    if model.rotates_representatives:
        raise ValueError(
            "RMDPAggregateRolloutBuffer needs env slots that keep their representative: pass n_envs a "
            f"multiple of k (got n_envs={model.n_envs}, k={model.k})."
        )
    rewards_of = env.get_attr("rewards_from_statistics", indices=[0])[0]
    buffer.weighted_rewards = env.get_attr("weighted_rewards_from_statistics", indices=[0])[0]
    episode_returns_of = env.get_attr("episode_returns_from_statistics", indices=[0])[0]
    history = getattr(model, "_episode_statistics", None)
    if history is None or len(history) != model.n_envs:
        history = model._episode_statistics = [[] for _ in range(model.n_envs)]
    callback.on_rollout_start()
    finished: list[list[np.ndarray]] = [[] for _ in range(model.k)]
    # the slots keep their representatives and the parameters do not change during the rollout: the rows
    # of the action heads the slots read are gathered once, at the first step
    gathered: dict[str, th.Tensor] = {}
    steps_per_representative = np.bincount(model._slot_index, minlength=model.k)

    while n_steps < n_rollout_steps:
        with th.no_grad():
            obs_tensor = obs_as_tensor(model._last_obs, model.device)
            latent_pi, latent_vf, groups = policy._latents(obs_tensor, model._slot_representatives, gathered)
            distribution = policy._get_action_dist_from_latent(latent_pi, groups, gathered)
            action_tensor = distribution.get_actions()
            log_probs = distribution.log_prob(action_tensor)
            action_tensor = action_tensor.reshape((-1, *model.action_space.shape))
        actions = action_tensor.cpu().numpy()
        clipped_actions = actions
        if isinstance(model.action_space, spaces.Box):
            clipped_actions = np.clip(actions, model.action_space.low, model.action_space.high)

        new_obs, rewards, dones, infos = env.step(clipped_actions)
        model.num_timesteps += env.num_envs
        slot_reps = model._slot_index
        model._representative_steps += steps_per_representative

        callback.update_locals(locals())
        if not callback.on_step():
            return False
        model._update_info_buffer(infos, dones)
        n_steps += 1
        if isinstance(model.action_space, spaces.Discrete):
            actions = actions.reshape(-1, 1)

        if AGENT_REWARD_STATISTIC_KEY not in infos[0]:
            raise ValueError(
                "RMDPAggregateRolloutBuffer needs an env with compact rewards "
                "(info['agent_reward_statistic']), e.g. sb3_rmdp/HalfCheetahVelocity-v0 with "
                "env_kwargs={'compact_rewards': True}."
            )
        statistics = np.array([info[AGENT_REWARD_STATISTIC_KEY] for info in infos], dtype=np.float64)
        for slot, statistic in enumerate(statistics.tolist()):
            history[slot].append(statistic)
        for idx in np.flatnonzero(dones):
            finished[slot_reps[idx]].append(episode_returns_of(np.array(history[idx])))
            history[idx] = []
            if infos[idx].get("terminal_observation") is not None and infos[idx].get(
                "TimeLimit.truncated", False
            ):
                terminal_obs = policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                with th.no_grad():
                    _, terminal_latent, _ = policy._latents(terminal_obs, int(slot_reps[idx]))
                buffer.bootstraps.append(
                    (buffer.pos, int(idx), terminal_latent[0].cpu().numpy().astype(np.float64))
                )

        buffer.add_step(
            model._last_obs, actions, model._last_episode_starts, log_probs, slot_reps, statistics, latent_vf
        )
        model._last_obs = new_obs
        model._last_episode_starts = dones

    with th.no_grad():
        obs_tensor = obs_as_tensor(new_obs, model.device)  # type: ignore[arg-type]
        _, latent_vf, _ = policy._latents(obs_tensor, model._slot_representatives)
    buffer.finish(rewards_of, latent_vf, dones)
    if not model._warned_return_scale:
        model._warn_on_return_scale(buffer.returns)

    model.rollout_episode_returns = [
        np.asarray(f, dtype=np.float64).reshape(-1, model.n_agents) for f in finished
    ]
    for j, returns in enumerate(model.rollout_episode_returns):
        if len(returns) > 0:
            model.training_returns[:, j] = returns.mean(axis=0)
    callback.update_locals(locals())
    callback.on_rollout_end()
    return True
