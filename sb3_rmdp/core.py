"""The r-MDP core: what every algorithm of the package adds to its SB3 / sb3-contrib base.

:class:`RMDPAlgorithm` is a mixin placed before the base algorithm (``RMDPPPO(RMDPAlgorithm, PPO)``,
``RMDPA2C(RMDPAlgorithm, A2C)``...). It owns, once for all of them:

* the r-MDP env and its checks (agents, env slots, ``VecNormalize(norm_reward=True)`` refused);
* the per-agent rollout buffer and the policy with k action heads and a ``k x n_agents`` critic
  (:mod:`sb3_rmdp.buffers`, :mod:`sb3_rmdp.policies`), set up around the base's ``_setup_model``;
* the rollout loop: each env slot acted by its representative, the agents' reward vectors stored,
  truncated episodes bootstrapped per agent, finished episodes' return vectors kept for the assigner;
  the base's own per-step extras (action masks, LSTM states) enter through small hooks;
* the marginal advantages ``sum_i alpha[i, j] A^{ij}`` of each update
  (:meth:`RMDPAlgorithm.marginal_advantages`);
* the assigner as the first callback, and save / load / resume with the assignment state written as data.

An algorithm subclass writes its constructor (its base's arguments plus ``k``, ``assigner``, ``n_envs``
and ``env_kwargs``) and its ``train``; nothing else.
"""

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
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.save_util import is_json_serializable, recursive_getattr, save_to_zip_file
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize

from sb3_rmdp.aggregate import RMDPAggregateRolloutBuffer, collect_aggregate_rollouts
from sb3_rmdp.assigners import Assigner, make_assigner
from sb3_rmdp.assigners.end_to_end import GRADIENT_STATISTICS
from sb3_rmdp.buffers import RMDPDictRolloutBuffer, RMDPRolloutBuffer
from sb3_rmdp.callbacks import prepare_callbacks, serve_deployed_assignment
from sb3_rmdp.envs.contract import agent_rewards_of
from sb3_rmdp.envs.vec_env import as_rmdp_vec_env, vec_env_agent_params, vec_env_n_agents
from sb3_rmdp.files import atomic_write, with_zip_suffix
from sb3_rmdp.matching import AssignmentLimits, check_limits
from sb3_rmdp.objectives import DEFAULT_TEMPERATURE, WelfareObjective, WelfareSpec, welfare_objective
from sb3_rmdp.policies import (
    MultiRepresentativePolicy,
    RepresentativeGroups,
    check_image_layout,
    check_policy_fits,
)
from sb3_rmdp.serialization import (
    Unencodable,
    check_rmdp_data,
    decode_model_data,
    encode_field,
    read_model_bytes,
    read_model_data,
)

SelfRMDPAlgorithm = TypeVar("SelfRMDPAlgorithm", bound="RMDPAlgorithm")
#: per-agent (discounted) returns beyond which the critic is known to fail: reward scales of 1e3-1e6 took
#: the explained variance from 0.82 to 1e-6; the algorithms warn once when a rollout's returns exceed it
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


class RMDPAlgorithm(OnPolicyAlgorithm):
    """The r-MDP machinery of an on-policy algorithm: k representatives serving n agents.

    A mixin, listed before the SB3 / sb3-contrib base (``class RMDPPPO(RMDPAlgorithm, PPO)``), so that
    ``super()`` reaches the base. Env slot ``e`` is driven by representative ``e % k`` for the whole run
    when ``n_envs`` is a multiple of k (every representative collects the same number of transitions),
    else representatives rotate over the slots (:attr:`rotates_representatives`); each transition yields
    all n agent rewards; a per-agent critic learns ``V^{ij}`` and per-agent GAE gives ``A^{ij}``; the
    policy loss of a sample collected by j uses the marginal advantage ``sum_i alpha[i, j] A^{ij}`` with
    the assigner's current ``alpha`` (paper eq. 9).

    Subclasses call :meth:`_rmdp_init` first in their constructor and write ``train``; the base's own
    per-step extras travel through :meth:`_rollout_step` (actions, values, log-probabilities and
    extra buffer arguments), :meth:`_after_rollout_step`, :meth:`_terminal_values` and
    :meth:`_final_values`.
    """

    #: the name files record (``RMDPPPO.load`` refuses a file of another algorithm, naming it)
    algorithm_name: ClassVar[str] = "RMDPAlgorithm"
    #: the policy class every policy of this algorithm subclasses
    policy_base: ClassVar[type[MultiRepresentativePolicy]] = MultiRepresentativePolicy
    #: whether the algorithm applies the envs' ``action_masks()`` (RMDPMaskablePPO)
    uses_action_masks: ClassVar[bool] = False
    # set once the return-scale warning was given (a class default: files saved before it lack it)
    _warned_return_scale: bool = False
    k: int
    n_agents: int
    agent_params: np.ndarray | None
    assigner: Assigner
    normalize_advantage: bool
    policy: MultiRepresentativePolicy
    rollout_buffer: RMDPRolloutBuffer
    _slot_index: np.ndarray
    _representative_steps: np.ndarray

    # ------------------------------------------------------------------ construction
    def _rmdp_init(
        self,
        env: GymEnv | str | None,
        k: int,
        assigner: Assigner | str | None,
        n_envs: int | None,
        env_kwargs: dict[str, Any] | None,
        device: th.device | str,
        use_sde: bool = False,
        batch_size: int | None = None,
        normalize_advantage: bool = False,
        welfare: WelfareSpec = "utilitarian",
        welfare_temperature: float = DEFAULT_TEMPERATURE,
        outside_values: float | np.ndarray | None = None,
        c_min: int | None = None,
        c_max: int | None = None,
    ) -> VecEnv | None:
        """Check the r-MDP arguments and build the env; call before the base's constructor.

        ``welfare`` (with ``welfare_temperature``), ``outside_values``, ``c_min`` and ``c_max`` are the
        model's :class:`~sb3_rmdp.matching.AssignmentLimits` (see :class:`RMDPAlgorithm`).

        :return: the env as an r-MDP VecEnv (``None`` stays ``None``, as in a load).
        :raises ValueError: naming the fix, for each argument that does not fit.
        """
        name = type(self).__name__
        self.k = _check_count(k, "k", "the policy budget must be a whole number of representatives, k >= 1")
        if n_envs is not None:
            n_envs = _check_count(n_envs, "n_envs", "pass a number of env slots >= 1")
        if use_sde:
            raise ValueError(f"use_sde=True is not supported by {name}: pass use_sde=False.")
        if normalize_advantage and isinstance(batch_size, int) and batch_size < 2:
            raise ValueError(
                f"batch_size={batch_size}: advantages are normalized within each minibatch, which needs at "
                "least 2 samples; pass batch_size >= 2 (or normalize_advantage=False)."
            )
        _check_device(device)
        self.assigner = make_assigner(assigner)
        welfare_objective(welfare, welfare_temperature)  # an unknown objective fails before the env is built
        self.welfare, self.welfare_temperature = welfare, float(welfare_temperature)
        self.outside_values = None if outside_values is None else np.asarray(outside_values, dtype=np.float64)
        self.c_min, self.c_max = c_min, c_max
        self.n_agents = 0
        self.agent_params = None
        if env is None:
            return None
        vec_env = as_rmdp_vec_env(env, n_envs=n_envs or self.k, env_kwargs=env_kwargs)
        self.n_agents = vec_env_n_agents(vec_env)
        if self.k > self.n_agents:
            raise ValueError(
                f"k={self.k} representatives for {self.n_agents} agents: the policy budget must satisfy "
                f"1 <= k <= n_agents; lower k to at most {self.n_agents}."
            )
        self.agent_params = vec_env_agent_params(vec_env)
        check_image_layout(vec_env.observation_space)
        if vec_env.has_attr("action_masks") != self.uses_action_masks:
            raise ValueError(_masks_message(name, self.uses_action_masks))
        return vec_env

    @staticmethod
    def _rmdp_policy_kwargs(policy_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        # "auto" written out, so that a file without the key is known to predate it (see _setup_model)
        return {"critic": "auto", **(policy_kwargs or {})}

    # ------------------------------------------------------------------ set-up
    def _setup_model(self) -> None:
        if self.env is not None:
            # After `load(path, env)`, `k` and `n_agents` are the file's and `env` is the new one.
            _check_env_fits(self.env, self.k, self.n_agents)
        if not issubclass(self.policy_class, self.policy_base):
            aliases = ", ".join(repr(alias) for alias in self.policy_aliases)
            raise ValueError(
                f"{type(self).__name__} needs a {self.policy_base.__name__} (k action heads, per-agent "
                f"critic), got {self.policy_class.__name__}: pass one of {aliases} or a subclass of "
                f"{self.policy_base.__name__}."
            )
        check_policy_fits(self.policy_class, self.observation_space, self.policy_kwargs, self.policy_aliases)
        # A file saved before critic="auto" existed has no "critic": its critic was per representative.
        self.policy_kwargs = {"critic": "per_representative", **self.policy_kwargs}
        self.policy_kwargs.update(k=self.k, n_agents=self.n_agents)
        if self.rollout_buffer_class is None:
            self.rollout_buffer_class = self._default_buffer_class(
                isinstance(self.observation_space, spaces.Dict)
            )
        self.rollout_buffer_kwargs = {**self.rollout_buffer_kwargs, "n_agents": self.n_agents, "k": self.k}
        self._setup_base_model()
        # Saved with the model: a load rebuilds this layout whatever "auto" resolves to by then.
        self.policy_kwargs["critic"] = self.policy.critic_layout
        self.assignment_limits = self._check_limits()
        self.assigner.bind(
            self.n_agents,
            self.k,
            self.agent_params,
            seed=self.seed,
            device=self.device,
            limits=self.assignment_limits,
        )
        if getattr(self, "_slot_index", None) is None or self._slot_index.shape != (self.n_envs,):
            #: ``(n_envs,)`` the representative acting in each slot now (see :meth:`_rotate`)
            self._slot_index = self.rollout_buffer.slot_representatives.copy()
            #: ``(k,)`` transitions each representative collected so far (what rotation balances)
            self._representative_steps = np.zeros(self.k, dtype=np.int64)
        self._set_slot_representatives(self._slot_index)
        if getattr(self, "_episode_agent_returns", None) is None or self._episode_agent_returns.shape != (
            self.n_envs,
            self.n_agents,
        ):
            self._reset_episode_tracking()

    def _check_limits(self) -> AssignmentLimits:
        """The model's welfare objective, capacities and outside options, checked against the r-MDP."""
        limits = check_limits(
            self.n_agents,
            self.k,
            getattr(self, "welfare", "utilitarian"),  # files saved before the options existed lack them
            getattr(self, "welfare_temperature", DEFAULT_TEMPERATURE),
            getattr(self, "c_min", None),
            getattr(self, "c_max", None),
            getattr(self, "outside_values", None),
        )
        if limits.constrains and not self.assigner.respects_limits:
            raise ValueError(
                f"{type(self.assigner).__name__} cannot respect capacity limits or outside options (it "
                "learns an unconstrained soft assignment): use assigner='em', 'kmeans' or 'random' with "
                "c_min, c_max or outside_values, or drop them."
            )
        return limits

    @property
    def welfare_objective(self) -> WelfareObjective:
        """The objective the M-step follows and the logs and reports name (``welfare=...``)."""
        return self.assignment_limits.objective

    def _default_buffer_class(self, dict_observations: bool) -> type[RMDPRolloutBuffer]:
        """The rollout buffer unless ``rollout_buffer_class`` says otherwise."""
        return RMDPDictRolloutBuffer if dict_observations else RMDPRolloutBuffer

    def _setup_base_model(self) -> None:
        """The base algorithm's ``_setup_model`` (the policy, the buffer, the schedules)."""
        super()._setup_model()

    def _set_slot_representatives(self, index: np.ndarray) -> None:
        self._slot_index = np.asarray(index, dtype=np.int64)
        slots = th.as_tensor(self._slot_index, device=self.device)
        self._slot_representatives = RepresentativeGroups.of(slots, self.k)

    @property
    def rotates_representatives(self) -> bool:
        """Whether representatives move between env slots: when ``n_envs`` is not a multiple of k.

        With ``n_envs`` a multiple of k a slot keeps ``e % k`` for the whole run (every representative
        collects the same number of transitions). Otherwise, when a slot's episode ends, its next episode
        goes to the representative that has collected the fewest transitions so far, among those not
        acting in another slot when there are any (ties to the lowest index): ``n_envs=4, k=3``, or
        ``k=50`` on 4 slots, share the data about evenly whatever the episode lengths. An episode is
        always acted by one representative, so a return (and an LSTM's memory) belongs to one policy.
        The slots' representatives and the counts are saved with the model.
        """
        return self.n_envs % self.k != 0

    def _rotate(self, slots: np.ndarray) -> None:
        """Give each slot in ``slots`` (whose episodes just ended) its next representative."""
        if not self.rotates_representatives or len(slots) == 0:
            return
        index = self._slot_index.copy()
        for slot in slots:
            busy = np.zeros(self.k, dtype=bool)
            busy[np.delete(index, slot)] = True
            candidates = np.flatnonzero(~busy) if not busy.all() else np.arange(self.k)
            index[slot] = candidates[np.argmin(self._representative_steps[candidates])]
        self._set_slot_representatives(index)

    def _excluded_save_params(self) -> list[str]:
        # Rebuilt by `_setup_model` and each update; they hold tensors on the model's device.
        return [
            *super()._excluded_save_params(),
            "_slot_representatives",
            "assignment_limits",
            "_agent_weights",
        ]

    # ------------------------------------------------------------------ files
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
        data.update(self._extra_save_data())
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

    def _extra_save_data(self) -> dict[str, Any]:
        """Entries written to the file besides the attributes (read back by :meth:`load`)."""
        return {"_rmdp_algorithm": self.algorithm_name}

    @classmethod
    def load(
        cls: type[SelfRMDPAlgorithm],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        trusted: bool = False,
        **kwargs: Any,
    ) -> SelfRMDPAlgorithm:
        """SB3's ``load``, running no code from the file unless ``trusted``; then the saved random states.

        The file is read once and checked first: a damaged zip (truncated, a bad CRC), a plain SB3 model,
        a model of another of this package's algorithms and a file with pickled entries each get an
        error that says so. The package's state is read back from data; SB3's pickled (``:serialized:``)
        entries, which unpickling would run, are refused unless ``trusted=True`` or ``custom_objects``
        gives their objects. Files saved before the data format (sb3-rmdp 0.x) hold pickles only: load
        them with ``trusted=True`` if you trust them, and save them again. See the Security page of the
        docs.

        Then the global Python, NumPy and torch random states are set to the saved ones (SB3's own
        ``load`` re-seeds them with the model's seed; restoring the saved states instead is what lets
        ``learn(..., reset_num_timesteps=False)`` continue bit for bit). For an exact resume, pass ``env``
        in its state at save time and ``force_reset=False`` (see the class notes).

        :param trusted: the file comes from someone you trust: unpickle its pickled entries and import
            the classes it names from any module. Unpickling runs any code the file holds.
        :raises FileNotFoundError: if there is no file at ``path`` (nor ``path.zip``).
        :raises ValueError: (:class:`~sb3_rmdp.serialization.ModelFileError`) for a damaged file, a model
            of another algorithm, or (:class:`~sb3_rmdp.serialization.UntrustedFileError`) pickled entries
            without ``trusted``; if ``env`` has another number of agents than the file, or if ``k`` or
            ``n_agents`` are passed (they are fixed by the saved networks).
        """
        for name in ("k", "n_agents"):
            if name in kwargs:
                raise ValueError(
                    f"load(..., {name}={kwargs[name]}): {name} is fixed by the saved networks and cannot "
                    f"change on load; train a new {cls.__name__} for another {name}."
                )
        raw, name = read_model_bytes(path)
        data = read_model_data(raw, name)
        check_rmdp_data(data, name, cls.algorithm_name)
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

        :raises ValueError: on another number of agents.
        """
        vec_env = env if isinstance(env, VecEnv) else self._wrap_env(env, self.verbose)
        _check_env_fits(vec_env, self.k, self.n_agents)
        super().set_env(vec_env, force_reset=force_reset)

    def export_arguments(self, progress: float) -> tuple[type[BaseAlgorithm], dict[str, Any]]:
        """The base algorithm a representative exports as, and its constructor's arguments.

        Used by :func:`~sb3_rmdp.export.export_representative`, which adds the policy, the spaces, the
        learning rate, ``policy_kwargs``, the seed and the device. Schedules are frozen at ``progress``.

        :param progress: SB3's progress remaining (1 at the start of training, 0 at its end).
        """
        raise NotImplementedError(f"{type(self).__name__} does not say how it exports a representative.")

    # ------------------------------------------------------------------ learning
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
        """Run the assigner first, then the user's callbacks (SB3 calls them in list order).

        The user's callbacks are made ready for an r-MDP (:mod:`sb3_rmdp.callbacks`): the model's assigner
        among them is taken out (it runs first anyway) and every ``EvalCallback`` scores the deployed
        assignment.
        """
        if callback is None:
            user_callbacks: list[BaseCallback] = []
        elif isinstance(callback, list):
            user_callbacks = list(callback)
        elif isinstance(callback, BaseCallback):
            user_callbacks = [callback]
        else:
            user_callbacks = [ConvertCallback(callback)]
        user_callbacks = prepare_callbacks(self, user_callbacks)
        initialized = super()._init_callback(CallbackList([self.assigner, *user_callbacks]), progress_bar)
        # EvalCallback takes its model in `init_callback`: give it the deployed assignment now
        serve_deployed_assignment(self, user_callbacks)
        return initialized

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

    def predict_in_env(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        env: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        representative: int | np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """:meth:`predict` for observations of ``env``, with what the algorithm reads from it besides
        (RMDPMaskablePPO: its action masks). Evaluation loops call this."""
        return self.predict(observation, state, episode_start, deterministic, representative)

    # ------------------------------------------------------------------ rollouts
    def _rollout_step(
        self, obs_tensor: Any, env: VecEnv
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, dict[str, Any]]:
        """Act in every slot with its representative (under ``th.no_grad``).

        :return: actions ``(n_envs, *action_shape)``, values ``(n_envs, n_agents)``, log-probabilities
            ``(n_envs,)`` and the extra keyword arguments of ``rollout_buffer.add`` (e.g. action masks).
        """
        actions, values, log_probs = self.policy(obs_tensor, representatives=self._slot_representatives)
        return actions, values, log_probs, {}

    def _after_rollout_step(self) -> None:
        """Called once a step is stored (e.g. to move the LSTM states on)."""

    def _terminal_values(self, idx: int, terminal_obs: Any, representative: int) -> th.Tensor:
        """Values ``(n_agents,)`` of slot ``idx``'s terminal observation under its representative."""
        return self.policy.predict_values(terminal_obs, representatives=representative)[0]

    def _final_values(self, new_obs: Any, dones: np.ndarray) -> th.Tensor:
        """Values ``(n_envs, n_agents)`` of the observations after the rollout's last step."""
        return self.policy.predict_values(
            obs_as_tensor(new_obs, self.device),
            representatives=self._slot_representatives,
        )

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
        if isinstance(rollout_buffer, RMDPAggregateRolloutBuffer):  # agents aggregated by representative
            return collect_aggregate_rollouts(self, env, callback, rollout_buffer, n_rollout_steps)
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        finished: list[list[np.ndarray]] = [[] for _ in range(self.k)]

        while n_steps < n_rollout_steps:
            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                action_tensor, values, log_probs, buffer_extras = self._rollout_step(obs_tensor, env)
            actions = action_tensor.cpu().numpy()
            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            slot_reps = self._slot_index
            self._representative_steps += np.bincount(slot_reps, minlength=self.k)

            callback.update_locals(locals())
            if not callback.on_step():
                return False

            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)

            agent_rewards = _agent_rewards(infos, self.n_agents, env)
            self._episode_agent_returns += agent_rewards
            for idx in np.flatnonzero(dones):
                finished[slot_reps[idx]].append(self._episode_agent_returns[idx].copy())
                self._episode_agent_returns[idx] = 0.0
                if infos[idx].get("terminal_observation") is not None and infos[idx].get(
                    "TimeLimit.truncated", False
                ):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.no_grad():
                        terminal_values = self._terminal_values(int(idx), terminal_obs, int(slot_reps[idx]))
                    agent_rewards[idx] += self.gamma * terminal_values.cpu().numpy()

            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                agent_rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
                representatives=slot_reps,
                **buffer_extras,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            self._after_rollout_step()
            self._rotate(np.flatnonzero(dones))

        with th.no_grad():
            values = self._final_values(new_obs, dones)
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
        # max and -min: no temporary the size of the buffer (a fresh one costs its page faults)
        largest = max(float(returns.max()), -float(returns.min())) if returns.size else 0.0
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
    def _prepare_update(self, samples_old_values: bool = True) -> None:
        """Hand the assignment to the buffer before an update.

        A fixed assignment's marginal advantages are formed once per update by the buffer (normalized
        per representative there when ``normalize_advantage``); a learned one is applied per minibatch
        by :meth:`marginal_advantages`.

        :param samples_old_values: whether minibatches need the old values (PPO: only to clip the
            value function); without them their ``(batch, n_agents)`` gather is skipped.
        """
        self._agent_weights = self._welfare_weights()
        if self._learns_assignment():
            self.rollout_buffer.fix_assignment(None)
        else:
            alpha = self.assigner.weights().detach().cpu().numpy()
            if self._agent_weights is not None:
                alpha = alpha * self._agent_weights.cpu().numpy()[:, None]
            self.rollout_buffer.fix_assignment(alpha, normalize=self.normalize_advantage)
        self.rollout_buffer.samples_old_values = samples_old_values

    def _welfare_weights(self) -> th.Tensor | None:
        """``(n_agents,)`` float32 weights of the agents' advantages in this M-step, or ``None`` (all 1).

        The gradient of the welfare objective at the agents' current values, scaled so that the
        utilitarian weights are all 1 (:meth:`~sb3_rmdp.objectives.WelfareObjective.agent_weights`): the
        marginal advantage of representative j becomes ``sum_i alpha[i, j] w_i A^{ij}``. Agent i's value is
        ``sum_j alpha[i, j] Q[i, j]`` on the assigner's estimate ``Q`` (:meth:`Assigner.value_table`), or
        its outside value when it opts out. The utilitarian objective, and any objective before every
        representative has finished an episode, weigh all agents 1: the update is then today's, bit for
        bit.

        :raises ValueError: for the Nash (or alpha-fair, alpha >= 1) objective once an agent's value is
            not positive (shift the rewards so that every return is positive).
        """
        limits: AssignmentLimits | None = getattr(self, "assignment_limits", None)
        if limits is None or limits.objective.is_utilitarian:
            return None
        table = self.assigner.value_table()
        if table is None or not np.all(np.isfinite(table)):
            return None
        alpha = self.assigner.weights().detach().cpu().numpy().astype(np.float64)
        values = (alpha * table).sum(axis=1)
        if limits.outside is not None:
            values = np.where(alpha.sum(axis=1) > 0, values, limits.outside)
        weights = limits.objective.agent_weights(values)
        return th.as_tensor(weights, dtype=th.float32, device=self.device)

    def _evaluate_minibatch(
        self, rollout_data: Any, actions: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """Values ``(batch, n_agents)``, log-probabilities and entropies ``(batch,)`` of a minibatch's
        actions under their representatives (the base's extras, e.g. action masks, added here)."""
        return self.policy.evaluate_actions(
            rollout_data.observations, actions, representatives=rollout_data.representatives
        )

    def _valid_samples(self, rollout_data: Any) -> th.Tensor | None:
        """``(batch,)`` bool: the samples of a minibatch that count (``None``: all; padding does not)."""
        return None

    def marginal_advantages(
        self, advantages: th.Tensor, representatives: th.Tensor, valid: th.Tensor | None = None
    ) -> th.Tensor:
        """``sum_i alpha[i, j_b] A^{i j_b}_b`` for each sample b, normalized per representative.

        :param advantages: ``(batch, n_agents)`` per-agent advantages, or ``(batch,)`` marginal advantages
            the buffer formed for a fixed assignment (then only normalized here).
        :param representatives: ``(batch,)`` long, each sample's representative ``j_b``.
        :param valid: ``(batch,)`` bool, the samples to normalize over (padded ones get 0), or ``None``.
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
            weights = getattr(self, "_agent_weights", None)
            if weights is not None:
                alpha = alpha * weights[:, None]
            marginal = (th.index_select(alpha.T, 0, representatives) * advantages).sum(dim=1)
        if valid is not None:
            if not self.normalize_advantage:
                return marginal
            if self.k == 1:  # sb3-contrib's RecurrentPPO
                return (marginal - marginal[valid].mean()) / (marginal[valid].std() + 1e-8)
            index = valid.nonzero().squeeze(1)
            differentiate = getattr(self.assigner, "gradient_statistics", "mean")
            normalized = normalize_per_representative(
                marginal[index], representatives[index], self.k, differentiate
            )
            return th.zeros_like(marginal).index_copy(0, index, normalized)
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


def _masks_message(algorithm: str, uses_masks: bool) -> str:
    if uses_masks:
        return (
            f"The env does not say which actions are valid: {algorithm} reads an action_masks() method "
            "returning one boolean per action (True: valid). Add it to the env, or wrap each env before "
            "vectorizing: make_rmdp_vec_env(lambda: ActionMasker(MyEnv(), mask_fn)) with "
            "sb3_contrib.common.wrappers.ActionMasker; for an env without masks use RMDPPPO."
        )
    return (
        f"The env has action masks (an action_masks() method), which {algorithm} would ignore, taking "
        "invalid actions: train it with RMDPMaskablePPO (from sb3_rmdp, the 'contrib' extra), which "
        "applies them on every representative's head; or remove the method (or the ActionMasker wrapper) "
        "to train without masks."
    )


def _check_env_fits(env: VecEnv, k: int, n_agents: int) -> None:
    """Raise a ``ValueError`` naming the mismatch when ``env`` is not an r-MDP this model can train on."""
    wrapper: VecEnv = env
    while isinstance(wrapper, VecEnvWrapper):
        if isinstance(wrapper, VecNormalize) and wrapper.norm_reward:
            raise ValueError(
                "VecNormalize(norm_reward=True) normalizes the scalar reward SB3 sees (the agents' mean), "
                "not the per-agent rewards the model learns from, so it would be silently ignored: wrap the "
                "env in VecNormalize(env, norm_reward=False) (observations only), and scale large rewards in "
                "the env itself (e.g. its reward_scale kwarg)."
            )
        wrapper = wrapper.venv
    env_agents = vec_env_n_agents(as_rmdp_vec_env(env))
    if env_agents != n_agents:
        raise ValueError(
            f"The env has {env_agents} agents, but this model was built for n_agents={n_agents} (k={k}): "
            f"its critic and assignment have one entry per agent. Pass an env of the same r-MDP "
            f"({n_agents} agents), or train a new model on this env."
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


def _agent_rewards(infos: list[dict[str, Any]], n_agents: int, env: VecEnv | None = None) -> np.ndarray:
    """Every slot's agent rewards ``(n_envs, n_agents)`` float32 (see
    :func:`~sb3_rmdp.envs.contract.agent_rewards_of`)."""
    try:
        rewards = agent_rewards_of(infos, env)
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
