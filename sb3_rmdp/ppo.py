"""``RMDPPPO``: SB3's PPO for represented MDPs (k representatives serving n agents)."""

from __future__ import annotations

import io
import math
import numbers
import os
import pathlib
import random
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import is_json_serializable, recursive_getattr, save_to_zip_file
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize
from torch.nn import functional as F

from sb3_rmdp.assigners import Assigner, make_assigner
from sb3_rmdp.assigners.end_to_end import GRADIENT_STATISTICS
from sb3_rmdp.buffers import RMDPRolloutBuffer
from sb3_rmdp.envs.contract import AGENT_REWARDS_KEY
from sb3_rmdp.envs.vec_env import as_rmdp_vec_env, vec_env_agent_params, vec_env_n_agents
from sb3_rmdp.files import atomic_write, with_zip_suffix
from sb3_rmdp.policies import MultiRepresentativePolicy, RepresentativeGroups
from sb3_rmdp.serialization import (
    Unencodable,
    check_rmdp_data,
    decode_model_data,
    encode_field,
    read_model_bytes,
    read_model_data,
)

SelfRMDPPPO = TypeVar("SelfRMDPPPO", bound="RMDPPPO")
#: per-agent (discounted) returns beyond which the critic is known to fail: reward scales of 1e3-1e6 took
#: the explained variance from 0.82 to 1e-6; RMDPPPO warns once when a rollout's returns exceed it
RETURN_SCALE_LIMIT = 1e3


def normalize_per_representative(
    advantages: th.Tensor, representatives: th.Tensor, k: int, differentiate: str = "mean"
) -> th.Tensor:
    """Normalize advantages to zero mean and unit std within each representative's samples.

    Each representative then contributes equally to the shared trunk, whatever its agents' reward
    scale. A representative with a single sample in the minibatch gets advantage 0 (nothing to
    normalize against).

    The values are SB3's normalization, per representative, whatever ``differentiate``; it only
    decides which statistics a learned assignment's gradient (eq. 12) flows through.

    * ``"mean"`` (the default): the mean is part of the graph and the std is a constant.
      ``d loss / d alpha[i, j]`` is then ``-sum_{t in j} (c_t - mean_j(c)) A^{ij}_t / std_j``, with
      ``c_t`` the clipped-surrogate factor (the ratio where unclipped). That is, an agent's weight on j
      grows when j's policy update favours the actions that are good *for that agent*.
    * ``"none"``: both are constants. The gradient is then ``-sum_{t in j} c_t A^{ij}_t / std_j``, so it
      keeps the per-agent sum of advantages: positive where j earns agent i more than the critic
      expects (a representative getting better for that agent), otherwise noise.
    * ``"both"``: the std is differentiated too, as in the paper's reference code; the surrogate's own
      size then pushes back.

    Measured (end-to-end, deployed welfare on evaluation episodes): on Resource Gathering (50k steps
    per representative, seeds 0-2, logits lr 2e-3) k=3 86.08/87.60/81.36 with ``"mean"`` against
    82.56/84.64/79.84 with ``"none"``, k=10 89.04/89.84/89.60 against 89.76/86.64/86.32; on
    HalfCheetah velocity (k=5, 300k steps per representative, 10 seeds), where an agent earns nothing
    far from its target, ``"none"`` wins: 18.95 +- 1.40 against 15.65 +- 0.72 (docs/benchmarks.md).

    :param advantages: ``(batch,)`` marginal advantages.
    :param representatives: ``(batch,)`` long.
    :param differentiate: one of :data:`sb3_rmdp.assigners.end_to_end.GRADIENT_STATISTICS`.
    :return: ``(batch,)``.
    """
    if differentiate not in GRADIENT_STATISTICS:
        raise ValueError(
            f"differentiate={differentiate!r}: choose one of {GRADIENT_STATISTICS} (the statistics the "
            "assignment's gradient flows through)."
        )
    with th.no_grad():
        counts = th.bincount(representatives, minlength=k).to(advantages.dtype)
    sums = th.zeros(k, dtype=advantages.dtype, device=advantages.device)
    source = advantages.detach() if differentiate == "none" else advantages
    mean = sums.index_add(0, representatives, source) / counts.clamp(min=1)
    if differentiate == "both":
        deviation = advantages - mean[representatives]
        squares = th.zeros_like(sums).index_add(0, representatives, deviation * deviation)
        # clamped: a group of equal advantages (sparse rewards) must not give sqrt'(0) = inf
        std = (squares / (counts - 1).clamp(min=1)).clamp(min=1e-20).sqrt()
    else:
        with th.no_grad():
            deviation = advantages.detach() - mean.detach()[representatives]
            squares = th.zeros_like(sums).index_add(0, representatives, deviation * deviation)
            std = (squares / (counts - 1).clamp(min=1)).sqrt()  # unbiased, like th.std
    normalized = (advantages - mean[representatives]) / (std[representatives] + 1e-8)
    return th.where(counts[representatives] > 1, normalized, th.zeros_like(normalized))


class RMDPPPO(PPO):
    """PPO with k representative policies serving n agents, each with its own reward (an r-MDP).

    Every PPO argument keeps its meaning; ``n_steps`` is per env slot. Env slot ``e`` is driven by
    representative ``e % k`` for the whole run, so every representative collects the same number of
    transitions. Each transition yields all n agent rewards; a per-agent critic learns ``V^{ij}`` and
    per-agent GAE gives ``A^{ij}``; the policy loss of a sample collected by j uses the marginal
    advantage ``sum_i alpha[i, j] A^{ij}`` with the assigner's current ``alpha`` (paper eq. 9),
    normalized per representative within the minibatch; the value loss is the MSE over all agents.

    :param policy: ``"MlpPolicy"`` or a subclass of :class:`~sb3_rmdp.policies.MultiRepresentativePolicy`.
    :param env: an r-MDP env id, gymnasium env, env factory, or a VecEnv from
        :func:`~sb3_rmdp.envs.make_rmdp_vec_env`.
    :param k: the policy budget (number of representatives), ``1 <= k <= n_agents``.
    :param assigner: an :class:`~sb3_rmdp.assigners.Assigner` (default ``EMAssigner()``) or a name.
    :param n_envs: env slots to create when ``env`` is not a VecEnv (default ``k``); a multiple of k.
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

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": MultiRepresentativePolicy}
    # set once the return-scale warning was given (a class default: files saved before it lack it)
    _warned_return_scale: bool = False
    policy: MultiRepresentativePolicy
    rollout_buffer: RMDPRolloutBuffer

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
        _init_setup_model: bool = True,
    ):
        self.k = _check_count(k, "k", "the policy budget must be a whole number of representatives, k >= 1")
        if n_envs is not None:
            n_envs = _check_count(n_envs, "n_envs", "pass a number of env slots >= 1, a multiple of k")
        if use_sde:
            raise ValueError("use_sde=True is not supported by RMDPPPO: pass use_sde=False.")
        if normalize_advantage and isinstance(batch_size, int) and batch_size < 2:
            raise ValueError(
                f"batch_size={batch_size}: advantages are normalized within each minibatch, which needs at "
                "least 2 samples; pass batch_size >= 2 (or normalize_advantage=False)."
            )
        _check_device(device)
        self.assigner = make_assigner(assigner)
        self.n_agents = 0
        self.agent_params: np.ndarray | None = None
        if env is not None:
            if n_envs is not None and n_envs % self.k != 0:
                raise ValueError(_slots_error(n_envs, self.k))
            env = as_rmdp_vec_env(env, n_envs=n_envs or self.k, env_kwargs=env_kwargs)
            if env.num_envs % self.k != 0:
                raise ValueError(_slots_error(env.num_envs, self.k))
            self.n_agents = vec_env_n_agents(env)
            if self.k > self.n_agents:
                raise ValueError(
                    f"k={self.k} representatives for {self.n_agents} agents: the policy budget must satisfy "
                    f"1 <= k <= n_agents; lower k to at most {self.n_agents}."
                )
            self.agent_params = vec_env_agent_params(env)
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
            # "auto" written out, so that a file without the key is known to predate it (see _setup_model)
            policy_kwargs={"critic": "auto", **(policy_kwargs or {})},
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ set-up
    def _setup_model(self) -> None:
        if self.env is not None:
            # After `load(path, env)`, `k` and `n_agents` are the file's and `env` is the new one.
            _check_env_fits(self.env, self.k, self.n_agents)
        if not issubclass(self.policy_class, MultiRepresentativePolicy):
            raise ValueError(
                f"RMDPPPO needs a MultiRepresentativePolicy (k action heads, per-agent critic), got "
                f"{self.policy_class.__name__}: pass 'MlpPolicy' or a subclass of MultiRepresentativePolicy."
            )
        # A file saved before critic="auto" existed has no "critic": its critic was per representative.
        self.policy_kwargs = {"critic": "per_representative", **self.policy_kwargs}
        self.policy_kwargs.update(k=self.k, n_agents=self.n_agents)
        if self.rollout_buffer_class is None:
            self.rollout_buffer_class = RMDPRolloutBuffer
        self.rollout_buffer_kwargs = {**self.rollout_buffer_kwargs, "n_agents": self.n_agents, "k": self.k}
        super()._setup_model()
        # Saved with the model: a load rebuilds this layout whatever "auto" resolves to by then.
        self.policy_kwargs["critic"] = self.policy.critic
        self.assigner.bind(self.n_agents, self.k, self.agent_params, seed=self.seed, device=self.device)
        slots = th.as_tensor(self.rollout_buffer.slot_representatives, device=self.device)
        self._slot_representatives = RepresentativeGroups.of(slots, self.k)
        if getattr(self, "_episode_agent_returns", None) is None or self._episode_agent_returns.shape != (
            self.n_envs,
            self.n_agents,
        ):
            self._reset_episode_tracking()

    def _excluded_save_params(self) -> list[str]:
        # Rebuilt by `_setup_model`; it holds a tensor on the model's device.
        return [*super()._excluded_save_params(), "_slot_representatives"]

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """SB3's zip, with the package's own state written as data and the global random states added.

        The attributes JSON cannot hold (the assigner and its state, arrays, spaces, schedules, random
        states...) are written as data (:mod:`sb3_rmdp.serialization`), not pickled, so that :meth:`load`
        runs no code from the file; only what is not data (e.g. a learning rate that is a function of
        the user's) is left to SB3's pickling. The file is written to a temporary file in the same
        folder and renamed into place: a save that fails leaves the previous file intact. A path without
        a suffix gets ``.zip``, as with SB3.
        """
        self._random_state = _global_random_state()
        try:
            data = self.__dict__.copy()
        finally:
            del self._random_state
        # SB3's `save`, with the data encoding in between (SB3 offers no hook for it).
        excluded = set(exclude or []).union(self._excluded_save_params())
        if include is not None:
            excluded = excluded.difference(include)
        state_dicts_names, torch_variable_names = self._get_torch_save_params()
        excluded.update(name.split(".")[0] for name in state_dicts_names + torch_variable_names)
        for name in excluded:
            data.pop(name, None)
        for key, value in data.items():
            if not is_json_serializable(value):
                try:
                    data[key] = encode_field(value)
                except Unencodable:
                    pass  # SB3 pickles it; a default load then asks for trusted=True
        pytorch_variables = {name: recursive_getattr(self, name) for name in torch_variable_names}
        params = self.get_parameters()
        if isinstance(path, (str, os.PathLike)):
            with atomic_write(with_zip_suffix(path)) as file:
                save_to_zip_file(file, data=data, params=params, pytorch_variables=pytorch_variables)
        else:
            save_to_zip_file(path, data=data, params=params, pytorch_variables=pytorch_variables)

    @classmethod
    def load(
        cls: type[SelfRMDPPPO],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        trusted: bool = False,
        **kwargs: Any,
    ) -> SelfRMDPPPO:
        """SB3's ``load``, running no code from the file unless ``trusted``; then the saved random states.

        The file is read once and checked first: a damaged zip (truncated, a bad CRC), a plain SB3 model
        and a file with pickled entries each get an error that says so. The package's state is read back
        from data; SB3's pickled (``:serialized:``) entries, which unpickling would run, are refused
        unless ``trusted=True`` or ``custom_objects`` gives their objects. Files saved before the data
        format (sb3-rmdp 0.x) hold pickles only: load them with ``trusted=True`` if you trust them, and
        save them again. See the Security page of the docs.

        Then the global Python, NumPy and torch random states are set to the saved ones (SB3's own
        ``load`` re-seeds them with the model's seed; restoring the saved states instead is what lets
        ``learn(..., reset_num_timesteps=False)`` continue bit for bit). For an exact resume, pass ``env``
        in its state at save time and ``force_reset=False`` (see the class notes).

        :param trusted: the file comes from someone you trust: unpickle its pickled entries and import
            the classes it names from any module. Unpickling runs any code the file holds.
        :raises FileNotFoundError: if there is no file at ``path`` (nor ``path.zip``).
        :raises ValueError: (:class:`~sb3_rmdp.serialization.ModelFileError`) for a damaged file, a model
            of another algorithm, or (:class:`~sb3_rmdp.serialization.UntrustedFileError`) pickled entries
            without ``trusted``; if ``env`` has another number of agents than the file, or a number of env
            slots that is not a multiple of its k, or if ``k`` or ``n_agents`` are passed (they are fixed
            by the saved networks).
        """
        for name in ("k", "n_agents"):
            if name in kwargs:
                raise ValueError(
                    f"load(..., {name}={kwargs[name]}): {name} is fixed by the saved networks and cannot "
                    f"change on load; train a new RMDPPPO for another {name}."
                )
        raw, name = read_model_bytes(path)
        data = read_model_data(raw, name)
        check_rmdp_data(data, name)
        objects = decode_model_data(data, name, trusted, custom_objects)
        model = super().load(
            io.BytesIO(raw),
            env=env,
            device=device,
            custom_objects=objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )
        random_state = model.__dict__.pop("_random_state", None)
        if random_state is not None:
            _set_global_random_state(random_state)
        return model

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """SB3's ``set_env``, checking first that ``env`` has this model's agents and fits its k.

        :raises ValueError: on another number of agents, or env slots that are not a multiple of k.
        """
        vec_env = env if isinstance(env, VecEnv) else self._wrap_env(env, self.verbose)
        _check_env_fits(vec_env, self.k, self.n_agents)
        super().set_env(vec_env, force_reset=force_reset)

    def _reset_episode_tracking(self) -> None:
        #: running undiscounted return of the episode in progress in each slot, ``(n_envs, n_agents)``
        self._episode_agent_returns = np.zeros((self.n_envs, self.n_agents))
        #: per representative, the returns ``(m_j, n_agents)`` of the episodes it finished in the last rollout
        self.rollout_episode_returns: list[np.ndarray] = [np.zeros((0, self.n_agents)) for _ in range(self.k)]
        #: ``(n_agents, k)`` mean training-episode return of each agent under each representative, from
        #: the latest rollout in which the representative finished an episode (NaN before any)
        self.training_returns = np.full((self.n_agents, self.k), np.nan)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        if reset_num_timesteps or self._last_obs is None:
            # SB3 resets the env: no episode is in progress any more.
            self._episode_agent_returns = np.zeros((self.n_envs, self.n_agents))
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        """Run the assigner first, then the user's callbacks (SB3 calls them in list order)."""
        if callback is None:
            user_callbacks: list[BaseCallback] = []
        elif isinstance(callback, list):
            user_callbacks = list(callback)
        elif isinstance(callback, BaseCallback):
            user_callbacks = [callback]
        else:
            user_callbacks = [ConvertCallback(callback)]
        return super()._init_callback(CallbackList([self.assigner, *user_callbacks]), progress_bar)

    # ------------------------------------------------------------------ the assignment, for users
    def assignment(self) -> np.ndarray:
        """The deployed hard assignment ``(n_agents,)``: each agent's representative."""
        return self.assigner.assignment()

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        representative: int | np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict`` served by representative ``representative`` (an int, or one per observation)."""
        return self.policy.predict(
            observation, state, episode_start, deterministic, representative=representative
        )

    # ------------------------------------------------------------------ rollouts
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """SB3's rollout loop, with each slot's representative acting and the agents' reward vectors stored.

        Time-limit truncations are bootstrapped per agent with the collecting representative's critic,
        and every finished episode's return vector is kept for the assigner (``rollout_episode_returns``).
        """
        assert self._last_obs is not None, "No previous observation was provided"
        assert isinstance(rollout_buffer, RMDPRolloutBuffer)
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        representatives = self._slot_representatives
        slot_reps = representatives.index.cpu().numpy()
        finished: list[list[np.ndarray]] = [[] for _ in range(self.k)]

        while n_steps < n_rollout_steps:
            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                actions, values, log_probs = self.policy(obs_tensor, representatives=representatives)
            actions = actions.cpu().numpy()
            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

            new_obs, _, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs

            callback.update_locals(locals())
            if not callback.on_step():
                return False

            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)

            agent_rewards = _agent_rewards(infos, self.n_agents)
            self._episode_agent_returns += agent_rewards
            for idx in np.flatnonzero(dones):
                finished[slot_reps[idx]].append(self._episode_agent_returns[idx].copy())
                self._episode_agent_returns[idx] = 0.0
                if infos[idx].get("terminal_observation") is not None and infos[idx].get(
                    "TimeLimit.truncated", False
                ):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.no_grad():
                        terminal_values = self.policy.predict_values(
                            terminal_obs, representatives=int(slot_reps[idx])
                        )[0]
                    agent_rewards[idx] += self.gamma * terminal_values.cpu().numpy()

            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                agent_rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

        with th.no_grad():
            values = self.policy.predict_values(
                obs_as_tensor(new_obs, self.device),  # type: ignore[arg-type]
                representatives=representatives,
            )
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        if not self._warned_return_scale:
            self._warn_on_return_scale(rollout_buffer.returns)

        self.rollout_episode_returns = [
            np.asarray(f, dtype=np.float64).reshape(-1, self.n_agents) for f in finished
        ]
        for j, returns in enumerate(self.rollout_episode_returns):
            if len(returns) > 0:
                self.training_returns[:, j] = returns.mean(axis=0)

        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _warn_on_return_scale(self, returns: np.ndarray) -> None:
        """Warn once when per-agent returns exceed what the critic can fit (:data:`RETURN_SCALE_LIMIT`)."""
        largest = float(np.abs(returns).max()) if returns.size else 0.0
        if largest > RETURN_SCALE_LIMIT:
            self._warned_return_scale = True
            warnings.warn(
                f"Per-agent returns reach {largest:.3g} (more than {RETURN_SCALE_LIMIT:g}): the critic, "
                "which starts near 0 and steps with clipped gradients, fits such returns poorly (explained "
                "variance near 0), and the advantages become noise. Scale the rewards down in the env (e.g. "
                "its reward_scale kwarg, or a reward wrapper before make_rmdp_vec_env); VecNormalize's "
                "reward normalization does not reach per-agent rewards.",
                UserWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ the update
    def marginal_advantages(self, advantages: th.Tensor, representatives: th.Tensor) -> th.Tensor:
        """``sum_i alpha[i, j_b] A^{i j_b}_b`` for each sample b, normalized per representative.

        :param advantages: ``(batch, n_agents)`` per-agent advantages, or ``(batch,)`` marginal advantages
            the buffer formed for a fixed assignment (then only normalized here).
        :param representatives: ``(batch,)`` long, each sample's representative ``j_b``.
        :return: ``(batch,)``; differentiable w.r.t. the assignment when the assigner learns it.
        """
        if advantages.ndim == 1:
            if self.rollout_buffer.normalizes_marginals:
                return advantages
            marginal = advantages
        else:
            alpha = self.assigner.weights()
            if not self._learns_assignment():
                alpha = alpha.detach()
            marginal = (th.index_select(alpha.T, 0, representatives) * advantages).sum(dim=1)
        if self.normalize_advantage and len(marginal) > 1:
            if self.k == 1:
                marginal = (marginal - marginal.mean()) / (marginal.std() + 1e-8)
            else:
                differentiate = getattr(self.assigner, "gradient_statistics", "mean")
                marginal = normalize_per_representative(marginal, representatives, self.k, differentiate)
        return marginal

    def _learns_assignment(self) -> bool:
        """Whether the coming update trains the assignment (with one representative alpha is constantly 1)."""
        return self.assigner.requires_grad and self.k > 1

    def train(self) -> None:
        """SB3's PPO update, with marginal advantages and a per-agent value loss.

        The assigner's own optimizer (if any) steps in the same backward pass as the policy's. A fixed
        assignment's marginal advantages are formed once per update by the buffer.
        """
        assert isinstance(self.rollout_buffer, RMDPRolloutBuffer)
        if self._learns_assignment():
            self.rollout_buffer.fix_assignment(None)
        else:
            alpha = self.assigner.weights().detach().cpu().numpy()
            self.rollout_buffer.fix_assignment(alpha, normalize=self.normalize_advantage)
        # PPO reads the old values only to clip the value function: skip their (batch, n_agents) gather
        self.rollout_buffer.samples_old_values = self.clip_range_vf is not None
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        # listed once: walking the module tree for every minibatch's gradient clipping costs 30-40 us
        parameters = list(self.policy.parameters())
        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []

        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = rollout_data.actions.long().flatten()
                representatives = rollout_data.representatives

                values, log_prob, entropy = self.policy.evaluate_actions(
                    rollout_data.observations, actions, representatives=representatives
                )
                advantages = self.marginal_advantages(rollout_data.advantages, representatives.index)

                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()

                pg_losses.append(policy_loss.item())
                clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    old_values = rollout_data.old_values
                    assert old_values is not None  # the buffer samples them when clip_range_vf is set
                    values_pred = old_values + th.clamp(values - old_values, -clip_range_vf, clip_range_vf)
                # Per-agent critic of the collecting representative: MSE over all agents (paper eq. 8).
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                if entropy is None:
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                self.policy.optimizer.zero_grad()
                self.assigner.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
                self.policy.optimizer.step()
                self.assigner.step()

            self._n_updates += 1
            if not continue_training:
                break

        self.rollout_buffer.samples_old_values = True  # SB3's full samples for anyone else
        explained_var = self.rollout_buffer.explained_variance()

        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

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


def _check_count(value: Any, name: str, meaning: str) -> int:
    """``value`` as an int when it is a whole number >= 1 (an int, or an integral float).

    :raises TypeError: for a string, ``None``, a bool or another type, naming the fix.
    :raises ValueError: for NaN, infinities, fractions and numbers below 1.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real)):
        hint = f" (a string: pass the number, {name}={int(value)})" if str(value).isdigit() else ""
        raise TypeError(f"{name}={value!r}: {meaning}; got a {type(value).__name__}{hint}.")
    if isinstance(value, numbers.Integral):
        whole = int(value)
    else:
        number = float(value)
        if not math.isfinite(number) or not number.is_integer():
            raise ValueError(f"{name}={value!r}: {meaning}.")
        whole = int(number)
    if whole < 1:
        raise ValueError(f"{name}={value!r}: {meaning}.")
    return whole


def _check_device(device: th.device | str) -> None:
    """Fail on a device torch does not know; warn when a CUDA device is asked for and torch sees no GPU
    (SB3 then trains on the CPU)."""
    try:
        kind = th.device(device).type if device != "auto" else "auto"
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device={device!r}: not a torch device; pass 'auto', 'cpu' or 'cuda' (cuda:N)."
        ) from None
    if kind == "cuda" and not th.cuda.is_available():
        warnings.warn(
            f"device={device!r}: torch sees no CUDA GPU here, so the model trains on the CPU; pass "
            "device='cpu' to say so, or 'auto'.",
            UserWarning,
            stacklevel=3,
        )


def _slots_error(n_envs: int, k: int) -> str:
    return (
        f"n_envs={n_envs} env slots cannot be shared evenly by k={k} representatives (slot e is driven by "
        f"representative e % k): use a multiple of k, e.g. n_envs={k * max(1, round(n_envs / k))}."
    )


def _check_env_fits(env: VecEnv, k: int, n_agents: int) -> None:
    """Raise a ``ValueError`` naming the mismatch when ``env`` is not an r-MDP this model can train on."""
    wrapper: VecEnv = env
    while isinstance(wrapper, VecEnvWrapper):
        if isinstance(wrapper, VecNormalize) and wrapper.norm_reward:
            raise ValueError(
                "VecNormalize(norm_reward=True) normalizes the scalar reward SB3 sees (the agents' mean), "
                "not the per-agent rewards RMDPPPO learns from, so it would be silently ignored: wrap the "
                "env in VecNormalize(env, norm_reward=False) (observations only), and scale large rewards in "
                "the env itself (e.g. its reward_scale kwarg)."
            )
        wrapper = wrapper.venv
    env_agents = vec_env_n_agents(as_rmdp_vec_env(env))
    if env_agents != n_agents:
        raise ValueError(
            f"The env has {env_agents} agents, but this model was built for n_agents={n_agents} (k={k}): "
            f"its critic and assignment have one entry per agent. Pass an env of the same r-MDP "
            f"({n_agents} agents), or train a new RMDPPPO on this env."
        )
    if env.num_envs % k != 0:
        raise ValueError(
            f"The env has {env.num_envs} env slots, which k={k} representatives of this model cannot share "
            f"(slot e is driven by representative e % k): build the VecEnv with a multiple of k slots, e.g. "
            f"make_rmdp_vec_env(env, n_envs={k * max(1, round(env.num_envs / k))})."
        )


def _global_random_state() -> dict[str, Any]:
    """The global Python, NumPy and torch (CPU and CUDA) random states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        # SB3's rollout buffer shuffles minibatches with the legacy global generator.
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": th.get_rng_state(),
    }
    if th.cuda.is_available():
        state["cuda"] = th.cuda.get_rng_state_all()
    return state


def _set_global_random_state(state: dict[str, Any]) -> None:
    """Restore what :func:`_global_random_state` returned (CUDA's only where the same GPUs are present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    th.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and th.cuda.is_available() and len(cuda) == th.cuda.device_count():
        th.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _agent_rewards(infos: list[dict[str, Any]], n_agents: int) -> np.ndarray:
    """Stack ``info["agent_rewards"]`` of every slot: ``(n_envs, n_agents)`` float32."""
    try:
        rewards = np.stack([info[AGENT_REWARDS_KEY] for info in infos]).astype(np.float32, copy=False)
    except KeyError as error:
        raise ValueError(
            "A step's info has no 'agent_rewards': wrap each env in `sb3_rmdp.envs.AgentRewardsWrapper` "
            "before vectorizing (or build the VecEnv with `sb3_rmdp.envs.make_rmdp_vec_env`)."
        ) from error
    if rewards.shape[1] != n_agents:
        raise ValueError(
            f"info['agent_rewards'] has {rewards.shape[1]} entries; the model has {n_agents} agents."
        )
    return rewards
