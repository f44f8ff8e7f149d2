"""The EM-like assigner: the theory's properties of the E-step, and the table it keeps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch as th

from sb3_rmdp import EMAssigner, RandomAssigner
from sb3_rmdp.assigners import e_step
from sb3_rmdp.assigners.em import indifferent_agents, revive_idle_representatives
from sb3_rmdp.welfare import utilitarian_welfare


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_agents = int(rng.integers(2, 30))
    k = int(rng.integers(1, n_agents + 1))
    table = rng.normal(size=(n_agents, k))
    if rng.random() < 0.5:
        # One dominant representative: the plain argmax would leave the others empty.
        table[:, int(rng.integers(k))] += 5.0
    old = np.arange(n_agents) % k
    rng.shuffle(old)
    return table, old


def test_e_step_never_lowers_welfare_of_a_fixed_table() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        table, old = _random_case(rng)
        new = e_step(table, old)
        assert utilitarian_welfare(table, new) >= utilitarian_welfare(table, old) - 1e-12
        # no agent is indifferent here: reviving changes nothing
        assert np.array_equal(revive_idle_representatives(table, new), new)


def test_plain_e_step_never_lowers_welfare_with_indifferent_agents() -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        table, old = _random_case(rng)
        table[rng.random(len(table)) < 0.5] = 0.0  # sparse rewards: agents nobody earns anything for
        new = e_step(table, old)
        assert utilitarian_welfare(table, new) >= utilitarian_welfare(table, old) - 1e-12


def test_e_step_never_leaves_a_representative_empty() -> None:
    rng = np.random.default_rng(1)
    for _ in range(500):
        table, old = _random_case(rng)
        new = e_step(table, old)
        assert np.bincount(new, minlength=table.shape[1]).min() >= 1


def test_e_step_is_argmax_when_no_representative_empties() -> None:
    table = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 3.0], [5.0, 0.0, 0.0]])
    assert np.array_equal(e_step(table, np.array([1, 2, 0, 1])), [0, 1, 2, 0])


def test_e_step_pins_the_agent_that_loses_least() -> None:
    # Everyone prefers representative 0; representative 1 keeps the old member for whom it is closest.
    table = np.array([[9.0, 0.0], [9.0, 8.5], [9.0, 1.0]])
    assert np.array_equal(e_step(table, np.array([0, 1, 1])), [0, 1, 0])


def test_indifferent_agents_are_rows_equal_under_every_representative() -> None:
    table = np.array(
        [[0.0, 0.0, 0.0], [3.0, 3.0, 3.0], [1.0, 0.0, 0.0], [1e9, 1e9 + 1e-4, 1e9], [np.nan, 1.0, 0.0]]
    )
    assert indifferent_agents(table).tolist() == [True, True, False, True, True]


def test_an_idle_representative_gets_the_agent_it_nearly_serves_best() -> None:
    # Representative 0 serves everyone it can; 1 and 2 only keep agents nobody earns anything for.
    table = np.array([[9.0, 0.0, 0.0], [9.0, 8.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, 1.0, 0.0]])
    old = np.array([0, 1, 2, 1, 2])
    greedy = e_step(table, old)
    assert np.array_equal(greedy, [0, 0, 2, 1, 0])
    # 1 takes agent 1 (it loses 0.5 there, agent 4 would lose 4); 2 earns nobody anything and stays.
    assert np.array_equal(revive_idle_representatives(table, greedy), [0, 1, 2, 1, 0])


def test_an_idle_representative_is_revived_with_two_representatives() -> None:
    # 1 earns agents 0 and 1 something, though 0 serves both better: it takes agent 1, which loses least.
    table = np.array([[5.0, 2.0], [3.0, 2.5], [0.0, 0.0]])
    old = np.array([0, 0, 1])
    assert np.array_equal(e_step(table, old), old)
    assert np.array_equal(revive_idle_representatives(table, old), [0, 1, 1])


def test_an_idle_representative_takes_an_agent_it_earns_even_where_it_is_the_worst() -> None:
    # Agent 0 gets 5 from 0 and 2 from both idle representatives: each earns it something above nothing.
    table = np.array([[5.0, 2.0, 2.0], [4.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    revived = revive_idle_representatives(table, np.array([0, 0, 1, 2]))
    # 1 takes agent 0 (loss 3); 2 would take agent 1 (loss 3), but 0 has no other informative agent left.
    assert revived.tolist() == [1, 0, 1, 2]


def test_reviving_never_empties_or_idles_the_donor() -> None:
    # Representative 0's only informative agent may not leave it, though 1 earns it something.
    table = np.array([[5.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert np.array_equal(revive_idle_representatives(table, np.array([0, 1, 2])), [0, 1, 2])


def test_reviving_leaves_no_idle_representative_that_earns_some_agent_something() -> None:
    rng = np.random.default_rng(4)
    revived_cases = 0
    for _ in range(300):
        table, old = _random_case(rng)
        table[rng.random(len(table)) < 0.6] = 0.0
        table = np.maximum(table, 0.0)  # returns of sparse rewards: many exact zeros
        greedy = e_step(table, old)
        new = revive_idle_representatives(table, greedy)
        revived_cases += not np.array_equal(new, greedy)
        k = table.shape[1]
        assert np.bincount(new, minlength=k).min() >= 1
        moved = new != greedy
        assert np.bincount(new[moved], minlength=k).max(initial=0) <= 1  # one agent per idle representative
        losses = (table[np.arange(len(table)), greedy] - table[np.arange(len(table)), new]).sum()
        expected = utilitarian_welfare(table, greedy) - losses / len(table)
        assert utilitarian_welfare(table, new) == pytest.approx(expected)
        informative = ~indifferent_agents(table)
        served = np.bincount(new[informative], minlength=k)
        for j in np.flatnonzero(served == 0):
            # Still idle only if no informative agent it earns anything could be spared by its donor.
            earns = informative & (table[:, j] > 0)
            assert not np.any(earns & (served[new] > 1))
    assert revived_cases > 30


def test_em_trains_the_revived_assignment_and_deploys_the_greedy_one() -> None:
    assigner = _bound(EMAssigner(warm_start_updates=0), n_agents=3, k=2)
    returns = [np.array([[5.0, 3.0, 0.0]]), np.array([[2.0, 2.5, 0.0]])]  # 1 is idle after the greedy step
    assigner.hard_assignment = np.array([0, 0, 1])
    _rollout(assigner, returns)
    assert assigner.assignment().tolist() == [0, 0, 1]  # deployed: each agent's best
    assert assigner.weights().argmax(dim=1).tolist() == [0, 1, 1]  # trained: 1 learns agent 1
    assert assigner.n_revived == 1


def test_revive_idle_is_saved_and_old_saves_keep_the_greedy_e_step() -> None:
    import pickle

    for revive_idle in (False, True):
        assigner = _bound(EMAssigner(revive_idle=revive_idle), n_agents=4, k=2)
        assigner.model = None  # type: ignore[assignment]
        assert pickle.loads(pickle.dumps(assigner)).revive_idle is revive_idle
    state = EMAssigner().__getstate__()
    del state["revive_idle"]  # saved before the option existed
    old = EMAssigner.__new__(EMAssigner)
    old.__setstate__(state)
    assert old.revive_idle is False


def _bound(assigner: EMAssigner, n_agents: int, k: int) -> EMAssigner:
    assigner.bind(n_agents, k)
    assigner.model = SimpleNamespace(rollout_episode_returns=None)  # type: ignore[assignment]
    return assigner


def _rollout(assigner: EMAssigner, episode_returns: list[np.ndarray]) -> None:
    assigner.model.rollout_episode_returns = episode_returns  # type: ignore[union-attr]
    assigner.n_rollouts += 1
    assigner._update()


def test_mixing_one_makes_the_e_step_the_argmax_of_the_latest_returns() -> None:
    rng = np.random.default_rng(2)
    n_agents, k = 12, 3
    assigner = _bound(EMAssigner(mixing=1.0, warm_start_updates=0), n_agents, k)
    for _ in range(5):
        table = rng.normal(size=(n_agents, k))
        table[np.arange(k), np.arange(k)] += 10.0  # argmax leaves no representative empty
        _rollout(assigner, [table[:, j][None, :] for j in range(k)])
        assert np.array_equal(assigner.assignment(), table.argmax(axis=1))
        assert np.array_equal(assigner.q_table, table)


def test_table_is_a_moving_average_started_from_the_first_observation() -> None:
    assigner = _bound(EMAssigner(mixing=0.25, warm_start_updates=10), 2, 2)
    _rollout(assigner, [np.array([[4.0, 0.0], [2.0, 0.0]]), np.zeros((0, 2))])
    assert np.allclose(assigner.q_table[:, 0], [3.0, 0.0])  # mean of the rollout's episodes
    assert not assigner.observed[1]
    _rollout(assigner, [np.array([[7.0, 4.0]]), np.array([[1.0, 1.0]])])
    assert np.allclose(assigner.q_table[:, 0], [0.75 * 3.0 + 0.25 * 7.0, 0.25 * 4.0])
    assert np.allclose(assigner.q_table[:, 1], [1.0, 1.0])


def test_no_e_step_during_warm_start() -> None:
    assigner = _bound(EMAssigner(mixing=1.0, warm_start_updates=3), 4, 2)
    initial = assigner.assignment()
    table = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    for _ in range(3):
        _rollout(assigner, [table[:, j][None, :] for j in range(2)])
        assert np.array_equal(assigner.assignment(), initial)
    _rollout(assigner, [table[:, j][None, :] for j in range(2)])
    assert np.array_equal(assigner.assignment(), [1, 0, 1, 0])
    assert assigner.n_e_steps == 1


@pytest.mark.parametrize(
    "make", [lambda: EMAssigner(mixing=0.5, warm_start_updates=0), lambda: RandomAssigner(seed=3)]
)
def test_assigners_never_draw_from_the_global_random_streams(make) -> None:
    np.random.seed(123)  # noqa: NPY002 (the global stream is what is checked)
    th.manual_seed(123)
    numpy_state, torch_state = np.random.get_state()[1].copy(), th.get_rng_state().clone()  # noqa: NPY002
    assigner = _bound(make(), 20, 4)
    for _ in range(3):
        _rollout(assigner, [np.ones((2, 20)) * j for j in range(4)])
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002
    assert th.equal(th.get_rng_state(), torch_state)


def test_random_assigner_splits_evenly_and_is_seeded() -> None:
    for n_agents, k in [(10, 3), (25, 4), (7, 7), (100, 6)]:
        first = RandomAssigner(seed=5)
        first.bind(n_agents, k)
        sizes = np.bincount(first.assignment(), minlength=k)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == n_agents
        second = RandomAssigner(seed=5)
        second.bind(n_agents, k)
        assert np.array_equal(first.assignment(), second.assignment())
    other = RandomAssigner(seed=6)
    other.bind(100, 6)
    assert not np.array_equal(other.assignment(), first.assignment())


def test_warm_start_is_capped_at_a_tenth_of_the_planned_updates() -> None:
    from conftest import make_scaled

    from sb3_rmdp import RMDPPPO

    assigner = EMAssigner(warm_start_updates=50)  # the paper's default
    model = RMDPPPO(
        "MlpPolicy", make_scaled, k=2, n_envs=2, n_steps=16, batch_size=32, n_epochs=1, assigner=assigner
    )
    model.learn(20 * 32)  # 20 updates planned: a 50-update warm start would never end
    assert assigner.effective_warm_start == 2
    assert assigner.n_e_steps == 18
    one_update = EMAssigner(warm_start_updates=50)
    RMDPPPO(
        "MlpPolicy", make_scaled, k=2, n_envs=2, n_steps=16, batch_size=32, n_epochs=1, assigner=one_update
    ).learn(32)
    assert one_update.effective_warm_start == 1  # ceil(0.1 x 1 planned update)
