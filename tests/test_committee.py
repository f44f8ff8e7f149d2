"""Policy committees (PACMAN): epsilon-cover clustering, CoverageAssigner, zero- and few-shot selection."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_rmdp import RMDPPPO, CoverageAssigner, EMAssigner
from sb3_rmdp.assigners import make_assigner
from sb3_rmdp.committee import CoverResult, epsilon_cover, population_with_agents, prototype_population
from sb3_rmdp.deploy import select_representative, zero_shot_select
from sb3_rmdp.envs import SingleAgentRMDP, agent_params_of

VELOCITY = "sb3_rmdp/HalfCheetahVelocity-v0"
TINY = dict(n_steps=16, batch_size=16, n_epochs=1)


def best_coverage(params: np.ndarray, k: int, epsilon: float) -> int:
    """The optimum, by brute force over all k-subsets of candidate boxes (written independently)."""
    d = params.shape[1]
    sets = set()
    for corner in itertools.product(*[np.unique(params[:, m]) for m in range(d)]):
        inside = np.all((params >= corner) & (params <= np.asarray(corner) + 2 * epsilon + 1e-12), axis=1)
        sets.add(sum(1 << i for i in np.flatnonzero(inside)))
    masks = sorted(sets)
    best = 0
    for subset in itertools.combinations(masks, min(k, len(masks))):
        union = 0
        for mask in subset:
            union |= mask
        best = max(best, bin(union).count("1"))
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("n", "d", "k"), [(14, 1, 2), (14, 1, 3), (10, 2, 2), (10, 2, 3)])
def test_greedy_reaches_the_approximation_guarantee(seed: int, n: int, d: int, k: int) -> None:
    params = np.random.default_rng(seed).uniform(0.0, 1.0, (n, d))
    result = epsilon_cover(params, k, 0.12, method="greedy")
    assert result.covered.sum() >= (1 - 1 / np.e) * best_coverage(params, k, 0.12)


@pytest.mark.parametrize("k", [2, 3])
def test_greedy_is_optimal_on_well_separated_groups(k: int) -> None:
    rng = np.random.default_rng(0)
    centres, sizes = np.array([[0.0, 0.0], [5.0, 1.0], [2.0, 7.0]]), [6, 4, 3]
    params = np.concatenate([c + rng.uniform(-0.2, 0.2, (s, 2)) for c, s in zip(centres, sizes)])
    result = epsilon_cover(params, k, 0.25, method="greedy")
    assert int(result.covered.sum()) == best_coverage(params, k, 0.25) == sum(sizes[:k])


def test_greedy_covers_agents_exactly_two_epsilon_apart() -> None:
    result = epsilon_cover(np.array([[0.1], [0.3]]), 1, 0.1)
    assert result.covered.all()
    np.testing.assert_allclose(result.prototypes, [[0.2]])


def test_greedy_refuses_too_many_candidate_boxes() -> None:
    params = np.random.default_rng(0).uniform(0.0, 1.0, (30, 3))
    with pytest.raises(ValueError, match="method='gradient'"):
        epsilon_cover(params, 2, 0.5, max_boxes=100)


def test_gradient_finds_a_full_cover_when_one_exists() -> None:
    rng = np.random.default_rng(1)
    centres = rng.uniform(0.0, 10.0, (4, 3))
    params = np.concatenate([c + rng.uniform(-0.3, 0.3, (8, 3)) for c in centres])
    result = epsilon_cover(params, 4, 0.35, method="gradient", seed=0)
    assert result.covered.all(), str(result)
    assert sorted(result.cluster_sizes) == [8, 8, 8, 8]


def test_gradient_is_seeded_and_leaves_global_random_streams_alone() -> None:
    params = np.random.default_rng(2).uniform(0.0, 1.0, (40, 2))
    states = random.getstate(), np.random.get_state(), th.get_rng_state()  # noqa: NPY002
    first = epsilon_cover(params, 3, 0.1, method="gradient", seed=3)
    assert random.getstate() == states[0]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), states[1]))  # noqa: NPY002
    assert th.equal(th.get_rng_state(), states[2])
    second = epsilon_cover(params, 3, 0.1, method="gradient", seed=3)
    np.testing.assert_array_equal(first.prototypes, second.prototypes)
    np.testing.assert_array_equal(first.assignment, second.assignment)


def test_cover_result_reports() -> None:
    params = np.array([[0.0], [0.1], [1.0], [5.0]])
    result = epsilon_cover(params, 2, 0.1)
    assert isinstance(result, CoverResult)
    assert result.prototypes.shape == (2, 1)
    assert result.covered_fraction == 0.75
    assert result.uncovered.tolist() == [3]
    assert result.cluster_sizes.sum() == 4
    assert "3/4 agents covered" in str(result) and "[3]" in str(result)


@pytest.mark.parametrize(
    ("params", "k", "epsilon", "method", "match"),
    [
        (np.zeros(5), 2, 0.1, "greedy", "reshape"),
        (np.array([[0.0], [np.nan]]), 1, 0.1, "greedy", "finite"),
        (np.zeros((5, 1)), 0, 0.1, "greedy", "k >= 1"),
        (np.zeros((2, 1)), 3, 0.1, "greedy", "k <= n_agents"),
        (np.zeros((5, 1)), 2, 0.0, "greedy", "positive"),
        (np.zeros((5, 1)), 2, 0.1, "kmeans", "greedy"),
    ],
)
def test_cover_input_errors_name_the_fix(
    params: np.ndarray, k: int, epsilon: float, method: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        epsilon_cover(params, k, epsilon, method=method)


# ---------------------------------------------------------------------- CoverageAssigner
def test_coverage_assigner_assigns_as_the_cover_says_and_trains(tmp_path: Path) -> None:
    model = RMDPPPO(
        "MlpPolicy",
        VELOCITY,
        k=2,
        assigner=CoverageAssigner(epsilon=0.5, seed=0),
        env_kwargs={"n_agents": 6, "seed": 0},
        seed=0,
        **TINY,
    )
    cover = epsilon_cover(model.agent_params, 2, 0.5)
    np.testing.assert_array_equal(model.assignment(), cover.assignment)
    np.testing.assert_array_equal(model.assigner.cover.prototypes, cover.prototypes)
    model.learn(64)
    target = cover.prototypes[1]
    assert zero_shot_select(model, target) == 1
    model.save(tmp_path / "committee.zip")
    loaded = RMDPPPO.load(tmp_path / "committee.zip")
    np.testing.assert_array_equal(loaded.assigner.cover.prototypes, cover.prototypes)
    np.testing.assert_array_equal(loaded.assignment(), cover.assignment)


def test_coverage_assigner_trains_representatives_on_their_prototypes() -> None:
    population = gym.make(VELOCITY, n_agents=6, seed=0)
    cover = epsilon_cover(agent_params_of(population), 2, 0.3)
    model = RMDPPPO(
        "MlpPolicy",
        lambda: prototype_population(gym.make(VELOCITY, n_agents=6, seed=0), cover),
        k=2,
        assigner=CoverageAssigner(epsilon=0.3, train_on="prototype"),
        seed=0,
        **TINY,
    )
    assert model.n_agents == 8
    np.testing.assert_allclose(model.agent_params[6:], cover.prototypes)
    weights = model.assigner.weights().numpy()
    np.testing.assert_array_equal(weights[:6], 0.0)
    np.testing.assert_array_equal(weights[6:], np.eye(2))
    np.testing.assert_array_equal(model.assignment(), np.concatenate([cover.assignment, [0, 1]]))
    model.learn(64)


def test_coverage_assigner_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="CoverageAssigner\\(epsilon="):
        make_assigner("coverage")
    with pytest.raises(ValueError, match="agent_params"):
        RMDPPPO("MlpPolicy", SingleAgentRMDP(gym.make("CartPole-v1")), assigner=CoverageAssigner(0.1))
    with pytest.raises(ValueError, match="prototype_population"):
        RMDPPPO(
            "MlpPolicy",
            VELOCITY,
            k=2,
            assigner=CoverageAssigner(epsilon=0.3, train_on="prototype"),
            env_kwargs={"n_agents": 6, "seed": 0},
            **TINY,
        )
    with pytest.raises(ValueError, match="train_on='agents'"):
        prototype_population(SingleAgentRMDP(gym.make("CartPole-v1")), epsilon_cover([[0.0]], 1, 0.1))


def test_population_with_agents_serves_new_agents() -> None:
    new_agent = population_with_agents(gym.make(VELOCITY, n_agents=3, seed=0), [[2.5]])
    assert new_agent.n_agents == 1
    np.testing.assert_array_equal(agent_params_of(new_agent), [[2.5]])
    new_agent.reset(seed=0)
    assert new_agent.step(new_agent.action_space.sample())[1].shape == (1,)
    with pytest.raises(ValueError, match="\\(n_agents, 1\\)"):
        population_with_agents(gym.make(VELOCITY, n_agents=3), [[1.0, 2.0]])


# ---------------------------------------------------------------------- selection for a new agent
class ActionRewardsEnv(gym.Env):
    """A one-agent r-MDP of 5 steps where action a always pays ``payoffs[a]``: known returns."""

    def __init__(self, payoffs: tuple[float, ...] = (0.1, 0.5, 0.3), n_agents: int = 1):
        self.payoffs = np.asarray(payoffs)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(len(payoffs))
        self.reward_space = spaces.Box(0.0, 1.0, shape=(n_agents,), dtype=np.float32)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[np.ndarray, np.ndarray, bool, bool, dict]:
        self.t += 1
        rewards = np.full(self.reward_space.shape, self.payoffs[int(action)], dtype=np.float32)
        return self.observation_space.sample(), rewards, False, self.t >= 5, {}


class FixedActionCommittee:
    """A fake committee: representative j always plays action j."""

    k = 3

    def predict(self, obs: Any, deterministic: bool = False, representative: int = 0) -> tuple[Any, None]:
        return np.int64(representative), None


def test_few_shot_selection_picks_the_truly_best_representative() -> None:
    j, returns = select_representative(FixedActionCommittee(), ActionRewardsEnv(), n_episodes=2)
    assert j == 1
    np.testing.assert_allclose(returns, [0.5, 2.5, 1.5], rtol=1e-6)


def test_few_shot_selection_runs_a_real_model() -> None:
    from conftest import make_scaled

    model = RMDPPPO("MlpPolicy", make_scaled, k=3, seed=0, **TINY)
    j, returns = select_representative(model, SingleAgentRMDP(gym.make("CartPole-v1")), n_episodes=1)
    assert returns.shape == (3,) and j == int(returns.argmax()) and np.all(returns >= 1)


def test_selection_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="one agent"):
        select_representative(FixedActionCommittee(), ActionRewardsEnv(n_agents=2))
    with pytest.raises(ValueError, match="shape \\(1,\\)"):
        zero_shot_select(np.array([[0.0], [1.0]]), [0.5, 0.5])
    assert zero_shot_select(np.array([[0.0], [1.0]]), 0.8) == 1
    model = RMDPPPO("MlpPolicy", SingleAgentRMDP(gym.make("CartPole-v1")), assigner=EMAssigner(), **TINY)
    with pytest.raises(ValueError, match="CoverageAssigner"):
        zero_shot_select(model, [0.0])
