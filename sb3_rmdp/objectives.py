"""Welfare objectives: how the agents' values combine into the social welfare, and its gradient.

The paper maximizes the utilitarian welfare, the mean of the agents' values. Its own next step is
fairness: the egalitarian welfare (the worst-off agent), the Nash welfare (the geometric mean), and
the alpha-fair family between them (``alpha = 0`` utilitarian, ``alpha = 1`` Nash, ``alpha -> inf``
egalitarian). A :class:`WelfareObjective` gives both what is reported, :meth:`~WelfareObjective.value`,
and what an M-step weighs each agent's advantage by, :meth:`~WelfareObjective.agent_weights`: the
gradient of the welfare in the agents' values, scaled so that the utilitarian weights are all 1.

**The E-step needs no objective.** Every objective here is increasing in each agent's value, so
without capacity limits an assignment of each agent to its best representative is best for all of
them at once (the welfare of any other assignment is no larger agent by agent). Only capacity limits
(:mod:`sb3_rmdp.matching`) make the objective matter for the assignment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

OBJECTIVES = ("utilitarian", "egalitarian", "nash", "alpha_fair")
#: the default temperature of the egalitarian objective's smooth minimum, in units of the values
DEFAULT_TEMPERATURE = 1.0
#: where an objective that needs positive values takes its gradient for an agent at 0: at this fraction
#: of the mean value
ZERO_FLOOR = 1e-2


@dataclass(frozen=True)
class WelfareObjective:
    """A welfare function of the agents' values and its scaled gradient.

    :param name: ``"utilitarian"``, ``"egalitarian"``, ``"nash"``, ``"alpha_fair"`` or a user's name.
    :param welfare: ``values (n_agents,) -> float``: the reported welfare.
    :param gradient: ``values (n_agents,) -> (n_agents,)``: ``n_agents * dW / dv_i`` (all ones for the
        utilitarian mean), the weight of agent i's advantage in an M-step.
    :param alpha: the alpha of ``"alpha_fair"``, else ``None``.
    :param temperature: the temperature of ``"egalitarian"``'s smooth minimum, else ``None``.
    :param positive: the objective needs positive values (Nash, alpha-fair with ``alpha >= 1``).
    """

    name: str
    welfare: Callable[[np.ndarray], float]
    gradient: Callable[[np.ndarray], np.ndarray]
    alpha: float | None = None
    temperature: float | None = None
    positive: bool = False

    @property
    def is_utilitarian(self) -> bool:
        """Whether the objective is the paper's mean (its M-step is today's, bit for bit)."""
        return self.name == "utilitarian"

    def value(self, values: np.ndarray) -> float:
        """The welfare of the agents' values ``(n_agents,)`` (an agent at 0 makes the Nash welfare 0).

        :raises ValueError: for an objective that needs positive values when one is negative.
        """
        with np.errstate(divide="ignore"):
            return float(self.welfare(self._checked(values)))

    def agent_weights(self, values: np.ndarray) -> np.ndarray:
        """``(n_agents,)`` non-negative weights ``n_agents * dW / dv_i`` at the values ``(n_agents,)``.

        For an objective that needs positive values, values below :data:`ZERO_FLOOR` times the mean value
        (agents no representative serves yet, with sparse rewards) count as that floor: their gradient is
        large but finite.

        :raises ValueError: for an objective that needs positive values when one is negative.
        """
        values = self._checked(values)
        if self.positive:
            floor = ZERO_FLOOR * max(float(values.mean()), np.finfo(np.float64).tiny)
            values = np.maximum(values, floor)
        return np.asarray(self.gradient(values), dtype=np.float64)

    def _checked(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"values of shape {values.shape}: pass one value per agent, (n_agents,).")
        if not np.all(np.isfinite(values)):
            raise ValueError(
                "the agents' values must be finite (a NaN or inf reached the welfare objective)."
            )
        if self.positive and np.any(values < 0):
            raise ValueError(
                f"the {self.name} welfare needs positive values, got a minimum of {values.min():.4g}: shift "
                "the rewards so that every agent's return is positive (e.g. add a constant per step), or use "
                "welfare='egalitarian' or 'utilitarian'."
            )
        return values


#: what ``welfare=`` takes: a name, ``("alpha_fair", alpha)`` or a :class:`WelfareObjective`
WelfareSpec = str | tuple[str, float] | WelfareObjective


def _egalitarian(temperature: float) -> WelfareObjective:
    def gradient(values: np.ndarray) -> np.ndarray:
        # n * softmax(-v / t): the smooth minimum -t log mean exp(-v / t) differentiated, stable
        logits = -(values - values.min()) / temperature
        weights = np.exp(logits)
        return values.size * weights / weights.sum()

    return WelfareObjective("egalitarian", lambda v: float(v.min()), gradient, temperature=temperature)


def _alpha_fair(alpha: float) -> WelfareObjective:
    if alpha == 1.0:
        return WelfareObjective(
            "alpha_fair", lambda v: float(np.log(v).mean()), lambda v: 1.0 / v, alpha=1.0, positive=True
        )

    def welfare(values: np.ndarray) -> float:
        return float((values ** (1.0 - alpha) / (1.0 - alpha)).mean())

    return WelfareObjective("alpha_fair", welfare, lambda v: v ** (-alpha), alpha=alpha, positive=alpha > 0)


def welfare_objective(
    spec: str | tuple[str, float] | WelfareObjective = "utilitarian",
    temperature: float = DEFAULT_TEMPERATURE,
) -> WelfareObjective:
    """The objective named by ``spec``.

    :param spec: ``"utilitarian"`` (the mean, the paper's), ``"egalitarian"`` (the minimum; its
        gradient is a smooth minimum's, ``temperature`` wide), ``"nash"`` (the geometric mean; its gradient
        is that of the mean log value, ``1 / v_i``), ``("alpha_fair", alpha)`` (the mean of
        ``v^(1 - alpha) / (1 - alpha)``, ``log v`` at ``alpha = 1``; gradient ``v^-alpha``), or a
        :class:`WelfareObjective` of your own (its ``welfare`` and ``gradient``).
    :param temperature: the egalitarian smooth minimum's temperature, in units of the agents' values
        (returns): small follows the worst-off agent alone, large tends to the utilitarian weights.
    :raises ValueError: for an unknown name, a negative alpha or a non-positive temperature.
    """
    if isinstance(spec, WelfareObjective):
        return spec
    if isinstance(spec, list):  # a tuple read back from JSON (a saved model, a grid file)
        spec = tuple(spec)
    if isinstance(spec, tuple):
        if len(spec) != 2 or spec[0] != "alpha_fair":
            raise ValueError(
                f"welfare={spec!r}: the only objective with a parameter is ('alpha_fair', alpha)."
            )
        alpha = float(spec[1])
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"welfare={spec!r}: alpha must be a finite number >= 0 (0 utilitarian, 1 Nash).")
        return _alpha_fair(alpha)
    if spec == "utilitarian":
        return WelfareObjective("utilitarian", lambda v: float(v.mean()), np.ones_like)
    if spec == "egalitarian":
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"temperature={temperature!r}: the smooth minimum needs a finite temperature > 0."
            )
        return _egalitarian(float(temperature))
    if spec == "nash":
        nash = _alpha_fair(1.0)
        return WelfareObjective(
            "nash", lambda v: float(np.exp(np.log(v).mean())), nash.gradient, positive=True
        )
    raise ValueError(
        f"welfare={spec!r}: choose one of 'utilitarian', 'egalitarian', 'nash', ('alpha_fair', alpha), "
        "or pass a WelfareObjective(name, welfare, gradient)."
    )
