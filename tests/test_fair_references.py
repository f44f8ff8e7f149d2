"""Exact fair and capacitated reference optima: Resource Gathering walks and velocity time shares."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sb3_rmdp.envs.resource_gathering import ResourceGathering, optimal_paths, optimal_welfare
from sb3_rmdp.envs.velocity import _time_shared_min, egalitarian_bounds, welfare_upper_bound
from sb3_rmdp.objectives import welfare_objective

SIZE, STEPS = 3, 10
FAIR = ["egalitarian", "nash", ("alpha_fair", 0.5), ("alpha_fair", 2.0)]


def welfare_of(values: np.ndarray, welfare: str | tuple[str, float]) -> float:
    """The objective of ``values`` ``(..., n_agents)`` along the last axis; 0 / -inf where it needs > 0."""
    values = np.asarray(values, dtype=np.float64)
    objective = welfare_objective(welfare)
    if objective.positive and np.any(values <= 0):
        return 0.0 if objective.name == "nash" else -np.inf
    return objective.value(values)


def batch_welfare(values: np.ndarray, welfare: str | tuple[str, float]) -> np.ndarray:
    """:func:`welfare_of` of each row of ``values`` ``(batch, n_agents)``, vectorized."""
    objective = welfare_objective(welfare)
    if objective.name == "utilitarian":
        return values.mean(axis=1)
    if objective.name == "egalitarian":
        return values.min(axis=1)
    with np.errstate(divide="ignore"):
        if objective.name == "nash":
            return np.exp(np.log(values).mean(axis=1))
        alpha = float(objective.alpha or 0.0)
        return (np.where(values > 0, values, 0.0) ** (1 - alpha) / (1 - alpha)).mean(axis=1)


@pytest.fixture(scope="module")
def outcomes() -> np.ndarray:
    """``(n_outcomes, n_agents)``: each agent's return under every distinct closed walk on the 3x3 grid."""
    from tests.test_resource_gathering import all_episode_outcomes

    rows = []
    for cells, steps in all_episode_outcomes(SIZE, STEPS).items():
        values = np.zeros(SIZE * SIZE)
        for row, col in cells:
            values[row * SIZE + col] = 100 - steps
        rows.append(values)
    return np.array(rows)


def returns_of_paths(paths: list[list[int]]) -> np.ndarray:
    """``(k, n_agents)``: each agent's return under each action sequence, played in the env."""
    env = ResourceGathering(size=SIZE, max_steps=STEPS)
    table = []
    for actions in paths:
        env.reset()
        total = np.zeros(env.n_agents)
        for action in actions:
            _, rewards, terminated, _, _ = env.step(action)
            total += rewards
        assert terminated
        table.append(total)
    return np.array(table)


def test_default_calls_are_unchanged() -> None:
    reference = [74.00, 86.00, 89.28, 90.40, 91.04]
    assert [optimal_welfare(k) for k in range(1, 6)] == pytest.approx(reference, abs=1e-9)
    assert [optimal_welfare(k, 5, 40, "utilitarian", None, None) for k in range(1, 6)] == pytest.approx(
        reference, abs=1e-9
    )
    assert optimal_paths(3, welfare="utilitarian") == optimal_paths(3)


@pytest.mark.parametrize(
    "k,welfare", [(k, welfare) for k in (1, 2) for welfare in FAIR] + [(3, "egalitarian"), (3, "nash")]
)
def test_fair_optima_equal_brute_force_over_walk_sets(
    k: int, welfare: str | tuple[str, float], outcomes: np.ndarray
) -> None:
    best = max(
        welfare_of(outcomes[list(combo)].max(axis=0), welfare)
        for combo in itertools.combinations(range(len(outcomes)), k)
    )
    assert optimal_welfare(k, SIZE, STEPS, welfare=welfare) == pytest.approx(best, abs=1e-9)
    played = returns_of_paths(optimal_paths(k, SIZE, STEPS, welfare=welfare)).max(axis=0)
    assert welfare_of(played, welfare) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("welfare", ["egalitarian", "nash"])
def test_fair_optima_without_a_full_cover_are_zero(welfare: str) -> None:
    # 6 steps: no closed walk reaches the far corners of the 3x3 grid... and k = 1 cannot cover it
    assert optimal_welfare(1, SIZE, 6, welfare=welfare) == 0.0
    assert optimal_welfare(1, SIZE, 6, welfare=("alpha_fair", 1.5)) == -np.inf


@pytest.mark.parametrize(
    "welfare,c_min,c_max",
    [
        ("utilitarian", None, 5),
        ("utilitarian", 4, None),
        ("egalitarian", None, 5),
        ("egalitarian", 3, 6),
        ("nash", None, 5),
        (("alpha_fair", 0.5), 4, 5),
    ],
)
def test_capacitated_optima_equal_brute_force_over_walk_pairs_and_assignments(
    welfare: str | tuple[str, float], c_min: int | None, c_max: int | None, outcomes: np.ndarray
) -> None:
    n = SIZE * SIZE
    pair_a, pair_b = np.triu_indices(len(outcomes))
    choice = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1  # (assignments, n): walk 0 or 1
    load = choice.sum(axis=1)
    ok = np.ones(len(choice), dtype=bool)
    if c_max is not None:
        ok &= (load <= c_max) & (n - load <= c_max)
    if c_min is not None:
        ok &= (load >= c_min) & (n - load >= c_min)
    choice = choice[ok]
    values = np.where(  # (pairs, assignments, n)
        choice[None] == 1,
        outcomes[pair_b][:, None, :],
        outcomes[pair_a][:, None, :],
    )
    best = float(batch_welfare(values.reshape(-1, n), welfare).max())
    assert optimal_welfare(2, SIZE, STEPS, welfare=welfare, c_min=c_min, c_max=c_max) == pytest.approx(
        best, abs=1e-9
    )
    assert len(optimal_paths(2, SIZE, STEPS, welfare=welfare, c_min=c_min, c_max=c_max)) == 2


def test_bad_inputs_say_what_is_supported() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        optimal_welfare(2, welfare="maximin")
    with pytest.raises(ValueError, match="per-agent form"):
        optimal_welfare(2, welfare=welfare_objective("nash"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="infeasible capacities"):
        optimal_welfare(2, welfare="egalitarian", c_max=5)  # 2 * 5 < 25 agents
    with pytest.raises(ValueError, match="infeasible capacities"):
        optimal_welfare(3, SIZE, STEPS, c_min=4)  # 3 * 4 > 9 agents
    with pytest.raises(ValueError, match="did not close"):
        optimal_welfare(5, welfare="nash", c_max=5, time_limit=0.5)


# --- velocity populations: the egalitarian bounds -------------------------------------------------------


def grid_time_shared_min(v: np.ndarray, width: float, b: float) -> float:
    """The one-group program over a fine grid of speeds in [-w, b + w] instead of the breakpoints."""
    from scipy.optimize import linprog

    speeds = np.linspace(-width, b + width, 801)
    tents = np.clip(1.0 - np.abs(speeds[None, :] - v[:, None]) / width, 0.0, 1.0)
    m, s = tents.shape
    result = linprog(
        np.r_[np.zeros(s), -1.0],
        A_ub=np.column_stack([-tents, np.ones(m)]),
        b_ub=np.zeros(m),
        A_eq=np.r_[np.ones(s), 0.0][None, :],
        b_eq=[1.0],
        bounds=[(0, None)] * s + [(0, 1)],
        method="highs",
    )
    return float(result.x[-1])


def partitions(items: list[int], k: int):  # type: ignore[no-untyped-def]
    """Every partition of ``items`` into at most ``k`` groups."""
    if not items:
        yield []
        return
    for rest in partitions(items[1:], k):
        for i in range(len(rest)):
            yield [*rest[:i], [items[0], *rest[i]], *rest[i + 1 :]]
        if len(rest) < k:
            yield [[items[0]], *rest]


def clustered_targets(seed: int) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    b = float(rng.uniform(0.4, 1.2))
    n = int(rng.integers(2, 7))
    return np.sort(rng.choice([0.1, 0.3, 0.5], n) + rng.normal(0, b / 20, n)), b


@pytest.mark.parametrize("seed", range(6))
def test_one_group_breakpoints_are_as_good_as_any_speed_grid(seed: int) -> None:
    v, b = clustered_targets(seed)
    exact = _time_shared_min(v, b / 20)
    assert grid_time_shared_min(v, b / 20, b) <= exact + 1e-9
    assert grid_time_shared_min(v, b / 20, b) == pytest.approx(exact, abs=2e-2)  # a 801-point grid


@pytest.mark.parametrize("seed", [*range(6), 11])  # 11: no contiguous split is optimal
def test_egalitarian_bounds_bracket_the_optimum_over_every_partition(seed: int) -> None:
    v, b = clustered_targets(seed)
    for k in range(1, min(len(v), 3) + 1):
        best = 100 * max(
            min(_time_shared_min(v[group], b / 20) for group in partition)
            for partition in partitions(list(range(len(v))), k)
        )
        reached, upper = egalitarian_bounds(v, k, b, 1000)
        assert reached <= best + 1e-6 <= upper + 2e-6
        assert welfare_upper_bound(v, k, b, welfare="egalitarian") == pytest.approx(upper, abs=1e-9)


def test_contiguous_groups_are_not_always_optimal() -> None:
    # {0.119, 0.499} time-shared beats every contiguous split of these five (seed 11 of clustered_targets)
    v, b = clustered_targets(11)
    best = 100 * max(min(_time_shared_min(v[g], b / 20) for g in p) for p in partitions(list(range(5)), 2))
    reached, upper = egalitarian_bounds(v, 2, b)
    assert reached < best - 1.0 and best <= upper + 1e-6


def test_time_sharing_raises_the_minimum_and_defaults_are_unchanged() -> None:
    far = np.array([0.0, 2.0])
    assert welfare_upper_bound(far, 1, 4.0) == pytest.approx(50.0)  # one speed: the mean of (1, 0)
    assert welfare_upper_bound(far, 1, 4.0, welfare="egalitarian") == pytest.approx(50.0)  # half each
    assert egalitarian_bounds(far, 1, 4.0) == pytest.approx((50.0, 50.0))
    assert egalitarian_bounds(far, 2, 4.0) == (100.0, 100.0)
    targets = np.random.default_rng(0).uniform(0, 4.0, 30)
    for k in (1, 3):
        assert welfare_upper_bound(targets, k, 4.0) == welfare_upper_bound(
            targets, k, 4.0, 1000, "utilitarian"
        )
        assert welfare_upper_bound(targets, k, 4.0, welfare="egalitarian") <= welfare_upper_bound(
            targets, k, 4.0
        )
    with pytest.raises(ValueError, match="supports 'utilitarian'"):
        welfare_upper_bound(targets, 2, 4.0, welfare="nash")
