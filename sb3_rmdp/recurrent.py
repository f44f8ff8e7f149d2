"""LSTM policies for k representatives, and the per-agent buffer of their sequences (sb3-contrib's).

:class:`RecurrentMultiRepresentativePolicy` is sb3-contrib's ``RecurrentActorCriticPolicy`` (the actor
and critic LSTMs, their states per env slot) with the r-MDP heads of
:class:`~sb3_rmdp.policies.MultiRepresentativePolicy`: the LSTMs and MLP trunk are shared, each
representative has its action head, and the critic outputs ``V^{ij}`` for every agent. With ``k =
n_agents = 1`` it is created and evaluated exactly as sb3-contrib's policy. A slot keeps its
representative for a whole episode, and its LSTM states are reset when an episode starts, so a
representative never continues another's memory.

:class:`RMDPRecurrentRolloutBuffer` is sb3-contrib's ``RecurrentRolloutBuffer`` (the minibatches are
padded sequences of consecutive steps of one slot, cut at episode starts) with per-agent rewards,
values, returns and advantages (a trailing ``n_agents`` axis) and each sample's representative.
Needs sb3-contrib (the ``contrib`` extra).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.buffers import create_sequencers
from sb3_contrib.common.recurrent.policies import (
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
    RecurrentMultiInputActorCriticPolicy,
)
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from sb3_rmdp.buffers import RMDPDictRolloutBuffer, RMDPRolloutBuffer
from sb3_rmdp.policies import MultiRepresentativePolicy, RepresentativeGroups, RepresentativesLike


class RecurrentMultiRepresentativePolicy(MultiRepresentativePolicy, RecurrentActorCriticPolicy):
    """sb3-contrib's ``RecurrentActorCriticPolicy`` with k action heads and a per-agent critic.

    Accepts every argument of both parents (``lstm_hidden_size``, ``n_lstm_layers``, ``shared_lstm``,
    ``enable_critic_lstm``, ``lstm_kwargs``; ``k``, ``n_agents``, ``critic``); every method takes the
    ``representatives`` index tensor ``(batch,)`` besides the LSTM states and episode starts.
    """

    stock_policy: ClassVar[type[BasePolicy]] = RecurrentActorCriticPolicy

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        **kwargs: Any,
    ):
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)
        if self._optimizer_kwargs() != self.optimizer_kwargs:
            # sb3-contrib builds the optimizer again once the LSTMs exist: with the r-MDP heads' options
            self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
                self.parameters(), lr=lr_schedule(1), **self._optimizer_kwargs()
            )

    # sb3-contrib's feed-forward critic layer (`enable_critic_lstm=False`) is called `critic`, which
    # MultiRepresentativePolicy uses for its layout: here `critic` is the layer (or None) again.
    @property  # type: ignore[override]
    def critic(self) -> nn.Module | None:
        return self._modules.get("critic")

    @critic.setter
    def critic(self, value: nn.Module | None) -> None:
        # nn.Module registers a module itself; only None reaches this setter
        self._modules.pop("critic", None)

    def _lstm_latents(
        self, features: Any, lstm_states: Any, episode_starts: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, RNNStates]:
        """sb3-contrib's LSTM pass: the actor's and the critic's LSTM outputs and their new states."""
        if self.share_features_extractor:
            pi_features = vf_features = features
        else:
            pi_features, vf_features = features
        lstm_states_vf: Any
        latent_pi, lstm_states_pi = self._process_sequence(
            pi_features, lstm_states.pi, episode_starts, self.lstm_actor
        )
        if self.lstm_critic is not None:
            latent_vf, lstm_states_vf = self._process_sequence(
                vf_features, lstm_states.vf, episode_starts, self.lstm_critic
            )
        elif self.shared_lstm:
            latent_vf = latent_pi.detach()
            lstm_states_vf = (lstm_states_pi[0].detach(), lstm_states_pi[1].detach())
        else:
            latent_vf = self.critic(vf_features)  # type: ignore[misc]
            lstm_states_vf = lstm_states_pi
        return latent_pi, latent_vf, RNNStates(tuple(lstm_states_pi), tuple(lstm_states_vf))

    def _critic_values(self, latent_vf: th.Tensor, groups: int | RepresentativeGroups) -> th.Tensor:
        if self.critic_layout == "conditioned":
            latent_vf = self._conditioned_latent_vf(latent_vf, groups)
        else:
            latent_vf = self.mlp_extractor.forward_critic(latent_vf)
        return self._values_from_latent(latent_vf, groups)

    def forward(  # type: ignore[override]
        self,
        obs: th.Tensor,
        lstm_states: Any,
        episode_starts: th.Tensor,
        deterministic: bool = False,
        representatives: RepresentativesLike = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, RNNStates]:
        """Act, evaluate and score one step of every slot.

        :param obs: ``(n_envs, *obs_shape)``.
        :param lstm_states: the states of the actor's and critic's LSTMs, ``(n_layers, n_envs, hidden)`` each.
        :param episode_starts: ``(n_envs,)``; the states of a slot whose episode starts are reset.
        :param representatives: ``(n_envs,)`` the representative acting in each slot.
        :return: actions, values ``(n_envs, n_agents)``, log-probabilities ``(n_envs,)``, the new states.
        """
        latent_pi, latent_vf, states = self._lstm_latents(
            self.extract_features(obs), lstm_states, episode_starts
        )
        latent_pi = self.mlp_extractor.forward_actor(latent_pi)
        groups = self.as_representatives(representatives, latent_pi.shape[0])
        values = self._critic_values(latent_vf, groups)
        distribution = self._get_action_dist_from_latent(latent_pi, groups)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, values, log_prob, states

    def get_distribution(  # type: ignore[override]
        self,
        obs: th.Tensor,
        lstm_states: Any,
        episode_starts: th.Tensor,
        representatives: RepresentativesLike = None,
    ) -> tuple[Distribution, Any]:
        features = super(ActorCriticPolicy, self).extract_features(obs, self.pi_features_extractor)
        latent_pi, lstm_states = self._process_sequence(
            features, lstm_states, episode_starts, self.lstm_actor
        )
        latent_pi = self.mlp_extractor.forward_actor(latent_pi)
        return self._get_action_dist_from_latent(latent_pi, representatives), lstm_states

    def predict_values(  # type: ignore[override]
        self,
        obs: th.Tensor,
        lstm_states: Any,
        episode_starts: th.Tensor,
        representatives: RepresentativesLike = None,
    ) -> th.Tensor:
        """Per-agent values ``(batch, n_agents)`` under each sample's representative."""
        features = super(ActorCriticPolicy, self).extract_features(obs, self.vf_features_extractor)
        if self.lstm_critic is not None:
            latent_vf, _ = self._process_sequence(features, lstm_states, episode_starts, self.lstm_critic)
        elif self.shared_lstm:
            latent_pi, _ = self._process_sequence(features, lstm_states, episode_starts, self.lstm_actor)
            latent_vf = latent_pi.detach()
        else:
            latent_vf = self.critic(features)  # type: ignore[misc]
        return self._critic_values(latent_vf, self.as_representatives(representatives, latent_vf.shape[0]))

    def evaluate_actions(  # type: ignore[override]
        self,
        obs: th.Tensor,
        actions: th.Tensor,
        lstm_states: Any,
        episode_starts: th.Tensor,
        representatives: RepresentativesLike = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """Values ``(batch, n_agents)``, log-likelihood and entropy ``(batch,)`` of padded sequences."""
        latent_pi, latent_vf, _ = self._lstm_latents(self.extract_features(obs), lstm_states, episode_starts)
        latent_pi = self.mlp_extractor.forward_actor(latent_pi)
        groups = self.as_representatives(representatives, latent_pi.shape[0])
        distribution = self._get_action_dist_from_latent(latent_pi, groups)
        log_prob = distribution.log_prob(actions)
        values = self._critic_values(latent_vf, groups)
        return values, log_prob, distribution.entropy()

    def _predict(  # type: ignore[override]
        self,
        observation: Any,
        lstm_states: Any,
        episode_starts: th.Tensor,
        deterministic: bool = False,
        representatives: RepresentativesLike = None,
    ) -> tuple[th.Tensor, Any]:
        distribution, lstm_states = self.get_distribution(
            observation, lstm_states, episode_starts, representatives
        )
        return distribution.get_actions(deterministic=deterministic), lstm_states

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        representative: RepresentativesLike = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """sb3-contrib's ``predict`` (the actor LSTM's state in and out) for one representative (an int)
        or one per observation."""
        self.set_training_mode(False)
        obs_tensor, vectorized_env = self.obs_to_tensor(observation)
        n_envs = (
            next(iter(obs_tensor.values())).shape[0] if isinstance(obs_tensor, dict) else obs_tensor.shape[0]
        )
        index = self.as_representatives(representative, n_envs)
        if state is None:
            zeros = np.concatenate([np.zeros(self.lstm_hidden_state_shape) for _ in range(n_envs)], axis=1)
            state = (zeros, zeros)
        if episode_start is None:
            episode_start = np.zeros(n_envs, dtype=bool)
        with th.no_grad():
            states = (
                th.tensor(state[0], dtype=th.float32, device=self.device),
                th.tensor(state[1], dtype=th.float32, device=self.device),
            )
            episode_starts = th.tensor(episode_start, dtype=th.float32, device=self.device)
            actions, new_states = self._predict(obs_tensor, states, episode_starts, deterministic, index)
            state = (new_states[0].cpu().numpy(), new_states[1].cpu().numpy())
        action_array = actions.cpu().numpy().reshape((-1, *(self.action_space.shape or ())))
        if isinstance(self.action_space, spaces.Box):
            action_array = np.clip(action_array, self.action_space.low, self.action_space.high)
        if not vectorized_env:
            action_array = action_array.squeeze(axis=0)
        return action_array, state


class RecurrentMultiRepresentativeCnnPolicy(RecurrentMultiRepresentativePolicy):
    """:class:`RecurrentMultiRepresentativePolicy` on images (``NatureCNN``; ``"CnnLstmPolicy"``)."""

    default_features_extractor = NatureCNN
    stock_policy = RecurrentActorCriticCnnPolicy


class RecurrentMultiRepresentativeMultiInputPolicy(RecurrentMultiRepresentativePolicy):
    """:class:`RecurrentMultiRepresentativePolicy` on ``Dict`` observations (``CombinedExtractor``;
    ``"MultiInputLstmPolicy"``)."""

    default_features_extractor = CombinedExtractor
    stock_policy = RecurrentMultiInputActorCriticPolicy


class RMDPRecurrentRolloutBufferSamples(NamedTuple):
    """A minibatch of padded sequences, ``P = n_seq * max_length`` rows. Shapes: observations
    ``(P, *obs_shape)`` (or a dict of them), actions ``(P, action_dim)``, old_values and returns ``(P,
    n_agents)``, old_log_prob ``(P,)``, advantages per agent ``(P, n_agents)`` or marginal ``(P,)``
    (a fixed assignment), representatives ``(P,)`` (padding: representative 0), lstm_states ``(n_layers,
    n_seq, hidden)`` at each sequence's start, episode_starts and mask ``(P,)`` (mask 0 on padding)."""

    observations: th.Tensor | dict[str, th.Tensor]
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    representatives: RepresentativeGroups
    lstm_states: RNNStates
    episode_starts: th.Tensor
    mask: th.Tensor


class RMDPRecurrentRolloutBuffer(RMDPRolloutBuffer):
    """:class:`~sb3_rmdp.buffers.RMDPRolloutBuffer` that also stores the LSTM states and samples
    sb3-contrib's padded sequences (the same split point from NumPy's global stream, the same
    sequences), for ``Box``, ``Discrete`` or ``Dict`` observations.

    Rollouts, GAE and the per-agent arrays are the parent's (time-major, reused); :meth:`get` reads an
    env-major copy of them, as sb3-contrib flattens its arrays. A fixed assignment's marginal
    advantages are formed once per update (never normalized here: the update normalizes them over the
    valid, unpadded samples).

    :param hidden_state_shape: ``(n_steps, n_layers, n_envs, hidden)`` of the stored LSTM states.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        hidden_state_shape: tuple[int, int, int, int],
        device: th.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        n_agents: int = 1,
        k: int = 1,
    ):
        self.hidden_state_shape = hidden_state_shape
        super().__init__(
            buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs, n_agents, k
        )

    def _reset_sb3_arrays(self) -> None:
        if isinstance(self.observation_space, spaces.Dict):
            DictRolloutBuffer.reset(self)  # type: ignore[arg-type]
        else:
            RolloutBuffer.reset(self)
        self.states = tuple(np.zeros(self.hidden_state_shape, dtype=np.float32) for _ in range(4))

    def _store_observations(self, obs: Any) -> None:
        if isinstance(self.observation_space, spaces.Dict):
            RMDPDictRolloutBuffer._store_observations(self, obs)  # type: ignore[arg-type]
        else:
            super()._store_observations(obs)

    def fix_assignment(self, alpha: np.ndarray | None, normalize: bool = False) -> None:
        super().fix_assignment(alpha, normalize=False)

    def add(self, *args: Any, lstm_states: RNNStates, **kwargs: Any) -> None:  # type: ignore[override]
        """Store one step with the LSTM states the slots acted from (``(n_layers, n_envs, hidden)`` each)."""
        for array, tensor in zip(self.states, (*lstm_states.pi, *lstm_states.vf), strict=True):
            array[self.pos] = tensor.cpu().numpy()
        super().add(*args, **kwargs)

    def get(self, batch_size: int | None = None) -> Generator[RMDPRecurrentRolloutBufferSamples, None, None]:  # type: ignore[override]
        """sb3-contrib's minibatches: the env-major samples split at one random point (NumPy's global
        stream, as sb3-contrib draws it) and cut into consecutive batches of padded sequences."""
        assert self.full, "Rollout buffer must be full before sampling from it"
        flat = RolloutBuffer.swap_and_flatten
        if isinstance(self.observations, dict):
            observations: Any = {key: flat(array) for key, array in self.observations.items()}
        else:
            observations = flat(self.observations)
        if self._alpha is not None:
            marginal = self._compute_marginal_advantages(self._alpha)
            advantages = flat(marginal).reshape(-1)  # (n_envs * n_steps,)
        else:
            advantages = flat(self.advantages)
        # (n_steps, n_layers, n_envs, hidden) -> (n_steps, n_envs, n_layers, hidden) -> env-major rows
        states = [flat(array.swapaxes(1, 2)) for array in self.states]
        self._flat = {
            "observations": observations,
            "actions": flat(self.actions),
            "values": flat(self.values),
            "log_probs": flat(self.log_probs),
            "advantages": advantages,
            "returns": flat(self.returns),
            "episode_starts": flat(self.episode_starts),
            "representatives": self.sample_representatives,
            "states": states,
        }
        n_samples = self.buffer_size * self.n_envs
        if batch_size is None:
            batch_size = n_samples
        split_index = np.random.randint(n_samples)  # noqa: NPY002
        indices = np.arange(n_samples)
        indices = np.concatenate((indices[split_index:], indices[:split_index]))
        env_change = np.zeros((self.buffer_size, self.n_envs))
        env_change[0, :] = 1.0
        env_change = flat(env_change)
        start_idx = 0
        while start_idx < n_samples:
            yield self._sequence_samples(indices[start_idx : start_idx + batch_size], env_change)
            start_idx += batch_size

    def _sequence_samples(
        self, batch_inds: np.ndarray, env_change: np.ndarray
    ) -> RMDPRecurrentRolloutBufferSamples:
        data = self._flat
        seq_start_indices, pad, pad_and_flatten = create_sequencers(
            data["episode_starts"][batch_inds], env_change[batch_inds], self.device
        )
        n_seq = len(seq_start_indices)
        max_length = pad(data["actions"][batch_inds]).shape[1]
        padded = n_seq * max_length
        starts = [
            self.to_torch(array[batch_inds][seq_start_indices].swapaxes(0, 1)).contiguous()
            for array in data["states"]
        ]
        if isinstance(data["observations"], dict):
            observations: Any = {
                key: pad(array[batch_inds]).reshape((padded, *array.shape[1:]))
                for key, array in data["observations"].items()
            }
        else:
            shape = data["observations"].shape[1:]
            observations = pad(data["observations"][batch_inds]).reshape((padded, *shape))

        def per_agent(array: np.ndarray) -> th.Tensor:
            return pad(array[batch_inds]).reshape((padded, self.n_agents))

        advantages = data["advantages"][batch_inds]
        index = pad(data["representatives"][batch_inds]).reshape(padded)
        return RMDPRecurrentRolloutBufferSamples(
            observations=observations,
            actions=pad(data["actions"][batch_inds]).reshape((padded, *data["actions"].shape[1:])),
            old_values=per_agent(data["values"]),
            old_log_prob=pad_and_flatten(data["log_probs"][batch_inds]),
            advantages=pad_and_flatten(advantages) if advantages.ndim == 1 else per_agent(data["advantages"]),
            returns=per_agent(data["returns"]),
            representatives=RepresentativeGroups.of(index, self.k),
            lstm_states=RNNStates((starts[0], starts[1]), (starts[2], starts[3])),
            episode_starts=pad_and_flatten(data["episode_starts"][batch_inds]),
            mask=pad_and_flatten(np.ones(len(batch_inds), dtype=np.float32)),
        )
