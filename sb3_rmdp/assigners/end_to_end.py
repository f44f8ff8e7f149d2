"""``EndToEndAssigner``: soft assignment learned by the PPO loss itself (paper section 3.4, eq. 12)."""

from __future__ import annotations

import numpy as np
import torch as th

from sb3_rmdp.assigners.base import Assigner
from sb3_rmdp.assigners.em import best_response, mix_returns
from sb3_rmdp.welfare import utilitarian_welfare

#: which statistics of the per-representative advantage normalization the logits' gradient flows
#: through (:func:`sb3_rmdp.core.normalize_per_representative`): the mean (the default), mean and std
#: (the paper's reference code), or neither.
GRADIENT_STATISTICS = ("mean", "both", "none")
#: how the deployed hard assignment is read off: each agent's largest logit (the paper), or each agent's
#: best representative on its training returns under each representative's latest rollout (a final
#: E-step over the trained policies).
DEPLOY = ("argmax", "best_response")


class EndToEndAssigner(Assigner):
    """A table of logits ``psi`` ``(n_agents, k)``; ``alpha = softmax(psi)`` over representatives.

    ``RMDPPPO.train`` forms each minibatch's marginal advantages from :meth:`weights` without
    detaching them, so the clipped PPO policy loss is also the assignment's loss (eq. 12); this
    assigner's own Adam steps in the same backward pass as the policy's optimizer. The deployed
    assignment (:meth:`assignment`) is the argmax of each agent's row, or with
    ``deploy="best_response"`` each agent's best representative on :attr:`returns_table` (by default
    each representative's latest rollout with a finished episode); its
    welfare is the headline figure (``welfare/utilitarian``); the soft welfare ``sum alpha Q`` is logged
    as ``welfare/soft``. Training is the same either way: only the hard assignment read off differs.

    :param lr: Adam learning rate of the logits (the paper's 2e-3).
    :param init_scale: standard deviation of the initial logits, drawn from the assigner's own generator
        (1, as the reference code's ``torch.randn``: a random soft split that breaks the symmetry
        between representatives).
    :param seed: seed of the assigner's generator (``None``: the model's seed).
    :param figure_every: rollouts between two ``assignment/figure`` plots (0: none); see :class:`Assigner`.
    :param gradient_statistics: which per-representative normalization statistics the logits' gradient
        flows through (see :func:`sb3_rmdp.core.normalize_per_representative`): ``"mean"`` (the mean
        only), ``"both"`` (mean and std, as the paper's reference code) or ``"none"``.
    :param deploy: ``"argmax"`` (the paper): each agent goes to its largest logit. ``"best_response"``:
        each agent goes to the representative with its highest return in :attr:`returns_table`, keeping
        its argmax on ties and until every representative has finished an episode: a final E-step
        (:func:`best_response`) over the trained policies, so its welfare on that table is never below
        the argmax's. The logits learn slowly where an agent's weight is small, so agents a
        representative would serve well can keep a stale argmax; the best response reads them off the
        returns instead.
    :param mixing: the moving-average coefficient of :attr:`returns_table`, in (0, 1]
        (:func:`mix_returns`, as EM's table). The default 1 keeps each representative's latest rollout
        (the mean of the episodes it finished there): the deployed policies are the latest ones, and on
        HalfCheetah velocity EM's 0.05 lagged behind them and deployed worse assignments
        (``docs/benchmarks.md``). Lower it where one rollout's episodes are too noisy a measure.
    """

    requires_grad = True
    # the logits learn an unconstrained soft assignment: no capacities or outside options
    respects_limits = False
    #: the default, and the value of models saved before the option existed
    gradient_statistics: str = "mean"
    deploy: str = "argmax"
    #: the default, and the value of models saved before the option existed (a best response then read
    #: the latest returns)
    mixing: float = 1.0
    #: ``(n_agents, k)`` each agent's training return under each representative: its latest rollout with
    #: a finished episode, or with ``mixing < 1`` a moving average as EM's ``q_table`` (kept whatever
    #: ``deploy``; ``None`` in models saved before it existed)
    returns_table: np.ndarray | None = None
    #: ``(k,)`` whether each column of :attr:`returns_table` has had an episode
    observed: np.ndarray | None = None

    def __init__(
        self,
        lr: float = 2e-3,
        init_scale: float = 1.0,
        seed: int | None = None,
        verbose: int = 0,
        figure_every: int = 10,
        gradient_statistics: str = "mean",
        deploy: str = "argmax",
        mixing: float = 1.0,
    ):
        if lr <= 0:
            raise ValueError(f"lr={lr}: the logits' learning rate must be positive.")
        if gradient_statistics not in GRADIENT_STATISTICS:
            raise ValueError(
                f"gradient_statistics={gradient_statistics!r}: choose one of {GRADIENT_STATISTICS} (which "
                "normalization statistics the logits' gradient flows through; 'mean' is the default)."
            )
        if deploy not in DEPLOY:
            raise ValueError(
                f"deploy={deploy!r}: choose one of {DEPLOY} (how the deployed hard assignment is read off; "
                "'argmax' of the logits is the default)."
            )
        if not 0.0 < mixing <= 1.0:
            raise ValueError(f"mixing={mixing}: the moving-average coefficient must lie in (0, 1].")
        super().__init__(seed=seed, verbose=verbose, figure_every=figure_every)
        self.deploy = deploy
        self.mixing = float(mixing)
        self.lr = float(lr)
        self.gradient_statistics = gradient_statistics
        self.init_scale = float(init_scale)

    def _setup(self) -> None:
        generator = th.Generator().manual_seed(int(self.rng.integers(2**62)))
        initial = th.randn(self.n_agents, self.k, generator=generator) * self.init_scale
        self.logits = th.nn.Parameter(initial.to(self.device))
        self.optimizer = th.optim.Adam([self.logits], lr=self.lr)
        self._setup_returns_table()

    def _setup_returns_table(self) -> None:
        self.returns_table = np.zeros((self.n_agents, self.k), dtype=np.float64)
        self.observed = np.zeros(self.k, dtype=bool)

    def _on_device_change(self) -> None:
        if self.logits.device != self.device:
            self.logits = th.nn.Parameter(self.logits.detach().to(self.device))
            state = self.optimizer.state_dict()
            self.optimizer = th.optim.Adam([self.logits], lr=self.lr)
            self.optimizer.load_state_dict(state)

    def weights(self) -> th.Tensor:
        return th.softmax(self.logits, dim=1)

    def assignment(self) -> np.ndarray:
        """The deployed hard assignment ``(n_agents,)``: see ``deploy``."""
        argmax = super().assignment()
        if self.deploy == "argmax" or self.returns_table is None or not np.all(self.observed):
            return argmax
        return best_response(self.returns_table, argmax)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        self.optimizer.step()

    def _update(self) -> None:
        if self.returns_table is None or self.observed is None:
            self._setup_returns_table()  # a model saved before the table existed
        assert self.returns_table is not None and self.observed is not None
        episode_returns = self.model.rollout_episode_returns  # type: ignore[attr-defined]
        mix_returns(self.returns_table, self.observed, episode_returns, self.mixing)

    def _log(self) -> None:
        super()._log()
        table = getattr(self.model, "training_returns", None)
        if table is not None and np.all(np.isfinite(table)):
            with th.no_grad():
                soft = self.weights().cpu().numpy()
            self.logger.record("welfare/soft", utilitarian_welfare(table, soft))
            if self.deploy != "argmax":
                self.logger.record("welfare/argmax", utilitarian_welfare(table, soft.argmax(axis=1)))
