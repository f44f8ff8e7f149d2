"""Resource Gathering: dynamics, rewards, the env checker, and the exact optimum of k policies."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from sb3_rmdp.envs.contract import AgentRewardsWrapper, agent_params_of, n_agents_of
from sb3_rmdp.envs.resource_gathering import ResourceGathering, optimal_paths, optimal_welfare

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
HOME_AGENT = 4 * 5 + 2  # cell (4, 2) of the 5x5 grid


def run_episode(env: ResourceGathering, actions: list[int]) -> np.ndarray:
    """Play ``actions`` from reset; the episode must end exactly on the last one. Returns the returns."""
    env.reset(seed=0)
    total = np.zeros(env.n_agents)
    for i, action in enumerate(actions):
        _, rewards, terminated, truncated, _ = env.step(action)
        assert rewards.shape == (env.n_agents,) and rewards.dtype == np.float32
        assert not truncated
        assert terminated == (i == len(actions) - 1), f"episode ended at step {i + 1} of {len(actions)}"
        total += rewards
    return total


def welfare_of(paths: list[list[int]], size: int = 5, max_steps: int = 40) -> float:
    """Mean over agents of each agent's best return over the policies (action sequences)."""
    env = ResourceGathering(size=size, max_steps=max_steps)
    returns = np.stack([run_episode(env, path) for path in paths])
    return float(returns.max(axis=0).mean())


# --- env contract -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version:UserWarning")
def test_env_checker_passes_on_the_wrapped_env_and_rewards_are_vectors() -> None:
    env = ResourceGathering()
    check_env(AgentRewardsWrapper(env), skip_render_check=True)  # render: see test_invalid_action_and_render
    assert n_agents_of(env) == 25
    env.reset(seed=1)
    _, rewards, *_ = env.step(UP)
    assert rewards.shape == (25,)
    assert env.reward_space.shape == (25,) and env.reward_space.high.max() == pytest.approx(100.0)


def test_agent_params_are_the_cells_in_agent_order() -> None:
    params = agent_params_of(ResourceGathering(size=4))
    assert params is not None
    assert params.shape == (16, 2)
    assert params[0].tolist() == [0, 0] and params[5].tolist() == [1, 1] and params[15].tolist() == [3, 3]


def test_registered_id_builds_the_env() -> None:
    import sb3_rmdp.envs  # noqa: F401  (registers the envs)

    env = gym.make("sb3_rmdp/ResourceGathering-v0", size=3)
    assert isinstance(env.unwrapped, ResourceGathering) and n_agents_of(env) == 9


# --- dynamics and rewards -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actions", "position"),
    [
        ([LEFT, LEFT], (4, 0)),
        ([LEFT, LEFT, LEFT], (4, 0)),  # off-grid to the left: stays
        ([RIGHT, RIGHT, RIGHT, DOWN], (4, 4)),  # off-grid right, then below: stays
        ([UP, UP, UP, UP], (0, 2)),
        ([UP, UP, UP, UP, UP, LEFT], (0, 1)),  # off-grid above: stays, then moves left
    ],
)
def test_moves_and_off_grid_moves_stay_in_place(actions: list[int], position: tuple[int, int]) -> None:
    env = ResourceGathering()
    obs, info = env.reset(seed=0)
    assert info["position"] == (4, 2) and obs[:2].tolist() == [4, 2]
    for action in actions:
        obs, rewards, terminated, _, info = env.step(action)
        assert not terminated and not rewards.any()
    assert info["position"] == position
    assert obs[:2].tolist() == list(position)


def test_bump_at_home_ends_at_t1_paying_99_to_the_home_agent_only() -> None:
    env = ResourceGathering()
    env.reset(seed=0)
    _, rewards, terminated, truncated, _ = env.step(DOWN)  # below home is off-grid: stays home
    assert terminated and not truncated
    expected = np.zeros(25, dtype=np.float32)
    expected[HOME_AGENT] = 99.0
    np.testing.assert_array_equal(rewards, expected)


def test_timeout_at_max_steps_pays_nobody() -> None:
    env = ResourceGathering()
    env.reset(seed=0)
    actions = [UP] + [UP, DOWN] * 19 + [UP]  # 40 steps between rows 3 and 1, never home
    for i, action in enumerate(actions):
        _, rewards, terminated, truncated, _ = env.step(action)
        assert not rewards.any() and not truncated
        assert terminated == (i == 39)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(UP)


def test_return_home_exactly_at_the_cutoff_is_paid() -> None:
    returns = run_episode(ResourceGathering(max_steps=4), [UP, UP, DOWN, DOWN])
    visited = [HOME_AGENT, 3 * 5 + 2, 2 * 5 + 2]
    assert returns[visited].tolist() == [96.0, 96.0, 96.0]
    assert returns.sum() == pytest.approx(3 * 96.0)


def test_observation_carries_position_and_visited_flags() -> None:
    env = ResourceGathering()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (27,) and obs.dtype == np.float32
    assert np.flatnonzero(obs[2:]).tolist() == [HOME_AGENT]
    for action in (UP, LEFT, UP):
        obs, *_ = env.step(action)
    assert obs[:2].tolist() == [2, 1]
    assert np.flatnonzero(obs[2:]).tolist() == sorted([HOME_AGENT, 3 * 5 + 2, 3 * 5 + 1, 2 * 5 + 1])
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("scale", [1.0, 0.01, 2.5])
def test_reward_scale_scales_the_rewards(scale: float) -> None:
    env = ResourceGathering(reward_scale=scale)
    returns = run_episode(env, [UP, RIGHT, DOWN, LEFT])  # a 2x2 square back home at T = 4
    covered = [HOME_AGENT, 3 * 5 + 2, 3 * 5 + 3, 4 * 5 + 3]
    np.testing.assert_allclose(returns[covered], scale * 96.0, rtol=1e-6)
    assert np.count_nonzero(returns) == 4
    assert env.reward_space.high.max() == pytest.approx(100.0 * scale)


def test_invalid_action_and_render() -> None:
    env = ResourceGathering(size=3, render_mode="ansi")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Invalid action"):
        env.step(4)
    env.step(UP)
    assert env.render() == "...\n.@.\n.H.\n"
    with pytest.raises(ValueError, match="render_mode"):
        ResourceGathering(render_mode="human")


# --- optimal welfare on the 5x5 grid ------------------------------------------------------------------


def shortest_round_trip(row: int, col: int, size: int = 5) -> list[int]:
    """To cell (row, col) by a shortest route that leaves home upwards (never through home), and back."""
    home_row, home_col = size - 1, size // 2
    if (row, col) == (home_row, home_col):
        return [DOWN]  # the bump
    out = [UP] * (home_row - row) + [LEFT if col < home_col else RIGHT] * abs(col - home_col)
    back = {UP: DOWN, DOWN: UP, LEFT: RIGHT, RIGHT: LEFT}
    return out + [back[a] for a in reversed(out)]


def test_one_policy_per_agent_reaches_the_k25_closed_form() -> None:
    paths = [shortest_round_trip(*divmod(cell, 5)) for cell in range(25)]
    assert welfare_of(paths) == pytest.approx(93.56, abs=1e-9)
    assert optimal_welfare(25) == pytest.approx(93.56, abs=1e-9)
    assert welfare_of(optimal_paths(25)) == pytest.approx(93.56, abs=1e-9)


@pytest.mark.parametrize(
    ("k", "reference", "exact"),
    [
        (1, 74.00, True),
        (2, 86.00, True),
        (3, 89.28, True),
        (4, 90.40, False),
        (5, 91.04, False),
        (10, 92.32, False),
        (25, 93.56, True),
    ],
)
def test_optimal_welfare_matches_the_reference_values(k: int, reference: float, exact: bool) -> None:
    value = optimal_welfare(k)
    if exact:
        assert value == pytest.approx(reference, abs=1e-9)
    else:  # the reference only gives a lower bound
        assert value >= reference - 1e-9


def test_optimal_welfare_values_for_every_k() -> None:
    # Regression values; k = 4..10 were also confirmed by an independent integer program over all walks.
    expected = [74.00, 86.00, 89.28, 90.40, 91.04, 91.52, 91.76, 92.00, 92.16, 92.32]
    expected += [92.48, 92.56, 92.64, 92.72, 92.80, 92.88, 92.96, 93.04, 93.12, 93.20, 93.28, 93.36]
    expected += [93.44, 93.52, 93.56, 93.56]
    values = [optimal_welfare(k) for k in range(1, 27)]
    assert values == pytest.approx(expected, abs=1e-9)
    assert all(a <= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 10, 24])
def test_optimal_paths_reach_the_optimal_welfare_in_the_env(k: int) -> None:
    paths = optimal_paths(k)
    assert len(paths) == k
    assert all(len(path) <= 40 for path in paths)
    assert welfare_of(paths) == pytest.approx(optimal_welfare(k), abs=1e-9)


def test_invalid_budget_is_rejected() -> None:
    with pytest.raises(ValueError, match="k must be"):
        optimal_welfare(0)


# --- proof by an independent method: brute force over every action sequence on a 3x3 grid --------------

BRUTE_SIZE, BRUTE_STEPS = 3, 12


def all_episode_outcomes(size: int, max_steps: int) -> dict[frozenset[tuple[int, int]], int]:
    """Every action sequence from home up to the cutoff, played with the rules written out again here.

    :return: for each set of visited cells of an episode ending at home, the fewest steps ``T`` of such an
        episode (a longer one with the same set is worse for every agent).
    """
    home = (size - 1, size // 2)
    deltas = ((-1, 0), (1, 0), (0, -1), (0, 1))
    best: dict[frozenset[tuple[int, int]], int] = {}

    def play(position: tuple[int, int], visited: frozenset[tuple[int, int]], steps: int) -> None:
        for d_row, d_col in deltas:
            row, col = position[0] + d_row, position[1] + d_col
            nxt = (row, col) if 0 <= row < size and 0 <= col < size else position
            seen = visited | {nxt}
            if nxt == home:
                if best.get(seen, max_steps + 1) > steps + 1:
                    best[seen] = steps + 1
            elif steps + 1 < max_steps:  # else: cut off away from home, nobody is paid
                play(nxt, seen, steps + 1)

    play(home, frozenset([home]), 0)
    return best


@pytest.fixture(scope="module")
def brute_outcomes() -> list[tuple[np.ndarray, int]]:
    """(values per agent, T) of every distinct episode outcome on the 3x3 grid."""
    outcomes = []
    for cells, steps in all_episode_outcomes(BRUTE_SIZE, BRUTE_STEPS).items():
        values = np.zeros(BRUTE_SIZE * BRUTE_SIZE)
        for row, col in cells:
            values[row * BRUTE_SIZE + col] = 100 - steps
        outcomes.append((values, steps))
    return outcomes


def test_brute_force_rules_match_the_env() -> None:
    """The rules re-written in the brute force give the same outcomes as the env on random episodes."""
    rng = np.random.default_rng(0)
    env = ResourceGathering(size=BRUTE_SIZE, max_steps=BRUTE_STEPS)
    outcomes = all_episode_outcomes(BRUTE_SIZE, BRUTE_STEPS)
    home, ended_home = (2, 1), 0
    for _ in range(300):
        env.reset(seed=0)
        cells, total, steps, terminated = {home}, np.zeros(9), 0, False
        while not terminated:
            _, rewards, terminated, _, info = env.step(int(rng.integers(4)))
            cells.add(info["position"])
            total += rewards
            steps += 1
        if info["position"] == home:
            ended_home += 1
            paid = [r * 3 + c for r, c in cells]
            assert total[paid].tolist() == [100.0 - steps] * len(paid)
            assert np.count_nonzero(total) == len(paid)
            assert outcomes[frozenset(cells)] <= steps
        else:
            assert steps == BRUTE_STEPS and not total.any()
    assert ended_home > 50


@pytest.mark.parametrize("k", [1, 2, 3])
def test_brute_force_over_all_policies_confirms_optimal_welfare(
    k: int, brute_outcomes: list[tuple[np.ndarray, int]]
) -> None:
    best = max(
        np.max([values for values, _ in combo], axis=0).mean()
        for combo in itertools.combinations(brute_outcomes, k)
    )
    assert optimal_welfare(k, size=BRUTE_SIZE, max_steps=BRUTE_STEPS) == pytest.approx(best, abs=1e-9)
    assert welfare_of(
        optimal_paths(k, size=BRUTE_SIZE, max_steps=BRUTE_STEPS), BRUTE_SIZE, BRUTE_STEPS
    ) == pytest.approx(best, abs=1e-9)


def test_brute_force_confirms_the_closed_form_for_k_at_least_n(
    brute_outcomes: list[tuple[np.ndarray, int]],
) -> None:
    each_agent_best = np.max([values for values, _ in brute_outcomes], axis=0)
    # 100 - 2 * distance to home (2, 1); 99 for the home agent (the bump)
    closed_form = [100 - 2 * (abs(r - 2) + abs(c - 1)) for r in range(3) for c in range(3)]
    closed_form[2 * 3 + 1] = 99
    assert each_agent_best.tolist() == closed_form
    for k in (9, 25):
        value = optimal_welfare(k, size=BRUTE_SIZE, max_steps=BRUTE_STEPS)
        assert value == pytest.approx(each_agent_best.mean(), abs=1e-9)


def test_experiment_settings_reach_the_assigner() -> None:
    from sb3_rmdp.experiments import Cell
    from sb3_rmdp.experiments.resource_gathering import make_assigner

    def assigner(**values: object) -> object:
        return make_assigner(Cell.of({"task": "ResourceGathering", **values}).config)

    default = assigner(algorithm="end_to_end")
    assert (default.lr, default.gradient_statistics, default.deploy) == (1e-2, "mean", "argmax")
    custom = assigner(
        algorithm="end_to_end", end_to_end_lr=0.03, end_to_end_gradient_statistics="none",
        end_to_end_deploy="best_response",
    )  # fmt: skip
    assert (custom.lr, custom.gradient_statistics, custom.deploy) == (0.03, "none", "best_response")
    assert (
        assigner(algorithm="em").revive_idle
        and not assigner(algorithm="em", em_revive_idle=False).revive_idle
    )
