"""``MultiRepresentativePolicy``: one actor-critic network serving k representatives and n agents.

The features extractor and the MLP trunk are shared by all representatives (as in the paper, section
3.2). On top sit **k action heads** (and k log-std rows for Gaussian actions) and a critic head with
``k x n_agents`` outputs: ``V^{ij}(s)`` for every agent i under every representative j. Every method
that SB3's :class:`~stable_baselines3.common.policies.ActorCriticPolicy` offers takes an extra
``representatives`` index tensor ``(batch,)``, the way sb3-contrib's MaskablePPO passes
``action_masks``; only the rows of each sample's own representative are computed.

With ``k=1`` and ``n_agents=1`` the network is created (same modules, same order, same random draws)
and evaluated exactly as SB3's ``ActorCriticPolicy``, so ``RMDPPPO`` then reproduces ``PPO`` bit for
bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class RepresentativeGroups:
    """A batch's representatives, grouped so that each group runs one small matrix product.

    :param index: ``(batch,)`` representative of each sample.
    :param order: permutation ``(batch,)`` that sorts the samples by representative, or ``None`` if
        they are sorted already (the buffer sorts every minibatch).
    :param counts: samples per representative, length k.
    :param single: the one representative of every sample, when the buffer drew the minibatch from one
        representative's samples (``minibatches="per_representative"``): the policy then runs that
        representative's rows only, as for an int.
    """

    index: th.Tensor
    order: th.Tensor | None
    counts: list[int]
    single: int | None = None

    @classmethod
    def of(cls, index: th.Tensor, k: int) -> RepresentativeGroups:
        is_sorted = index.numel() < 2 or bool((index[1:] >= index[:-1]).all())
        order = None if is_sorted else th.argsort(index, stable=True)
        return cls(index, order, th.bincount(index, minlength=k).tolist())


@dataclass(frozen=True)
class PinnedCriticRows:
    """The critic rows of :meth:`MultiRepresentativePolicy.pinned_critic`: the agents ``(m,)`` or
    ``(k, m)``, their distinct head rows ``(R,)``, the working copies of those rows (leaves, in a param
    group of the policy optimizer) and where the agents' rows ``critic_rows(agents)`` lie among them
    (``inverse``; ``None``: in that order already).

    The working copies are ``leaves``: one ``(weight (R, latent_dim), bias (R,))`` pair, or, for a
    per-representative head, one pair of ``(R / k, ...)`` per representative, so that a minibatch of one
    representative steps only its own rows (the others have no gradient: Adam leaves them as they are).
    """

    agents: th.Tensor
    rows: th.Tensor
    leaves: tuple[tuple[th.Tensor, th.Tensor], ...]
    inverse: th.Tensor | None = None

    def parameters(self) -> list[th.Tensor]:
        return [tensor for pair in self.leaves for tensor in pair]

    def of_agents(self) -> tuple[th.Tensor, th.Tensor]:
        """The working rows of ``critic_rows(agents)`` ``(R', latent_dim)`` and ``(R',)``, in that order."""
        if len(self.leaves) > 1:
            return th.cat([w for w, _ in self.leaves]), th.cat([c for _, c in self.leaves])
        weight, bias = self.leaves[0]
        if self.inverse is None:
            return weight, bias
        return th.index_select(weight, 0, self.inverse), th.index_select(bias, 0, self.inverse)

    def of_representative(self, j: int, size: int) -> tuple[th.Tensor, th.Tensor]:
        """The working rows of representative ``j``'s block of ``size`` rows of ``critic_rows(agents)``."""
        if len(self.leaves) > 1:
            return self.leaves[j]
        weight, bias = self.leaves[0]
        if self.inverse is None:
            return _block(weight, bias, j, size)
        positions = self.inverse[j * size : (j + 1) * size]
        return th.index_select(weight, 0, positions), th.index_select(bias, 0, positions)


RepresentativesLike = th.Tensor | np.ndarray | int | list[int] | RepresentativeGroups | None

#: critic layouts of :class:`MultiRepresentativePolicy` (``"auto"`` resolves to one of the other two)
CRITICS = ("auto", "per_representative", "conditioned")
#: ``critic="auto"`` keeps the paper's ``k x n_agents`` head up to this many outputs and conditions the
#: critic on the representative above it (see :func:`resolve_critic`)
AUTO_CRITIC_MAX_OUTPUTS = 10_000


class GroupedLinear(th.autograd.Function):
    """``out[b] = latent[b] @ weight[j_b].T + bias[j_b]`` for samples sorted by group ``j_b``.

    One ``addmm`` per non-empty group forward, and per group two products and a sum backward,
    written straight into the gradients (no autograd node per group, no stacking of block gradients):
    at k=50 on minibatches of 64 this is several times faster than an autograd graph of per-group
    ``F.linear`` calls.

    Inputs: ``latent`` ``(batch, in_features)``, sorted by group; ``weight`` ``(k, size, in_features)``;
    ``bias`` ``(k, size)``; ``counts``: samples per group, length k (a tuple of ints summing to batch).
    Output ``(batch, size)``.
    """

    @staticmethod
    def forward(
        ctx: Any, latent: th.Tensor, weight: th.Tensor, bias: th.Tensor, counts: tuple[int, ...]
    ) -> th.Tensor:
        ctx.save_for_backward(latent, weight)
        ctx.counts = counts
        out = latent.new_empty(latent.shape[0], weight.shape[1])
        start = 0
        for j, count in enumerate(counts):
            if count:
                rows = slice(start, start + count)
                th.addmm(bias[j], latent[rows], weight[j].T, out=out[rows])
                start += count
        return out

    @staticmethod
    @th.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: th.Tensor) -> tuple[th.Tensor | None, ...]:
        latent, weight = ctx.saved_tensors
        needs_latent, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_latent = th.empty_like(latent) if needs_latent else None
        grad_weight = th.zeros_like(weight) if needs_weight else None
        grad_bias = weight.new_zeros(weight.shape[:2]) if needs_bias else None
        start = 0
        for j, count in enumerate(ctx.counts):
            if not count:
                continue
            rows = slice(start, start + count)
            grad = grad_out[rows]
            if grad_latent is not None:
                th.mm(grad, weight[j], out=grad_latent[rows])
            if grad_weight is not None:
                th.mm(grad.T, latent[rows], out=grad_weight[j])
            if grad_bias is not None:
                th.sum(grad, 0, out=grad_bias[j])
            start += count
        return grad_latent, grad_weight, grad_bias, None


#: a k-block linear layer with at most this many outputs runs as one product and a gather (measured
#: faster up to about 500 outputs with batches of 64, one CPU thread; see ``_per_representative_linear``)
FULL_HEAD_MAX_OUTPUTS = 512
#: ... unless it has at least this many narrow blocks (at most ``PER_SAMPLE_MAX_SIZE`` outputs each, e.g.
#: 50 action heads of 6): then each sample multiplies its own block's rows, gathered
PER_SAMPLE_MIN_K = 16
PER_SAMPLE_MAX_SIZE = 16


def resolve_critic(critic: str, k: int, n_agents: int) -> str:
    """The critic layout ``critic`` stands for: ``"auto"`` becomes ``"per_representative"`` when
    ``k * n_agents <= AUTO_CRITIC_MAX_OUTPUTS`` and ``"conditioned"`` above.

    Above that size the per-representative head (``k x n_agents x latent`` weights: 3.2M at n=1000,
    k=50) costs the optimizer more per minibatch than the rest of a PPO step, and each of its blocks
    learns from 1/k of the data; the conditioned critic (the reference code's) shares one
    ``n_agents``-output head. Measured in ``benchmarks/throughput.py`` (``hc-1000-50`` against
    ``hc-1000-50-perrep``).

    :raises ValueError: for an unknown layout.
    """
    if critic not in CRITICS:
        raise ValueError(f"critic={critic!r}: choose one of {CRITICS}.")
    if critic != "auto":
        return critic
    return "per_representative" if k * n_agents <= AUTO_CRITIC_MAX_OUTPUTS else "conditioned"


class MultiRepresentativePolicy(ActorCriticPolicy):
    """Actor-critic policy with k representatives (action heads) and a per-agent critic.

    Accepts every argument of :class:`~stable_baselines3.common.policies.ActorCriticPolicy`, plus:

    :param k: number of representatives (the policy budget), ``k >= 1``.
    :param n_agents: number of agents, ``n_agents >= 1``; the critic outputs ``(batch, n_agents)``.
    :param critic: ``"auto"`` (default): ``"per_representative"`` up to ``k x n_agents = 10,000``
        critic outputs, ``"conditioned"`` above (:func:`resolve_critic`; the policy stores the resolved
        layout). ``"per_representative"`` (the paper's section 3.2): a critic head with
        ``k x n_agents`` outputs on a shared trunk. ``"conditioned"`` (the paper's reference code): one
        head with ``n_agents`` outputs, the representative entering as a learned vector added to the
        first critic layer's pre-activation (the same as a one-hot input). Its critic has ``k`` times
        fewer head parameters, which is what the optimizer pays for at large ``k x n_agents``.
    :param critic_agents: train the critic on this many agents per minibatch, drawn afresh for each
        minibatch (an approximation, off by default: ``None`` trains on all ``n_agents``). The value loss
        is then the mean over a uniform sample of ``m`` agents, an unbiased estimate of the full one, and
        the critic head's forward and backward cost ``m / n_agents`` of the full head's. Rollouts and GAE
        still use every agent's value, so the marginal advantages stay exact for the critic at hand.
        ``RMDPPPO`` draws the agents (see :meth:`evaluate_actions`); a value ``>= n_agents`` is ``None``.
        The head's sampled rows then step by a lazy Adam of their own (:meth:`step_sampled_critic`, the
        optimizer's lr, betas and eps; moments kept as buffers of the policy): the other rows, which have
        no gradient, stay as they are, and the optimizer costs ``m`` rows per minibatch, not ``n_agents``.
    """

    #: the features extractor unless ``features_extractor_class`` says otherwise
    default_features_extractor: ClassVar[type[BaseFeaturesExtractor]] = FlattenExtractor
    #: the stock SB3 policy a representative exports as (:func:`sb3_rmdp.export.export_representative`)
    stock_policy: ClassVar[type[BasePolicy]] = ActorCriticPolicy
    action_net: nn.Linear
    value_net: nn.Linear
    #: the resolved critic layout, ``"per_representative"`` or ``"conditioned"``
    critic_layout: str
    #: a sampled critic's lazy Adam state (buffers, with ``critic_agents`` only): the moments of each head
    #: row (its weights and bias) and the number of steps
    critic_rows_exp_avg: th.Tensor
    critic_rows_exp_avg_sq: th.Tensor
    critic_rows_steps: th.Tensor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        k: int = 1,
        n_agents: int = 1,
        critic: str = "auto",
        critic_agents: int | None = None,
        **kwargs: Any,
    ):
        if int(k) < 1:
            raise ValueError(f"k={k}: a policy needs at least one representative (k >= 1).")
        if int(n_agents) < 1:
            raise ValueError(f"n_agents={n_agents}: an r-MDP needs at least one agent.")
        if kwargs.get("use_sde", False):
            raise ValueError(
                "use_sde=True is not supported by MultiRepresentativePolicy (gSDE keeps one exploration "
                "matrix, not one per representative): pass use_sde=False."
            )
        # Read by `_build`, which the parent constructor calls.
        self.k = int(k)
        self.n_agents = int(n_agents)
        self.critic_layout = resolve_critic(critic, self.k, self.n_agents)
        if critic_agents is not None and (isinstance(critic_agents, bool) or int(critic_agents) < 1):
            raise ValueError(
                f"critic_agents={critic_agents!r}: train the critic on at least one agent per minibatch, "
                "or pass None to train it on all of them."
            )
        #: agents the critic trains on per minibatch (``None``: all of them)
        self.critic_agents = (
            None if critic_agents is None or int(critic_agents) >= self.n_agents else int(critic_agents)
        )
        if len(args) < 9:  # features_extractor_class is the 9th of ActorCriticPolicy's after lr_schedule
            kwargs.setdefault("features_extractor_class", self.default_features_extractor)
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    @property
    def critic(self) -> str:
        """The resolved critic layout, :attr:`critic_layout` (kept for code written before it)."""
        return self.critic_layout

    @critic.setter
    def critic(self, layout: str) -> None:
        self.critic_layout = layout

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(k=self.k, n_agents=self.n_agents, critic=self.critic_layout)
        if self.critic_agents is not None:
            data["critic_agents"] = self.critic_agents
        return data

    # ------------------------------------------------------------------ construction
    def _action_head_size(self) -> int:
        """Outputs of one representative's action head (mean actions or logits)."""
        dist = self.action_dist
        if isinstance(dist, (DiagGaussianDistribution, CategoricalDistribution)):
            return int(dist.action_dim)
        if isinstance(dist, MultiCategoricalDistribution):
            return int(sum(dist.action_dims))
        if isinstance(dist, BernoulliDistribution):
            return int(dist.action_dims)
        raise ValueError(
            f"Unsupported action distribution {type(dist).__name__}: MultiRepresentativePolicy supports "
            "Box, Discrete, MultiDiscrete and MultiBinary action spaces."
        )

    def _build(self, lr_schedule: Schedule) -> None:
        """Create the trunk, the k action heads, the ``k x n_agents`` critic and the optimizer.

        Mirrors :meth:`ActorCriticPolicy._build` module for module, so that with ``k = n_agents = 1``
        the parameters are drawn from the random stream in the same order with the same shapes.
        """
        self._build_mlp_extractor()
        latent_dim_pi = self.mlp_extractor.latent_dim_pi
        self.action_head_size = self._action_head_size()
        self.action_net = nn.Linear(latent_dim_pi, self.k * self.action_head_size)
        if isinstance(self.action_dist, DiagGaussianDistribution):
            self.log_std = nn.Parameter(
                th.ones(self.k, self.action_head_size) * self.log_std_init, requires_grad=True
            )
        if self.critic_layout == "conditioned":
            first = self._first_critic_layer()
            self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, self.n_agents)
            #: ``(k, first critic layer's width)``: representative j's vector, added before the activation
            self.critic_embedding = nn.Parameter(th.zeros(self.k, first.out_features))
        else:
            self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, self.k * self.n_agents)
        if self.critic_agents is not None:
            # the lazy Adam moments of the sampled critic rows (see step_sampled_critic)
            # the lazy Adam moments of the sampled critic rows (see step_sampled_critic): each row's weights
            # and its bias as one row of latent_dim + 1 entries
            rows, width = self.value_net.weight.shape
            self.register_buffer("critic_rows_exp_avg", th.zeros(rows, width + 1))
            self.register_buffer("critic_rows_exp_avg_sq", th.zeros(rows, width + 1))
            self.register_buffer("critic_rows_steps", th.zeros((), dtype=th.long))
        self._sampled_rows: tuple[th.Tensor, th.Tensor, th.Tensor] | None = None
        self._pinned_critic: PinnedCriticRows | None = None
        if self.ortho_init:
            module_gains = {
                self.features_extractor: np.sqrt(2),
                self.mlp_extractor: np.sqrt(2),
                self.action_net: 0.01,
                self.value_net: 1,
            }
            if not self.share_features_extractor:
                del module_gains[self.features_extractor]
                module_gains[self.pi_features_extractor] = np.sqrt(2)
                module_gains[self.vf_features_extractor] = np.sqrt(2)
            for module, gain in module_gains.items():
                module.apply(partial(self.init_weights, gain=gain))
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self._optimizer_kwargs()
        )

    def _optimizer_kwargs(self) -> dict[str, Any]:
        """``optimizer_kwargs``, with PyTorch's fused Adam where the r-MDP heads make Adam the bottleneck.

        The critic head has ``k x n_agents`` rows: at n=1000, k=5 it holds 30x the parameters of the
        rest of the network, and the default (for-loop) Adam touches each of them eight times per step;
        the fused kernel reads and writes them once (3x faster, measured in ``benchmarks/profile_phases.py``).
        With ``k = n_agents = 1`` SB3's own optimizer is kept, so ``RMDPPPO`` stays bitwise SB3's PPO. A
        user's ``fused`` or ``foreach`` in ``optimizer_kwargs`` is always respected. (A model saved before
        this choice resumes with its saved, unfused optimizer settings: same numbers, slower.)
        """
        kwargs = dict(self.optimizer_kwargs)
        plain = self.k == 1 and self.n_agents == 1
        if self.optimizer_class in (th.optim.Adam, th.optim.AdamW) and not plain:
            if "fused" not in kwargs and "foreach" not in kwargs:
                kwargs["fused"] = True
        return kwargs

    def _first_critic_layer(self) -> nn.Linear:
        layers = self.mlp_extractor.value_net
        if not isinstance(layers, nn.Sequential) or len(layers) == 0 or not isinstance(layers[0], nn.Linear):
            raise ValueError(
                'critic="conditioned" needs at least one critic layer (net_arch with a non-empty "vf"), '
                f"got {layers!r}; or use critic='per_representative'."
            )
        return layers[0]

    def _conditioned_latent_vf(
        self,
        vf_features: th.Tensor,
        groups: int | RepresentativeGroups,
        gathered: dict[str, th.Tensor] | None = None,
    ) -> th.Tensor:
        """The critic trunk with each sample's representative vector added to its first pre-activation
        (``gathered``: a rollout's cache of those vectors, see :meth:`_per_representative_linear`)."""
        layers = self.mlp_extractor.value_net
        if isinstance(groups, int):
            embedding = self.critic_embedding[groups]
        elif gathered is not None and "critic_embedding" in gathered:
            embedding = gathered["critic_embedding"]
        else:
            embedding = th.index_select(self.critic_embedding, 0, groups.index)
            if gathered is not None:
                gathered["critic_embedding"] = embedding
        latent = layers[0](vf_features) + embedding
        for layer in list(layers)[1:]:  # (slicing an nn.Sequential builds a new module on every call)
            latent = layer(latent)
        return latent

    # ------------------------------------------------------------------ representatives
    def as_representatives(
        self, representatives: RepresentativesLike, batch_size: int
    ) -> int | RepresentativeGroups:
        """Resolve ``representatives`` for a batch: an int (one representative for all) or groups.

        A ``long`` tensor ``(batch_size,)`` is trusted as it is (the algorithm's own path); anything
        else is checked.

        :param representatives: an int, a sequence or tensor ``(batch_size,)``, or ``None`` (only when
            ``k == 1``).
        :raises ValueError: on a missing index with ``k > 1``, a wrong length or an index outside ``[0, k)``.
        """
        if isinstance(representatives, RepresentativeGroups):
            return representatives if representatives.single is None else representatives.single
        if isinstance(representatives, th.Tensor) and representatives.dtype == th.long:
            if representatives.shape != (batch_size,):
                raise ValueError(
                    _length_error(representatives.shape[0] if representatives.ndim else 1, batch_size)
                )
            return 0 if self.k == 1 else RepresentativeGroups.of(representatives, self.k)
        if representatives is None:
            if self.k > 1:
                raise ValueError(
                    f"This policy has k={self.k} representatives: say which one acts, e.g. "
                    "`model.predict(obs, representative=j)` with 0 <= j < k."
                )
            return 0
        index = np.asarray(
            representatives.cpu() if isinstance(representatives, th.Tensor) else representatives
        )
        if index.size > 0 and (
            not np.issubdtype(index.dtype, np.integer) or index.min() < 0 or index.max() >= self.k
        ):
            raise ValueError(
                f"Representative indices must be integers in [0, {self.k}); got {index.ravel()[:8]}."
            )
        if index.ndim == 0:
            return int(index)
        if index.shape != (batch_size,):
            raise ValueError(_length_error(index.shape[0], batch_size))
        if batch_size > 0 and np.all(index == index[0]):
            return int(index[0])
        return RepresentativeGroups.of(th.as_tensor(index, dtype=th.long, device=self.device), self.k)

    def _per_representative_linear(
        self,
        layer: nn.Linear,
        latent: th.Tensor,
        groups: int | RepresentativeGroups,
        size: int,
        gathered: dict[str, th.Tensor] | None = None,
    ) -> th.Tensor:
        """Apply to each sample only its representative's row block of a ``k``-block linear layer.

        Small layers (``k * size <= FULL_HEAD_MAX_OUTPUTS``, e.g. the action heads) run as one matrix
        product over all k blocks and a gather: three autograd nodes (at k=50, 10x faster than a
        product per representative for a 6-dim action head). With many narrow blocks (``k >=
        PER_SAMPLE_MIN_K``, ``size <= PER_SAMPLE_MAX_SIZE``) the product over all k blocks is mostly
        waste: each sample then gathers its block's ``(size, in_features)`` rows and takes ``size`` dot
        products (forward and backward 1.4x faster at k=50, size 6, batch 64; the sums run in another
        order than the product's, so results differ from it in rounding). Large layers (the
        ``k x n_agents`` critic) run one product per representative present in the batch
        (:class:`GroupedLinear`), so no sample evaluates the other representatives' rows, and the
        backward pass writes each block's gradient in place.

        :param layer: linear layer with ``k * size`` outputs.
        :param latent: ``(batch, in_features)``.
        :param groups: one representative (int) for the whole batch, or the batch's groups.
        :param size: outputs per representative.
        :param gathered: a cache of the rows each sample gathers, for a caller whose batches all have these
            groups and whose parameters do not change meanwhile (a rollout's steps, no gradient): filled on
            the first call, read on the others; the same arithmetic, bit for bit.
        :return: ``(batch, size)``.
        """
        if self.k == 1:
            return layer(latent)
        if isinstance(groups, int):  # one slice of each: the fewest autograd nodes
            return F.linear(latent, *_block(layer.weight, layer.bias, groups, size))
        weight = layer.weight.view(self.k, size, -1)
        bias = layer.bias.view(self.k, size)
        small = self.k * size <= FULL_HEAD_MAX_OUTPUTS
        if small and self.k >= PER_SAMPLE_MIN_K and size <= PER_SAMPLE_MAX_SIZE:
            if gathered is not None and "rows" in gathered:
                rows, bias_rows = gathered["rows"], gathered["bias"]
            else:
                rows = th.index_select(weight, 0, groups.index)  # (batch, size, in_features)
                bias_rows = th.index_select(bias, 0, groups.index)
                if gathered is not None:
                    gathered.update(rows=rows, bias=bias_rows)
            return (rows * latent.unsqueeze(1)).sum(dim=2) + bias_rows
        if small:
            every = layer(latent).view(-1, self.k, size)  # (batch, k, size)
            return th.gather(every, 1, groups.index.view(-1, 1, 1).expand(-1, 1, size)).squeeze(1)
        return _grouped_linear(latent, weight, bias, groups)

    # ------------------------------------------------------------------ SB3 API with representatives
    def _latents(
        self,
        obs: PyTorchObs,
        representatives: RepresentativesLike,
        gathered: dict[str, th.Tensor] | None = None,
    ) -> tuple[th.Tensor, th.Tensor, int | RepresentativeGroups]:
        """Actor and critic latents ``(batch, latent_dim)`` and the batch's resolved representatives
        (``gathered``: a rollout's cache of the rows the samples gather, see
        :meth:`_per_representative_linear`)."""
        features = self.extract_features(obs)
        if isinstance(features, tuple):  # separate actor and critic features extractors
            pi_features, vf_features = features
        else:
            pi_features = vf_features = features
        latent_pi = self.mlp_extractor.forward_actor(pi_features)
        groups = self.as_representatives(representatives, latent_pi.shape[0])
        if self.critic_layout == "conditioned":
            return latent_pi, self._conditioned_latent_vf(vf_features, groups, gathered), groups
        return latent_pi, self.mlp_extractor.forward_critic(vf_features), groups

    def _get_action_dist_from_latent(
        self,
        latent_pi: th.Tensor,
        representatives: RepresentativesLike = None,
        gathered: dict[str, th.Tensor] | None = None,
    ) -> Distribution:
        """Action distribution of each sample's representative.

        :param latent_pi: ``(batch, latent_dim_pi)``.
        :param representatives: ``(batch,)`` indices (see :meth:`as_representatives`).
        :param gathered: a cache of the head rows and log-stds the samples gather, for a rollout's steps
            (see :meth:`_per_representative_linear`).
        """
        index = self.as_representatives(representatives, latent_pi.shape[0])
        head = self._per_representative_linear(
            self.action_net, latent_pi, index, self.action_head_size, gathered
        )
        if isinstance(self.action_dist, DiagGaussianDistribution):
            if self.k == 1:
                log_std = self.log_std[0]  # SB3's broadcast of one row: bitwise SB3's gradients
            elif isinstance(index, int):
                log_std = self.log_std[index]
            elif gathered is not None and "log_std" in gathered:
                log_std = gathered["log_std"]
            else:
                # index_select: its backward is an index_add, not a (slow) accumulating index_put
                log_std = th.index_select(self.log_std, 0, index.index)  # (batch, action_dim)
                if gathered is not None:
                    gathered["log_std"] = log_std
            return self.action_dist.proba_distribution(head, log_std)
        return self.action_dist.proba_distribution(action_logits=head)

    def _values_from_latent(
        self, latent_vf: th.Tensor, representatives: RepresentativesLike, agents: th.Tensor | None = None
    ) -> th.Tensor:
        """Values ``(batch, n_agents)``, or ``(batch, m)`` of the ``agents`` only (a sampled critic: only
        their rows of the head are multiplied): ``(m,)`` the same agents for every sample, or ``(k, m)``
        row j the agents of representative j's samples."""
        if agents is None:
            if self.critic_layout == "conditioned":
                return self.value_net(latent_vf)
            groups = self.as_representatives(representatives, latent_vf.shape[0])
            return self._per_representative_linear(self.value_net, latent_vf, groups, self.n_agents)
        size = agents.shape[-1]
        # k blocks of m rows (representative j's block: its agents' rows), or one head over the agents
        blocks = self._critic_rows_in_blocks(agents)
        index = self.as_representatives(representatives, latent_vf.shape[0]) if blocks else None
        j = index if isinstance(index, int) else None  # one representative's block only
        weight: th.Tensor = self.value_net.weight
        bias: th.Tensor = self.value_net.bias
        pinned = self._pinned_critic
        if pinned is not None and agents is pinned.agents and th.is_grad_enabled():
            # the update's working copy of these rows
            weight, bias = pinned.of_representative(j, size) if j is not None else pinned.of_agents()
        elif self.critic_agents is not None and th.is_grad_enabled():
            # the rows as leaves of their own: no dense (n_agents, latent) gradient, a lazy Adam step (of
            # a single representative's rows only, for a minibatch of one representative)
            rows, inverse = (
                (self._representative_critic_rows(agents, j), None)
                if j is not None
                else self._distinct_critic_rows(agents)
            )
            weight = weight.detach()[rows].requires_grad_(True)
            bias = bias.detach()[rows].requires_grad_(True)
            self._sampled_rows = (rows, weight, bias)
            if inverse is not None:
                weight, bias = th.index_select(weight, 0, inverse), th.index_select(bias, 0, inverse)
        else:
            rows = self._representative_critic_rows(agents, j) if j is not None else self.critic_rows(agents)
            weight, bias = th.index_select(weight, 0, rows), th.index_select(bias, 0, rows)
        if j is not None or not blocks:
            return F.linear(latent_vf, weight, bias)
        assert isinstance(index, RepresentativeGroups)
        if self.k * size <= FULL_HEAD_MAX_OUTPUTS:  # as the action heads: one product and a gather
            every = F.linear(latent_vf, weight, bias).view(-1, self.k, size)
            return th.gather(every, 1, index.index.view(-1, 1, 1).expand(-1, 1, size)).squeeze(1)
        return _grouped_linear(latent_vf, weight.view(self.k, size, -1), bias.view(self.k, size), index)

    @property
    def _one_critic_head(self) -> bool:
        """Whether the critic head is one for all representatives (rows per agent, not per pair)."""
        return self.critic_layout == "conditioned" or self.k == 1

    def _critic_rows_in_blocks(self, agents: th.Tensor) -> bool:
        """Whether :meth:`critic_rows` of ``agents`` lie in k blocks of ``m`` rows, representative j's
        block its own (a per-representative head's, or any head's for ``(k, m)`` agents)."""
        return agents.dim() == 2 or not self._one_critic_head

    def _representative_critic_rows(self, agents: th.Tensor, j: int) -> th.Tensor:
        """Representative ``j``'s block of :meth:`critic_rows` of ``agents`` (k blocks of m rows)."""
        own = agents if agents.dim() == 1 else agents[j]
        return own if self._one_critic_head else own + j * self.n_agents

    def critic_rows(self, agents: th.Tensor) -> th.Tensor:
        """The critic head's rows of ``agents``. For ``(m,)`` agents: ``(m,)`` for a conditioned head (or
        k = 1), else ``(k * m,)`` block by block (agent i of representative j's block is row
        ``j * n_agents + i``). For ``(k, m)`` agents (row j: representative j's): ``(k * m,)``, block j
        the rows of ``agents[j]`` (a conditioned head's rows may repeat across blocks)."""
        if self._one_critic_head:
            return agents.flatten()  # (a no-op for (m,) agents)
        blocks = th.arange(self.k, device=agents.device).unsqueeze(1) * self.n_agents
        return (blocks + agents).flatten()

    def _distinct_critic_rows(self, agents: th.Tensor) -> tuple[th.Tensor, th.Tensor | None]:
        """:meth:`critic_rows` of ``agents`` without repeats, and where each of them lies among those
        (``None``: none repeats). Only a conditioned head's rows of ``(k, m)`` agents can repeat (an agent
        tracked for two representatives): one row then, one gradient sum, one Adam step."""
        rows = self.critic_rows(agents)
        if agents.dim() == 1 or not self._one_critic_head:
            return rows, None
        distinct, inverse = th.unique(rows, return_inverse=True)
        if len(distinct) == len(rows):
            return rows, None
        return distinct, inverse

    def can_pin_critic(self) -> bool:
        """Whether :meth:`pinned_critic` applies: a sampled critic (its lazy Adam moments) and an Adam or
        AdamW policy optimizer without amsgrad, which then steps the pinned rows."""
        group = self.optimizer.param_groups[0]
        return (
            self.critic_agents is not None
            and type(self.optimizer) in (th.optim.Adam, th.optim.AdamW)
            and not group.get("amsgrad", False)
        )

    @contextmanager
    def pinned_critic(self, agents: th.Tensor) -> Iterator[None]:
        """Train the critic rows of ``agents`` (``(m,)`` or ``(k, m)``, as :meth:`critic_rows`) as one dense
        working copy for a whole update.

        For an update whose every minibatch trains the critic on the same agents (the tracked agents of an
        :class:`~sb3_rmdp.aggregate.RMDPAggregateRolloutBuffer`), the rows are gathered once with their
        lazy Adam moments and step count, joined to the policy optimizer as a param group of their own
        (no weight decay, as the lazy Adam), stepped with the rest of the network, and written back when
        the block ends: the lazy Adam's arithmetic (:meth:`step_sampled_critic`), up to rounding, without
        a gather, a scatter and a dozen small kernels per minibatch. Inside the block,
        :meth:`evaluate_actions` with ``agents`` (this very tensor) reads the working copy.

        :raises ValueError: when :meth:`can_pin_critic` is false.
        """
        if not self.can_pin_critic():
            raise ValueError(
                "pinned_critic needs a sampled critic (critic_agents) and an Adam or AdamW optimizer "
                "without amsgrad."
            )
        if self._pinned_critic is not None:
            raise RuntimeError("pinned_critic blocks do not nest: the critic rows are pinned already.")
        rows, inverse = self._distinct_critic_rows(agents)
        # rows in k blocks (a per-representative head's, or (k, m) agents' without repeats) as k pairs of
        # leaves, other rows as one
        n_blocks = self.k if inverse is None and self._critic_rows_in_blocks(agents) else 1
        with th.no_grad():
            weights = self.value_net.weight.index_select(0, rows).chunk(n_blocks)
            biases = self.value_net.bias.index_select(0, rows).chunk(n_blocks)
            exp_avg = self.critic_rows_exp_avg.index_select(0, rows).chunk(n_blocks)
            exp_avg_sq = self.critic_rows_exp_avg_sq.index_select(0, rows).chunk(n_blocks)
        optimizer = self.optimizer
        fused = bool(optimizer.param_groups[0].get("fused")) or bool(
            optimizer.param_groups[0].get("capturable")
        )
        step = self.critic_rows_steps.to(
            device=self.value_net.weight.device if fused else th.device("cpu"), dtype=th.float32
        )
        leaves = []
        columns_of: tuple[slice | int, ...] = (slice(None, -1), -1)  # a moment row's weights, its bias
        for b in range(n_blocks):
            pair = (weights[b].clone().requires_grad_(True), biases[b].clone().requires_grad_(True))
            for parameter, columns in zip(pair, columns_of):
                optimizer.state[parameter] = {
                    "step": step.clone(),
                    "exp_avg": exp_avg[b][:, columns].contiguous(),
                    "exp_avg_sq": exp_avg_sq[b][:, columns].contiguous(),
                }
            leaves.append(pair)
        pinned = PinnedCriticRows(agents, rows, tuple(leaves), inverse)
        parameters = pinned.parameters()
        first = optimizer.param_groups[0]
        # in the first group when it decays nothing (one fused kernel for all), else in a group of their own
        joins = len(optimizer.param_groups) == 1 and not first.get("weight_decay", 0.0)
        if joins:
            first["params"].extend(parameters)
        else:
            optimizer.add_param_group({"params": parameters, "lr": first["lr"], "weight_decay": 0.0})
        self._pinned_critic = pinned
        try:
            yield
        finally:
            self._pinned_critic = None
            if joins:
                del first["params"][-len(parameters) :]
            else:
                optimizer.param_groups.pop()
            states = [optimizer.state.pop(parameter) for parameter in parameters]
            with th.no_grad():
                self.value_net.weight.index_copy_(0, rows, th.cat([w for w, _ in leaves]))
                self.value_net.bias.index_copy_(0, rows, th.cat([c for _, c in leaves]))
                for buffer, key in (
                    (self.critic_rows_exp_avg, "exp_avg"),
                    (self.critic_rows_exp_avg_sq, "exp_avg_sq"),
                ):
                    moments = [
                        th.cat((states[2 * b][key], states[2 * b + 1][key].unsqueeze(1)), 1)
                        for b in range(n_blocks)
                    ]
                    buffer.index_copy_(0, rows, th.cat(moments))
                # one step count for all rows (a lazy Adam's): the most any block took
                self.critic_rows_steps.fill_(max(int(states[2 * b]["step"].item()) for b in range(n_blocks)))

    def sampled_critic_parameters(self) -> list[th.Tensor]:
        """The sampled critic rows of the last training forward pass (leaves whose gradients count in the
        gradient clipping), or ``[]``."""
        if self._pinned_critic is not None:
            return self._pinned_critic.parameters()
        return [] if self._sampled_rows is None else list(self._sampled_rows[1:])

    @th.no_grad()
    def step_sampled_critic(self) -> None:
        """Adam on the critic rows of the last training forward pass only (a lazy Adam: rows without a
        gradient keep their values and moments), with the policy optimizer's lr, betas and eps."""
        if self._pinned_critic is not None:  # the policy optimizer steps the pinned rows
            return
        if self._sampled_rows is None:
            return
        rows, weight, bias = self._sampled_rows
        self._sampled_rows = None
        if weight.grad is None or bias.grad is None:
            return
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group.get("betas", (0.9, 0.999))
        lr, eps = float(group["lr"]), float(group.get("eps", 1e-8))
        self.critic_rows_steps += 1
        step = int(self.critic_rows_steps)
        correction1, correction2 = 1.0 - beta1**step, 1.0 - beta2**step
        grad = th.cat((weight.grad, bias.grad.unsqueeze(1)), dim=1)  # (rows, latent_dim + 1)
        m = self.critic_rows_exp_avg.index_select(0, rows).lerp_(grad, 1.0 - beta1)
        v = (
            self.critic_rows_exp_avg_sq.index_select(0, rows)
            .mul_(beta2)
            .addcmul_(grad, grad, value=1.0 - beta2)
        )
        self.critic_rows_exp_avg.index_copy_(0, rows, m)
        self.critic_rows_exp_avg_sq.index_copy_(0, rows, v)
        update = m.div_(v.sqrt_().div_(correction2**0.5).add_(eps)).mul_(-lr / correction1)
        self.value_net.weight.data.index_add_(0, rows, update[:, :-1])
        self.value_net.bias.data.index_add_(0, rows, update[:, -1])

    def forward(
        self, obs: th.Tensor, deterministic: bool = False, representatives: RepresentativesLike = None
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Act, evaluate and score in one pass.

        :param obs: ``(batch, *obs_shape)``.
        :param representatives: ``(batch,)`` the representative acting for each observation.
        :return: actions ``(batch, *action_shape)``, values ``(batch, n_agents)``,
            log-probabilities ``(batch,)``.
        """
        latent_pi, latent_vf, groups = self._latents(obs, representatives)
        values = self._values_from_latent(latent_vf, groups)
        distribution = self._get_action_dist_from_latent(latent_pi, groups)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, values, log_prob

    def evaluate_actions(
        self,
        obs: PyTorchObs,
        actions: th.Tensor,
        representatives: RepresentativesLike = None,
        agents: th.Tensor | None = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """Values ``(batch, n_agents)``, log-likelihood and entropy ``(batch,)`` of ``actions``.

        :param agents: ``(m,)`` long, the agents whose values to return (a sampled critic, see
            ``critic_agents``), or ``(k, m)``, row j those of representative j's samples: values are then
            ``(batch, m)``; ``None``: every agent.
        """
        latent_pi, latent_vf, groups = self._latents(obs, representatives)
        distribution = self._get_action_dist_from_latent(latent_pi, groups)
        log_prob = distribution.log_prob(actions)
        values = self._values_from_latent(latent_vf, groups, agents)
        return values, log_prob, distribution.entropy()

    def get_distribution(self, obs: PyTorchObs, representatives: RepresentativesLike = None) -> Distribution:
        features = super(ActorCriticPolicy, self).extract_features(obs, self.pi_features_extractor)
        latent_pi = self.mlp_extractor.forward_actor(features)
        return self._get_action_dist_from_latent(latent_pi, representatives)

    def predict_values(self, obs: PyTorchObs, representatives: RepresentativesLike = None) -> th.Tensor:
        """Per-agent values ``(batch, n_agents)`` under each sample's representative."""
        features = super(ActorCriticPolicy, self).extract_features(obs, self.vf_features_extractor)
        if self.critic_layout == "conditioned":
            groups = self.as_representatives(representatives, features.shape[0])
            return self._values_from_latent(self._conditioned_latent_vf(features, groups), groups)
        latent_vf = self.mlp_extractor.forward_critic(features)
        return self._values_from_latent(latent_vf, representatives)

    def _predict(
        self,
        observation: PyTorchObs,
        deterministic: bool = False,
        representatives: RepresentativesLike = None,
    ) -> th.Tensor:
        return self.get_distribution(observation, representatives).get_actions(deterministic=deterministic)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        representative: RepresentativesLike = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict`` for one representative (an int) or one per observation (``(n_envs,)``)."""
        return self._predict_numpy(observation, state, deterministic, representative)

    def _predict_numpy(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: Any,
        deterministic: bool,
        representative: RepresentativesLike,
        **extras: Any,
    ) -> tuple[np.ndarray, Any]:
        """``predict``'s body: ``extras`` (e.g. action masks) go to :meth:`_predict`."""
        self.set_training_mode(False)
        obs_tensor, vectorized_env = self.obs_to_tensor(observation)
        batch_size = (
            next(iter(obs_tensor.values())).shape[0] if isinstance(obs_tensor, dict) else obs_tensor.shape[0]
        )
        index = self.as_representatives(representative, batch_size)
        with th.no_grad():
            actions_tensor = self._predict(
                obs_tensor, deterministic=deterministic, representatives=index, **extras
            )
        actions = actions_tensor.cpu().numpy().reshape((-1, *self.action_space.shape))  # type: ignore[misc, arg-type]
        if isinstance(self.action_space, spaces.Box):
            actions = np.clip(actions, self.action_space.low, self.action_space.high)
        if not vectorized_env:
            actions = actions.squeeze(axis=0)
        return actions, state


class MultiRepresentativeCnnPolicy(MultiRepresentativePolicy):
    """:class:`MultiRepresentativePolicy` on images: SB3's ``NatureCNN`` features extractor, as
    :class:`~stable_baselines3.common.policies.ActorCriticCnnPolicy` (the ``"CnnPolicy"`` alias).

    Observations are ``uint8`` images in ``[0, 255]``, channel-first ``(C, H, W)``; SB3 transposes a
    channel-last env (``VecTransposeImage``) on its own.
    """

    default_features_extractor = NatureCNN
    stock_policy = ActorCriticCnnPolicy


class MultiRepresentativeMultiInputPolicy(MultiRepresentativePolicy):
    """:class:`MultiRepresentativePolicy` on ``Dict`` observations: SB3's ``CombinedExtractor`` (a CNN per
    image key, a flatten per vector key, concatenated), as
    :class:`~stable_baselines3.common.policies.MultiInputActorCriticPolicy` (the ``"MultiInputPolicy"``
    alias)."""

    default_features_extractor = CombinedExtractor
    stock_policy = MultiInputActorCriticPolicy


def check_policy_fits(
    policy_class: type[MultiRepresentativePolicy],
    observation_space: spaces.Space,
    policy_kwargs: dict[str, Any],
    aliases: dict[str, type[BasePolicy]],
) -> None:
    """Fail before building anything when the policy's features extractor cannot read the observations.

    :param aliases: the algorithm's ``policy_aliases`` (named in the errors).
    :raises ValueError: for a ``Dict`` space with an extractor of arrays, an array space with
        ``CombinedExtractor``, or ``NatureCNN`` on observations that are not images, naming the alias
        (or the keyword argument) to use.
    """
    by_extractor = {
        cls.default_features_extractor: alias
        for alias, cls in aliases.items()
        if isinstance(cls, type) and issubclass(cls, MultiRepresentativePolicy)
    }
    extractor = policy_kwargs.get("features_extractor_class", policy_class.default_features_extractor)
    dict_alias = by_extractor.get(CombinedExtractor, "MultiInputPolicy")
    plain_alias = by_extractor.get(FlattenExtractor, "MlpPolicy")
    image_alias = by_extractor.get(NatureCNN, "CnnPolicy")
    described = f"{policy_class.__name__} (features extractor {extractor.__name__})"
    if isinstance(observation_space, spaces.Dict):
        if extractor in (FlattenExtractor, NatureCNN):
            raise ValueError(
                f"The observations are a Dict space (keys {list(observation_space.spaces)}), which "
                f"{described} cannot read: pass the policy {dict_alias!r} (SB3's CombinedExtractor, one "
                "extractor per key), or a features_extractor_class that takes a dict of tensors."
            )
        return
    if extractor is CombinedExtractor:
        raise ValueError(
            f"{described} reads Dict observations, but these are {observation_space}: pass the policy "
            f"{plain_alias!r} (or {image_alias!r} for images)."
        )
    if extractor is NatureCNN:
        normalized = bool(policy_kwargs.get("features_extractor_kwargs", {}).get("normalized_image", False))
        if not (isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 3):
            raise ValueError(
                f"{described} reads images, a Box of shape (C, H, W), but these observations are "
                f"{observation_space}: pass the policy {plain_alias!r} for vectors."
            )
        if not is_image_space(observation_space, normalized_image=normalized):
            raise ValueError(
                f"{described} reads uint8 images in [0, 255], but these are {observation_space}: for float "
                "images already in [0, 1] pass policy_kwargs=dict(normalize_images=False, "
                "features_extractor_kwargs=dict(normalized_image=True)); otherwise make the env return uint8 "
                "images."
            )


def check_image_layout(observation_space: spaces.Space) -> None:
    """Fail on an image whose channel axis is neither first nor last (SB3 would read it wrongly).

    SB3 takes the smallest axis of an image for its channels and transposes a channel-last image
    (``VecTransposeImage``); an image whose smallest axis is the middle one is neither layout.

    :raises ValueError: naming the axes and the wrapper that fixes them.
    """
    subspaces = (
        observation_space.spaces if isinstance(observation_space, spaces.Dict) else {"": observation_space}
    )
    for key, space in subspaces.items():
        if is_image_space(space) and int(np.argmin(space.shape or ())) == 1:
            where = f"The image observations{f' under key {key!r}' if key else ''}"
            raise ValueError(
                f"{where} have shape {space.shape}: their smallest axis, taken for the channels, is the "
                "middle one, so they are neither channel-first (C, H, W) nor channel-last (H, W, C). "
                "Transpose them in the env (e.g. gymnasium.wrappers.TransformObservation with "
                "np.transpose, or your own ObservationWrapper) to (C, H, W) or (H, W, C); SB3 turns "
                "(H, W, C) into (C, H, W) itself (VecTransposeImage)."
            )


def _block(weight: th.Tensor, bias: th.Tensor, j: int, size: int) -> tuple[th.Tensor, th.Tensor]:
    """Representative ``j``'s rows ``(size, in_features)`` and ``(size,)`` of a k-block linear layer's
    ``weight`` ``(k * size, in_features)`` and ``bias`` ``(k * size,)``: views, one slice each."""
    return weight[j * size : (j + 1) * size], bias[j * size : (j + 1) * size]


def _grouped_linear(
    latent: th.Tensor, weight: th.Tensor, bias: th.Tensor, groups: RepresentativeGroups
) -> th.Tensor:
    """:class:`GroupedLinear` of ``latent`` ``(batch, in)`` with ``weight`` ``(k, size, in)`` and ``bias``
    ``(k, size)``, each sample by its group's block, for samples in any order: ``(batch, size)``."""
    ordered = latent if groups.order is None else latent[groups.order]
    out = GroupedLinear.apply(ordered, weight, bias, tuple(groups.counts))
    if groups.order is None:
        return out
    return th.empty_like(out).index_copy(0, groups.order, out)


def _length_error(got: int, batch_size: int) -> str:
    return (
        f"Got {got} representative indices for a batch of {batch_size} observations: "
        "pass one index per observation, or a single int for all."
    )


MlpPolicy = MultiRepresentativePolicy
CnnPolicy = MultiRepresentativeCnnPolicy
MultiInputPolicy = MultiRepresentativeMultiInputPolicy
