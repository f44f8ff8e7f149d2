"""``Assigner``: the SB3 callback that owns the assignment of agents to representatives."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Figure, TensorBoardOutputFormat

from sb3_rmdp.matching import AssignmentLimits
from sb3_rmdp.welfare import OPT_OUT, agent_welfare, welfare_figures

#: what an `Assigner` does not save: the model and what points back at it (saved on its own), and the
#: model's limits (the model hands them over again when it binds the assigner)
UNSAVED_ATTRIBUTES = ("model", "locals", "globals", "parent", "limits")
# Key of the pickled state that holds the torch part, written by `th.save`.
_TORCH_STATE = "_torch_state"


class Assigner(BaseCallback):
    """Base class of assignment algorithms; an SB3 callback that ``RMDPPPO`` runs first.

    An assigner is *bound* to the r-MDP once (``n_agents``, ``k``, optional ``agent_params``) when the
    model is set up, and then owns the assignment ``alpha`` ``(n_agents, k)`` (rows on the simplex).
    ``RMDPPPO.train`` reads :meth:`weights` once per update when :attr:`requires_grad` is unset (the
    assignment must then stay fixed during the update: the marginal advantages are formed once), and
    for every minibatch when it is set: assigners with learnable weights set it and step their own
    optimizer in :meth:`step`. Subclasses update the assignment
    in ``_on_rollout_end`` (called after GAE, before the policy update) and never draw from the global
    numpy/torch random streams: randomness comes from :attr:`rng`, seeded from ``seed`` or the model's seed.

    :param seed: seed of this assigner's own generator (``None``: the model's seed).
    :param verbose: SB3 verbosity.
    :param figure_every: log the ``assignment/figure`` plot (TensorBoard) every this many rollouts,
        from the first one; 0 never draws it.
    """

    requires_grad: bool = False
    #: whether the assigner honours capacity limits and outside options (:class:`AssignmentLimits`)
    respects_limits: bool = True
    _weights: th.Tensor
    # Class default for assigners pickled before the parameter existed.
    figure_every: int = 10

    def __init__(self, seed: int | None = None, verbose: int = 0, figure_every: int = 10):
        if int(figure_every) != figure_every or figure_every < 0:
            raise ValueError(f"figure_every={figure_every}: pass a number of rollouts >= 0 (0: no figure).")
        super().__init__(verbose)
        self.figure_every = int(figure_every)
        self.seed = seed
        self.n_agents = 0
        self.k = 0
        self.agent_params: np.ndarray | None = None
        self.device = th.device("cpu")
        self.rng = np.random.default_rng(seed)
        self.n_rollouts = 0
        self._last_logged_assignment: np.ndarray | None = None
        self.limits = AssignmentLimits()

    # ------------------------------------------------------------------ binding
    @property
    def is_bound(self) -> bool:
        return self.n_agents > 0

    def bind(
        self,
        n_agents: int,
        k: int,
        agent_params: np.ndarray | None = None,
        seed: int | None = None,
        device: th.device | str = "cpu",
        limits: AssignmentLimits | None = None,
    ) -> None:
        """Attach to an r-MDP of ``n_agents`` agents and ``k`` representatives and create the state.

        Binding twice to the same sizes keeps the state (a loaded or resumed model goes on where it was).

        :param limits: the model's welfare objective, capacities and outside options (default: none).
        :raises ValueError: if already bound to other sizes.
        """
        self.device = th.device(device)
        self.limits = limits or AssignmentLimits()
        if self.is_bound:
            if (self.n_agents, self.k) != (n_agents, k):
                raise ValueError(
                    f"{type(self).__name__} is bound to n_agents={self.n_agents}, k={self.k} and cannot "
                    "serve "
                    f"n_agents={n_agents}, k={k}: create a new assigner for a different r-MDP."
                )
            self._on_device_change()
            return
        self.n_agents, self.k = int(n_agents), int(k)
        self.agent_params = None if agent_params is None else np.asarray(agent_params, dtype=np.float64)
        if self.agent_params is not None and (
            self.agent_params.ndim == 0 or len(self.agent_params) != n_agents
        ):
            rows = "a scalar" if self.agent_params.ndim == 0 else f"{len(self.agent_params)} rows"
            self.n_agents = 0  # not bound
            raise ValueError(
                f"agent_params has {rows}, but the r-MDP has {n_agents} agents: give one row of params per "
                f"agent, an array of shape (n_agents, d) = ({n_agents}, d), or None."
            )
        self.rng = np.random.default_rng(self.seed if self.seed is not None else seed)
        self._setup()

    def _setup(self) -> None:
        """Create the assignment state (called once, by :meth:`bind`)."""

    def _on_device_change(self) -> None:
        """Move tensors to :attr:`device` (after a load on another device)."""
        if hasattr(self, "_weights"):
            self._weights = self._weights.to(self.device)

    # ------------------------------------------------------------------ the assignment
    def weights(self) -> th.Tensor:
        """The assignment ``alpha``: ``(n_agents, k)`` on :attr:`device`, rows summing to 1.

        Differentiable w.r.t. the assigner's parameters when :attr:`requires_grad` is set. The
        base class serves the fixed weights that :meth:`_set_weights` or :meth:`_set_hard_assignment`
        stored; learnable assigners override it.
        """
        return self._weights

    def _set_weights(self, weights: np.ndarray | th.Tensor) -> None:
        """Store fixed weights ``(n_agents, k)`` (float32, on :attr:`device`)."""
        self._weights = th.as_tensor(weights, dtype=th.float32, device=self.device)

    def _set_hard_assignment(self, hard_assignment: np.ndarray) -> None:
        """Store a hard assignment ``(n_agents,)`` and its one-hot weights."""
        self.hard_assignment = np.asarray(hard_assignment, dtype=np.int64)
        self._weights = one_hot(self.hard_assignment, self.k, self.device)

    def assignment(self) -> np.ndarray:
        """The deployed hard assignment ``(n_agents,)``: each agent's representative (argmax of its row).

        With outside options (:attr:`limits`), an agent whose estimated return under that representative
        (:meth:`value_table`) does not beat its outside value takes it instead: :data:`OPT_OUT` (-1).
        """
        with th.no_grad():
            hard = self.weights().argmax(dim=1).cpu().numpy()
        return self._opt_out(hard)

    def _opt_out(self, hard: np.ndarray) -> np.ndarray:
        """``hard`` with :data:`OPT_OUT` for the agents whose estimate does not beat their outside value."""
        outside = getattr(self, "limits", AssignmentLimits()).outside
        table = self.value_table() if outside is not None else None
        if table is None:
            return hard
        rows = np.arange(len(hard))
        estimate = table[rows, np.where(hard == OPT_OUT, 0, hard)]
        declines = np.isfinite(estimate) & (estimate <= outside)
        return np.where(declines, OPT_OUT, hard)

    def _check_sizes(self, hard: np.ndarray) -> None:
        """Refuse a fixed hard assignment ``(n_agents,)`` whose group sizes break the capacity limits."""
        sizes = np.bincount(hard[hard != OPT_OUT], minlength=self.k)
        c_min, c_max = self.limits.c_min or 0, self.limits.c_max
        if sizes.min() < c_min or (c_max is not None and sizes.max() > c_max):
            raise ValueError(
                f"{type(self).__name__}'s assignment has groups of {sizes.min()} to {sizes.max()} agents, "
                f"outside the model's capacity limits [c_min={self.limits.c_min}, c_max={c_max}]: give an "
                "assignment within them, or other limits."
            )

    def value_table(self) -> np.ndarray | None:
        """``(n_agents, k)``: the assigner's estimate of each agent's return under each representative.

        What the M-step's welfare weights (:meth:`~sb3_rmdp.core.RMDPAlgorithm._welfare_weights`) and the
        outside options read. The base class returns the model's last rollout returns
        (``training_returns``, NaN until a representative finishes an episode); EM its moving-average
        table. ``None`` before the assigner has a model.
        """
        model = getattr(self, "model", None)
        table = getattr(model, "training_returns", None)
        return None if table is None else np.asarray(table, dtype=np.float64)

    def zero_grad(self) -> None:
        """Clear the gradients of learnable assignment parameters (no-op for fixed weights)."""

    def step(self) -> None:
        """Take one optimizer step on learnable assignment parameters (no-op for fixed weights)."""

    # ------------------------------------------------------------------ callback plumbing
    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.n_rollouts += 1
        try:
            self._update()
        except BaseException:
            # The update did not happen (an exception, a Ctrl-C): the counter must not say it did.
            self.n_rollouts -= 1
            raise
        self._log()

    def _update(self) -> None:
        """Update the assignment from the finished rollout (``self.model`` holds its data).

        :attr:`n_rollouts` counts this rollout already, and is set back if this raises; an update that
        raises should leave the assigner's state as it was (EM's does).
        """

    def _log(self) -> None:
        """Record ``welfare/*`` and ``assignment/*`` in SB3's logger.

        ``welfare/*`` is the welfare of the **deployed** hard assignment (:meth:`assignment`: each agent's
        argmax, unless a subclass deploys otherwise) on the last rollouts' training returns: what users
        would get; soft assigners add their own soft figure.
        """
        table = getattr(self.model, "training_returns", None)
        hard = self.assignment()
        limits = getattr(self, "limits", AssignmentLimits())
        if table is not None and np.all(np.isfinite(table)):
            values = agent_welfare(table, hard, limits.outside)
            for name, value in welfare_figures(values).items():
                self.logger.record(f"welfare/{name}", value)
            objective = limits.objective
            if not objective.is_utilitarian and not (objective.positive and np.any(values <= 0)):
                self.logger.record("welfare/objective", objective.value(values))
        if limits.outside is not None:
            self.logger.record("assignment/opted_out", int(np.count_nonzero(hard == OPT_OUT)))
        sizes = np.bincount(hard[hard != OPT_OUT], minlength=self.k)
        changes = (
            0 if self._last_logged_assignment is None else int((hard != self._last_logged_assignment).sum())
        )
        self._last_logged_assignment = hard
        self.logger.record("assignment/changes", changes)
        self.logger.record("assignment/smallest", int(sizes.min()))
        self.logger.record("assignment/largest", int(sizes.max()))
        self.logger.record("assignment/sizes", th.as_tensor(sizes), exclude=("stdout", "log", "json", "csv"))
        if self._figure_due():
            from sb3_rmdp.plotting import plot_assignment

            figure = plot_assignment(hard, self.k, self.agent_params)
            self.logger.record(
                "assignment/figure", Figure(figure, close=True), exclude=("stdout", "log", "json", "csv")
            )

    def _figure_due(self) -> bool:
        """Whether this rollout logs ``assignment/figure``: every ``figure_every`` rollouts, TensorBoard on.

        Only TensorBoard's writer renders figures, so nothing is drawn without it.
        """
        return (
            self.figure_every > 0
            and (self.n_rollouts - 1) % self.figure_every == 0
            and any(isinstance(output, TensorBoardOutputFormat) for output in self.logger.output_formats)
        )

    def __getstate__(self) -> dict[str, Any]:
        """The assigner's whole state but the model (saved on its own): what ``RMDPPPO.save`` stores.

        Plain attributes (numpy tables, counters, the ``np.random.Generator`` with its bit-generator
        state) are pickled as they are. Attributes that hold torch state (tensors, parameters, modules,
        optimizers) are written together by ``th.save``, so an optimizer still points at its parameters
        once read back, and :meth:`__setstate__` reads them onto the CPU whatever device they were saved
        from: a model saved on a GPU loads on a CPU-only machine, and :meth:`bind` then moves the state
        to the model's device. A ``th.Generator`` travels as its device and state.
        """
        state = self.__dict__.copy()
        for key in UNSAVED_ATTRIBUTES:
            state.pop(key, None)
        objects: dict[str, Any] = {}
        generators: dict[str, tuple[str, th.Tensor]] = {}
        for key, value in list(state.items()):
            if isinstance(value, th.Generator):
                generators[key] = (str(value.device), value.get_state())
            elif isinstance(value, (th.Tensor, th.nn.Module, th.optim.Optimizer)):
                objects[key] = value
            else:
                continue
            del state[key]
        if objects or generators:
            buffer = io.BytesIO()
            th.save({"objects": objects, "generators": generators}, buffer)
            state[_TORCH_STATE] = buffer.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        blob = state.pop(_TORCH_STATE, None)
        self.__dict__.update(state)
        if blob is not None:
            torch_state = th.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
            self.__dict__.update(torch_state["objects"])
            for key, (device, generator_state) in torch_state["generators"].items():
                generator = th.Generator(device=device)
                generator.set_state(generator_state)
                setattr(self, key, generator)
            # The tensors are on the CPU now; `bind` moves them to the model's device.
            self.device = th.device("cpu")
        self.model = None  # type: ignore[assignment]
        self.locals, self.globals, self.parent = {}, {}, None


def one_hot(assignment: np.ndarray, k: int, device: th.device | str = "cpu") -> th.Tensor:
    """Hard assignment ``(n_agents,)`` -> weights ``(n_agents, k)`` (float32, one-hot rows; the row of an
    agent that opts out, :data:`OPT_OUT`, is all zeros: no representative trains for it)."""
    hard = np.asarray(assignment, dtype=np.int64)
    served = hard != OPT_OUT
    index = th.as_tensor(np.where(served, hard, 0), device=device)
    weights = th.nn.functional.one_hot(index, num_classes=k).to(th.float32)
    if not served.all():
        weights[th.as_tensor(~served, device=device)] = 0.0
    return weights
