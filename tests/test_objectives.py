"""Welfare objectives (sb3_rmdp.objectives) and the E-step's assignment under limits (sb3_rmdp.matching),
against brute force over every assignment of small tables."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sb3_rmdp.matching import OPT_OUT, best_assignment
from sb3_rmdp.objectives import WelfareObjective, welfare_objective

SPECS = ["utilitarian", "egalitarian", "nash", ("alpha_fair", 0.5), ("alpha_fair", 2.0)]


def served_values(table: np.ndarray, assignment: np.ndarray, outside: np.ndarray | None) -> np.ndarray:
    values = table[np.arange(len(table)), np.maximum(assignment, 0)]
    return values if outside is None else np.where(assignment == OPT_OUT, outside, values)


def brute_force(
    table: np.ndarray, spec: object, c_min: int, c_max: int | None, outside: np.ndarray | None
) -> float:
    """The best welfare over every assignment that meets the limits."""
    objective = welfare_objective(spec)  # type: ignore[arg-type]
    n, k = table.shape
    choices = list(range(k)) + ([OPT_OUT] if outside is not None else [])
    best = -np.inf
    for assignment in itertools.product(choices, repeat=n):
        counts = np.bincount([a for a in assignment if a != OPT_OUT], minlength=k)
        if counts.min() < c_min or (c_max is not None and counts.max() > c_max):
            continue
        best = max(best, objective.value(served_values(table, np.array(assignment), outside)))
    return best


@pytest.mark.parametrize("spec", SPECS)
def test_gradients_are_the_scaled_derivative(spec: object) -> None:
    objective = welfare_objective(spec, temperature=0.5)  # type: ignore[arg-type]
    values = np.random.default_rng(0).uniform(1.0, 3.0, size=5)
    smooth = objective
    if objective.name == "egalitarian":  # its gradient is the smooth minimum's
        t = 0.5
        smooth = WelfareObjective(
            "smooth", lambda v: float(-t * np.log(np.mean(np.exp(-v / t)))), objective.gradient
        )
    step = 1e-6
    numeric = np.array(
        [(smooth.value(values + step * e) - smooth.value(values - step * e)) / (2 * step) for e in np.eye(5)]
    )
    if objective.name == "nash":  # the gradient of the mean log value, the log of the geometric mean
        numeric = np.array(
            [(np.log(smooth.value(values + step * e)) - np.log(smooth.value(values - step * e))) / (2 * step)
             for e in np.eye(5)]
        )  # fmt: skip
    np.testing.assert_allclose(objective.agent_weights(values), 5 * numeric, rtol=1e-5)
    assert np.all(objective.agent_weights(values) > 0)


def test_named_objectives() -> None:
    values = np.array([1.0, 4.0, 16.0])
    assert welfare_objective("utilitarian").value(values) == pytest.approx(7.0)
    assert welfare_objective("egalitarian").value(values) == 1.0
    assert welfare_objective("nash").value(values) == pytest.approx(4.0)
    np.testing.assert_array_equal(welfare_objective("utilitarian").agent_weights(values), np.ones(3))
    # alpha = 0 weighs like the utilitarian mean, alpha = 1 like Nash
    np.testing.assert_allclose(welfare_objective(("alpha_fair", 0.0)).agent_weights(values), np.ones(3))
    np.testing.assert_allclose(
        welfare_objective(("alpha_fair", 1.0)).agent_weights(values),
        welfare_objective("nash").agent_weights(values),
    )
    # the smooth minimum follows the worst-off agent at a small temperature, the mean at a large one
    np.testing.assert_allclose(welfare_objective("egalitarian", 1e-3).agent_weights(values), [3.0, 0.0, 0.0])
    np.testing.assert_allclose(
        welfare_objective("egalitarian", 1e6).agent_weights(values), np.ones(3), atol=1e-4
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: welfare_objective("rawlsian"), "choose one of 'utilitarian', 'egalitarian', 'nash'"),
        (lambda: welfare_objective(("alpha_fair", -1)), "alpha must be a finite number >= 0"),
        (lambda: welfare_objective(("nash", 1)), "the only objective with a parameter"),
        (lambda: welfare_objective("egalitarian", 0.0), "finite temperature > 0"),
        (
            lambda: welfare_objective("nash").value(np.array([1.0, -0.5])),
            "needs positive values, got a minimum of -0.5",
        ),
        (lambda: welfare_objective("nash").agent_weights(np.array([2.0, -1.0])), "shift the rewards"),
        (lambda: welfare_objective().value(np.array([np.nan])), "must be finite"),
        (lambda: welfare_objective().value(np.zeros((2, 2))), "one value per agent, (n_agents,)"),
    ],
)
def test_objective_errors(call: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        call()  # type: ignore[operator]
    assert message in str(error.value)


@pytest.mark.parametrize("seed", range(5))
def test_without_limits_the_best_representative_maximizes_every_objective(seed: int) -> None:
    table = np.random.default_rng(seed).uniform(0.5, 10.0, size=(6, 3))
    assignment = best_assignment(table)
    np.testing.assert_array_equal(assignment, table.argmax(axis=1))
    for spec in SPECS:
        got = welfare_objective(spec).value(served_values(table, assignment, None))  # type: ignore[arg-type]
        assert got == pytest.approx(brute_force(table, spec, 0, None, None))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("c_min", "c_max"), [(0, 2), (2, None), (1, 3), (2, 2)])
@pytest.mark.parametrize("spec", ["utilitarian", "egalitarian", "nash", ("alpha_fair", 2.0)])
def test_capacity_limits_match_brute_force(seed: int, c_min: int, c_max: int | None, spec: object) -> None:
    rng = np.random.default_rng(seed)
    # a table that crowds everyone onto representative 0 unless the limits say otherwise
    table = rng.uniform(0.5, 10.0, size=(6, 3)) + np.array([8.0, 0.0, 0.0])
    assignment = best_assignment(table, spec, c_min=c_min, c_max=c_max)  # type: ignore[arg-type]
    counts = np.bincount(assignment, minlength=3)
    assert counts.min() >= c_min and (c_max is None or counts.max() <= c_max)
    got = welfare_objective(spec).value(served_values(table, assignment, None))  # type: ignore[arg-type]
    assert got == pytest.approx(brute_force(table, spec, c_min, c_max, None))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("c_min", "c_max"), [(0, None), (0, 2), (1, None)])
def test_outside_options_match_brute_force(seed: int, c_min: int, c_max: int | None) -> None:
    rng = np.random.default_rng(seed)
    table = rng.uniform(0.0, 10.0, size=(6, 3))
    outside = rng.uniform(3.0, 9.0, size=6)
    assignment = best_assignment(table, c_min=c_min, c_max=c_max, outside=outside)
    got = served_values(table, assignment, outside).mean()
    assert got == pytest.approx(brute_force(table, "utilitarian", c_min, c_max, outside))
    if c_min == 0 and c_max is None:  # without limits: served exactly where a representative beats u_i
        np.testing.assert_array_equal(assignment == OPT_OUT, table.max(axis=1) <= outside)
        assert np.all(served_values(table, assignment, outside) >= outside)


def test_agents_with_high_outside_values_opt_out() -> None:
    table = np.array([[5.0, 1.0], [2.0, 6.0], [3.0, 3.0], [9.0, 0.0]])
    outside = np.array([0.0, 10.0, 3.0, 0.0])  # agent 1 gets more alone; agent 2 gains nothing served
    assignment = best_assignment(table, outside=outside)
    np.testing.assert_array_equal(assignment, [0, OPT_OUT, OPT_OUT, 0])
    assert served_values(table, assignment, outside).mean() == pytest.approx((5 + 10 + 3 + 9) / 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"c_max": 1}, "k * c_max = 2 * 1 = 2 < 4 agents"),
        ({"c_min": 3}, "k * c_min = 2 * 3 = 6 > 4 agents; lower c_min to at most 2"),
        ({"c_min": 2, "c_max": 1}, "c_min=2 > c_max=1"),
        ({"c_max": -1}, "a whole number of agents >= 0"),
        ({"c_min": 1.5}, "a whole number of agents >= 0"),
        ({"outside": np.zeros(3)}, "outside of shape (3,): give one outside value per agent, (4,)"),
        (
            {"welfare": "nash", "c_max": 3, "outside": np.array([-1.0, 0.0, 0.0, 0.0])},
            "needs positive values",
        ),
        ({"welfare": WelfareObjective("mine", np.mean, np.ones_like), "c_max": 3}, "no per-agent form"),
    ],
)
def test_matching_errors(kwargs: dict[str, object], message: str) -> None:
    table = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
    with pytest.raises(ValueError) as error:
        best_assignment(table, **kwargs)  # type: ignore[arg-type]
    assert message in str(error.value)


def test_capacity_limits_scale_to_a_thousand_agents() -> None:
    table = np.random.default_rng(0).uniform(0.0, 100.0, size=(1000, 50))
    assignment = best_assignment(table, c_min=10, c_max=30)
    counts = np.bincount(assignment, minlength=50)
    assert counts.min() >= 10 and counts.max() <= 30
    # no better than the unlimited best, and close to it on a random table
    unlimited = table.max(axis=1).mean()
    got = table[np.arange(1000), assignment].mean()
    assert got <= unlimited and got > 0.95 * unlimited


def test_an_agent_at_zero_makes_nash_zero_and_takes_its_gradient_at_the_floor() -> None:
    from sb3_rmdp.objectives import ZERO_FLOOR

    nash = welfare_objective("nash")
    assert nash.value(np.array([4.0, 0.0])) == 0.0
    weights = nash.agent_weights(np.array([4.0, 0.0]))
    floor = ZERO_FLOOR * 2.0  # of the mean value
    np.testing.assert_allclose(weights, [1 / 4.0, 1 / floor])
