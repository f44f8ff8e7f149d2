"""End-to-end, K-means, oracle and random assigners: the behaviour each promises."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch as th
from conftest import LogRecorder, make_scaled

from sb3_rmdp import RMDPPPO, EMAssigner, EndToEndAssigner, KMeansAssigner, OracleAssigner, RandomAssigner
from sb3_rmdp.assigners import best_response, equal_width_bins, kmeans_assignment
from sb3_rmdp.welfare import utilitarian_welfare


def _end_to_end_model(normalize_advantage: bool) -> RMDPPPO:
    return RMDPPPO(
        "MlpPolicy",
        make_scaled,
        k=2,
        n_envs=2,
        assigner=EndToEndAssigner(lr=0.05, init_scale=0.0, seed=0),  # a uniform start
        normalize_advantage=normalize_advantage,
        seed=0,
    )


def _policy_loss_steps(
    model: RMDPPPO, advantages: th.Tensor, representatives: th.Tensor, ratio: th.Tensor
) -> None:
    for _ in range(20):
        marginal = model.marginal_advantages(advantages, representatives)
        loss = -th.min(marginal * ratio, marginal * th.clamp(ratio, 0.8, 1.2)).mean()
        model.assigner.zero_grad()
        loss.backward()
        model.assigner.step()


def test_end_to_end_moves_probability_to_the_representative_with_higher_advantage() -> None:
    model = _end_to_end_model(normalize_advantage=False)
    before = model.assigner.weights().detach().clone()
    rng = np.random.default_rng(0)
    representatives = th.tensor([0] * 32 + [1] * 32)
    advantages = th.as_tensor(rng.normal(0, 0.1, (64, 3)), dtype=th.float32)
    advantages[:32, 0] -= 1.0  # agent 0 does badly under representative 0 ...
    advantages[32:, 0] += 1.0  # ... and well under representative 1
    _policy_loss_steps(model, advantages, representatives, th.ones(64))
    after = model.assigner.weights().detach()
    assert after[0, 1] > before[0, 1] + 0.2
    assert th.allclose(after.sum(dim=1), th.ones(3))


def test_end_to_end_follows_the_policy_update_under_advantage_normalization() -> None:
    # With normalized advantages the signal is how each representative's policy change (ratio != 1)
    # serves an agent: representative 1's update raises agent 0's advantageous actions, 0's lowers them.
    model = _end_to_end_model(normalize_advantage=True)
    before = model.assigner.weights().detach().clone()
    rng = np.random.default_rng(1)
    representatives = th.tensor([0] * 32 + [1] * 32)
    advantages = th.as_tensor(rng.normal(0, 1, (64, 3)), dtype=th.float32)
    ratio = 1 + 0.1 * th.cat([-advantages[:32, 0], advantages[32:, 0]])
    _policy_loss_steps(model, advantages, representatives, ratio)
    assert model.assigner.weights()[0, 1] > before[0, 1] + 0.1


def test_planted_groups_are_recovered_by_kmeans() -> None:
    rng = np.random.default_rng(2)
    n_samples = 200
    patterns = rng.random((3, n_samples)) < 0.3
    planted = np.repeat([0, 1, 2], [5, 9, 6])
    rng.shuffle(planted)
    rewards = patterns[planted] * 1.0 + rng.normal(0, 0.05, (20, n_samples))
    labels = kmeans_assignment(rewards, k=3, seed=0)
    # Same partition up to renaming the clusters.
    assert len({(int(a), int(b)) for a, b in zip(planted, labels)}) == 3


def test_kmeans_never_leaves_a_cluster_empty() -> None:
    labels = kmeans_assignment(np.ones((10, 5)), k=4, seed=0)  # all agents look the same
    assert np.bincount(labels, minlength=4).min() >= 1


def test_kmeans_assigner_trains_universal_then_fixes_clusters() -> None:
    assigner = KMeansAssigner(pretrain_fraction=0.5, n_samples=300, seed=0)
    model = RMDPPPO(
        "MlpPolicy",
        lambda: make_scaled(n_agents=6),
        k=3,
        n_envs=3,
        n_steps=100,
        batch_size=100,
        n_epochs=1,
        assigner=assigner,
        seed=0,
    )
    assert th.allclose(assigner.weights(), th.full((6, 3), 1 / 3))
    model.learn(900)  # 3 rollouts of 300 steps: the switch comes after the second
    assert assigner.clustered and assigner.switch_timestep == 450
    assert np.bincount(model.assignment(), minlength=3).min() >= 1
    assert th.equal(assigner.weights().sum(dim=1), th.ones(6))


def test_oracle_cuts_the_parameter_range_into_equal_bins() -> None:
    assert equal_width_bins(np.array([0.0, 0.9, 1.1, 2.5, 3.99, 4.0]), 4, 0.0, 4.0).tolist() == [
        0,
        0,
        1,
        2,
        3,
        3,
    ]
    oracle = OracleAssigner(low=0.0, high=4.0)
    oracle.bind(4, 2, agent_params=np.array([[0.5], [1.5], [2.5], [3.5]]))
    assert oracle.assignment().tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="one parameter per agent"):
        OracleAssigner().bind(3, 2, agent_params=np.zeros((3, 2)))


ALL = {
    "em": lambda seed: EMAssigner(mixing=0.5, warm_start_updates=0, seed=seed),
    "end_to_end": lambda seed: EndToEndAssigner(seed=seed),
    "kmeans": lambda seed: KMeansAssigner(n_samples=50, seed=seed),
    "random": lambda seed: RandomAssigner(seed=seed),
}


def _drive(assigner, n_agents: int, k: int) -> np.ndarray:
    """Bind and feed an assigner three rollouts of synthetic data, as RMDPPPO would."""
    data = np.random.default_rng(7)
    assigner.bind(n_agents, k, agent_params=np.linspace(0, 1, n_agents)[:, None])
    assigner.model = SimpleNamespace(rollout_episode_returns=None, n_steps=40, n_envs=2)
    assigner.locals = {"total_timesteps": 200}
    assigner.num_timesteps = 0
    assigner._on_training_start()
    for _ in range(3):
        for _ in range(40):
            assigner.num_timesteps += 2
            assigner.locals["infos"] = [{"agent_rewards": data.random(n_agents)} for _ in range(2)]
            assigner._on_step()
        assigner.model.rollout_episode_returns = [data.random((2, n_agents)) for _ in range(k)]
        assigner.n_rollouts += 1
        assigner._update()
    return assigner.weights().detach().numpy().copy()


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_assigner_is_deterministic_and_leaves_global_rngs_alone(name: str) -> None:
    np.random.seed(11)  # noqa: NPY002 (the global stream is what is checked)
    th.manual_seed(11)
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002
    torch_state = th.get_rng_state().clone()
    first = _drive(ALL[name](3), 12, 3)
    second = _drive(ALL[name](3), 12, 3)
    assert np.array_equal(first, second)
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002
    assert th.equal(th.get_rng_state(), torch_state)
    if name in ("end_to_end", "random"):
        assert not np.array_equal(first, _drive(ALL[name](4), 12, 3))


def test_assignment_gradient_is_eq_12_with_the_mean_in_the_graph() -> None:
    # d/d alpha[i, j] of sum_t c_t * normalized_t = sum_{t in j} (c_t - mean_j c) A^{ij}_t / std_j: the
    # per-representative mean is differentiated through, the std is a constant.
    from sb3_rmdp.ppo import normalize_per_representative

    rng = np.random.default_rng(3)
    representatives = th.tensor([0] * 10 + [1] * 6)
    advantages = th.as_tensor(rng.normal(size=(16, 4)), dtype=th.float32)
    alpha = th.softmax(th.as_tensor(rng.normal(size=(4, 2)), dtype=th.float32), dim=1).requires_grad_(True)
    weights = th.as_tensor(rng.normal(size=16), dtype=th.float32)
    marginal = (th.index_select(alpha.T, 0, representatives) * advantages).sum(dim=1)
    normalized = normalize_per_representative(marginal, representatives, 2)
    (normalized * weights).sum().backward()
    for j in range(2):
        members = representatives == j
        values = marginal.detach()[members]
        assert th.allclose(normalized.detach()[members], (values - values.mean()) / values.std(), atol=1e-5)
        centred = weights[members] - weights[members].mean()
        expected = (centred[:, None] * advantages[members]).sum(dim=0) / (values.std() + 1e-8)
        assert th.allclose(alpha.grad[:, j], expected, atol=1e-5)
    # A uniform surrogate factor (every ratio 1, the first minibatch of an update) moves nothing.
    alpha.grad = None
    marginal = (th.index_select(alpha.T, 0, representatives) * advantages).sum(dim=1)
    normalize_per_representative(marginal, representatives, 2).sum().backward()
    assert th.allclose(alpha.grad, th.zeros_like(alpha), atol=1e-5)


def _normalized_with_gradient(differentiate: str, advantages: th.Tensor, alpha_logits: th.Tensor):
    from sb3_rmdp.ppo import normalize_per_representative

    representatives = th.tensor([0] * 10 + [1] * 6)
    alpha = th.softmax(alpha_logits, dim=1).requires_grad_(True)
    weights = th.linspace(-1.0, 2.0, 16)
    marginal = (th.index_select(alpha.T, 0, representatives) * advantages).sum(dim=1)
    normalized = normalize_per_representative(marginal, representatives, 2, differentiate)
    (normalized * weights).sum().backward()
    return normalized.detach(), alpha.grad, marginal.detach(), representatives, weights


def test_gradient_statistics_change_the_gradient_not_the_values() -> None:
    rng = np.random.default_rng(4)
    advantages = th.as_tensor(rng.normal(size=(16, 4)), dtype=th.float32)
    logits = th.as_tensor(rng.normal(size=(4, 2)), dtype=th.float32)
    results = {d: _normalized_with_gradient(d, advantages, logits) for d in ("mean", "none", "both")}
    for d in ("none", "both"):
        assert th.allclose(results[d][0], results["mean"][0], atol=1e-6)
        assert not th.allclose(results[d][1], results["mean"][1], atol=1e-3)
    _, grad_none, marginal, representatives, weights = results["none"]
    _, grad_both, *_ = results["both"]
    for j in range(2):
        members = representatives == j
        std = marginal[members].std()
        # Both statistics constant: the plain weighted sum of agent advantages (no centring of c_t).
        expected = (weights[members][:, None] * advantages[members]).sum(dim=0) / (std + 1e-8)
        assert th.allclose(grad_none[:, j], expected, atol=1e-5)
        # Both differentiated: autograd through torch's own mean and std (the reference code's form).
        alpha = th.softmax(logits, dim=1).requires_grad_(True)
        group = (alpha[:, j] * advantages[members]).sum(dim=1)
        ((group - group.mean()) / (group.std() + 1e-8) * weights[members]).sum().backward()
        assert th.allclose(grad_both[:, j], alpha.grad[:, j], atol=1e-5)


def test_differentiated_std_of_equal_advantages_is_finite() -> None:
    # Sparse rewards give groups of equal (zero) advantages: sqrt'(0) must not poison the logits.
    advantages = th.zeros(16, 4)
    _, grad, *_ = _normalized_with_gradient("both", advantages, th.zeros(4, 2))
    assert th.isfinite(grad).all()


def test_unknown_gradient_statistics_say_so() -> None:
    from sb3_rmdp.ppo import normalize_per_representative

    with pytest.raises(ValueError, match=r"gradient_statistics='std'.*'mean', 'both', 'none'"):
        EndToEndAssigner(gradient_statistics="std")
    with pytest.raises(ValueError, match="differentiate='std'"):
        normalize_per_representative(th.zeros(4), th.zeros(4, dtype=th.long), 1, "std")


def _end_to_end_small(**assigner_kwargs: object) -> RMDPPPO:
    """Two representatives on scaled CartPole, 64-step rollouts: end-to-end with ``assigner_kwargs``."""
    return RMDPPPO(
        "MlpPolicy",
        make_scaled,
        k=2,
        n_envs=2,
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        seed=1,
        assigner=EndToEndAssigner(lr=0.05, seed=0, **assigner_kwargs),
    )


def _end_to_end_logged(**assigner_kwargs: object) -> RMDPPPO:
    """Two representatives on scaled CartPole, 200-step rollouts, one epoch: for the logging tests."""
    return RMDPPPO(
        "MlpPolicy",
        make_scaled,
        k=2,
        n_envs=2,
        n_steps=200,
        batch_size=100,
        n_epochs=1,
        assigner=EndToEndAssigner(init_scale=0.3, seed=0, **assigner_kwargs),
        seed=0,
    )


def test_gradient_statistics_reach_the_logits() -> None:
    def logits(statistics: str) -> th.Tensor:
        model = _end_to_end_small(gradient_statistics=statistics).learn(128)
        return model.assigner.logits.detach().clone()

    default = logits("mean")
    assert th.equal(default, logits("mean"))
    for other in ("none", "both"):
        trained = logits(other)
        assert th.isfinite(trained).all()
        assert not th.allclose(default, trained, atol=1e-4), other


def test_gradient_statistics_are_saved_and_old_saves_keep_the_mean() -> None:
    import pickle

    assigner = EndToEndAssigner(gradient_statistics="both", seed=0)
    assigner.bind(4, 2)
    assert pickle.loads(pickle.dumps(assigner)).gradient_statistics == "both"
    state = assigner.__getstate__()
    del state["gradient_statistics"]  # saved before the option existed
    old = EndToEndAssigner.__new__(EndToEndAssigner)
    old.__setstate__(state)
    assert old.gradient_statistics == "mean"


def test_deploy_and_returns_are_saved_and_old_saves_deploy_the_argmax() -> None:
    import pickle

    assigner = EndToEndAssigner(deploy="best_response", mixing=0.2, seed=0)
    assigner.bind(2, 2)
    assigner.returns_table = np.array([[0.0, 1.0], [1.0, 0.0]])
    assigner.observed = np.array([True, True])
    copy = pickle.loads(pickle.dumps(assigner))
    assert (copy.deploy, copy.mixing) == ("best_response", 0.2)
    np.testing.assert_array_equal(copy.assignment(), [1, 0])
    state = assigner.__getstate__()
    for key in ("deploy", "mixing", "returns_table", "observed"):
        del state[key]  # saved before the option existed
    old = EndToEndAssigner.__new__(EndToEndAssigner)
    old.__setstate__(state)
    assert (old.deploy, old.returns_table, old.observed) == ("argmax", None, None)
    np.testing.assert_array_equal(old.assignment(), assigner.logits.argmax(dim=1).numpy())
    old.model = SimpleNamespace(rollout_episode_returns=[np.ones((1, 2)), np.zeros((1, 2))])
    old._update()  # trained on, it starts its table
    np.testing.assert_array_equal(old.returns_table, [[1.0, 0.0], [1.0, 0.0]])


def test_best_response_takes_each_agents_best_and_stays_on_ties() -> None:
    table = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, 4.0]])
    np.testing.assert_array_equal(best_response(table, np.array([0, 1, 2, 0])), [1, 1, 2, 2])
    np.testing.assert_array_equal(best_response(table, np.array([2, 0, 0, 1])), [1, 0, 0, 2])


def test_best_response_reaches_the_best_welfare_of_a_fixed_table() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        table = rng.integers(0, 4, size=(12, 3)).astype(float)  # many ties
        old = rng.integers(0, 3, size=12)
        new = best_response(table, old)
        assert utilitarian_welfare(table, new) == pytest.approx(table.max(axis=1).mean())
        assert utilitarian_welfare(table, new) >= utilitarian_welfare(table, old)
        moved = new != old
        assert np.all(table[moved, new[moved]] > table[moved, old[moved]])  # nobody moves for a tie


def _end_to_end_trained(deploy: str, mixing: float | None = None, callback: object = None) -> RMDPPPO:
    moving_average = {} if mixing is None else {"mixing": mixing}
    return _end_to_end_small(deploy=deploy, **moving_average).learn(256, callback=callback)


def test_deploying_the_best_response_changes_the_assignment_not_the_training() -> None:
    argmax, best = _end_to_end_trained("argmax"), _end_to_end_trained("best_response")
    assert th.equal(argmax.assigner.logits, best.assigner.logits)
    for name, parameter in argmax.policy.state_dict().items():
        assert th.equal(parameter, best.policy.state_dict()[name]), name
    logits_argmax = argmax.assigner.logits.argmax(dim=1).numpy()
    np.testing.assert_array_equal(argmax.assignment(), logits_argmax)
    table = best.training_returns
    assert np.all(np.isfinite(table))
    np.testing.assert_array_equal(best.assigner.returns_table, table)  # by default the latest returns
    assert not np.shares_memory(best.assigner.returns_table, table)
    deployed = best.assignment()
    np.testing.assert_array_equal(deployed, best_response(table, logits_argmax))
    # CartPole's rewards, scaled per agent: every agent is best served by the same representative.
    assert np.any(deployed != logits_argmax)
    assert utilitarian_welfare(table, deployed) > utilitarian_welfare(table, logits_argmax)


def test_best_response_waits_for_every_representatives_returns() -> None:
    assigner = EndToEndAssigner(deploy="best_response", mixing=0.5, seed=0)
    assigner.bind(3, 2)
    assigner.model = SimpleNamespace()  # type: ignore[assignment]
    logits_argmax = assigner.logits.argmax(dim=1).numpy()
    np.testing.assert_array_equal(assigner.assignment(), logits_argmax)  # no rollout yet

    def rollout(*returns: list[list[float]]) -> None:
        assigner.model.rollout_episode_returns = [np.array(r, dtype=float).reshape(-1, 3) for r in returns]
        assigner._update()

    rollout([[1.0, 2.0, 0.0]], [])
    np.testing.assert_array_equal(assigner.assignment(), logits_argmax)  # representative 1 has none
    rollout([[3.0, 2.0, 0.0], [1.0, 2.0, 0.0]], [[2.0, 1.0, 0.0]])  # its first episode is taken as it is
    np.testing.assert_array_equal(assigner.returns_table, [[1.5, 2.0], [2.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(assigner.assignment(), [1, 0, logits_argmax[2]])  # a tie stays
    rollout([], [[0.0, 1.0, 0.0]])  # the moving average of representative 1 moves half way
    np.testing.assert_array_equal(assigner.returns_table, [[1.5, 1.0], [2.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(assigner.assignment(), [0, 0, logits_argmax[2]])


def test_end_to_end_returns_table_is_ems_moving_average() -> None:
    episodes: list[list[np.ndarray]] = []
    recorder = LogRecorder(lambda callback: episodes.append(callback.model.rollout_episode_returns))
    model = _end_to_end_trained("best_response", mixing=0.05, callback=recorder)
    assert len(episodes) == 2 and all(len(r) > 0 for rollout in episodes for r in rollout)
    em = EMAssigner(mixing=0.05)
    em.bind(model.n_agents, model.k)
    for rollout in episodes:
        em.update_table(rollout)
    np.testing.assert_allclose(model.assigner.returns_table, em.q_table, rtol=1e-12)
    assert not np.allclose(model.assigner.returns_table, model.training_returns)  # not the latest alone


def test_unknown_deploy_or_mixing_says_so() -> None:
    with pytest.raises(ValueError, match=r"deploy='best'.*'argmax', 'best_response'"):
        EndToEndAssigner(deploy="best")
    with pytest.raises(ValueError, match=r"mixing=0.*\(0, 1\]"):
        EndToEndAssigner(mixing=0)


def test_with_one_representative_every_assigner_trains_the_same_policy() -> None:
    # At k=1 there is nothing to assign: the experiment runner trains the k=1 cell once (shares_k1).
    def parameters(assigner) -> dict[str, th.Tensor]:
        model = RMDPPPO(
            "MlpPolicy",
            make_scaled,
            k=1,
            n_envs=2,
            n_steps=32,
            batch_size=32,
            n_epochs=2,
            seed=5,
            assigner=assigner,
        )
        model.learn(192)
        return model.policy.state_dict()

    reference = parameters(EMAssigner(warm_start_updates=0))
    for assigner in (
        EMAssigner(warm_start_updates=2),
        EndToEndAssigner(seed=1),
        KMeansAssigner(n_samples=20, seed=1),
        RandomAssigner(seed=1),
        OracleAssigner(),
    ):
        state = parameters(assigner)
        assert all(th.equal(state[name], reference[name]) for name in reference), type(assigner).__name__


def test_end_to_end_logs_the_deployed_welfare_and_the_soft_one() -> None:

    from sb3_rmdp.welfare import utilitarian_welfare

    soft_weights: list[np.ndarray] = []

    def keep_soft_weights(callback: LogRecorder) -> None:
        # After the assigner's log, before the update that moves the logits again.
        with th.no_grad():
            soft_weights.append(callback.model.assigner.weights().numpy().copy())

    recorder = LogRecorder(keep_soft_weights)
    recorded = recorder.recorded
    model = _end_to_end_logged()
    model.learn(400, callback=recorder)
    table, soft = model.training_returns, soft_weights[-1]
    assert np.array_equal(model.assignment(), soft.argmax(axis=1))
    assert recorded[-1]["welfare/utilitarian"] == pytest.approx(
        utilitarian_welfare(table, model.assignment())
    )
    assert recorded[-1]["welfare/soft"] == pytest.approx(utilitarian_welfare(table, soft))
    assert recorded[-1]["welfare/soft"] != pytest.approx(recorded[-1]["welfare/utilitarian"])


def test_end_to_end_best_response_logs_the_deployed_welfare_and_the_argmax() -> None:
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def keep_tables_and_argmax(callback: LogRecorder) -> None:
        with th.no_grad():
            logits_argmax = callback.model.assigner.logits.argmax(dim=1).numpy()
        assigner_table = callback.model.assigner.returns_table.copy()
        seen.append((callback.model.training_returns.copy(), assigner_table, logits_argmax))

    recorder = LogRecorder(keep_tables_and_argmax)
    model = _end_to_end_logged(deploy="best_response")
    model.learn(1600, callback=recorder)
    assert len(seen) == 4 and all(np.all(np.isfinite(table)) for table, _, _ in seen)
    for values, (table, assigner_table, logits_argmax) in zip(recorder.recorded, seen):
        deployed = best_response(assigner_table, logits_argmax)  # updated by this rollout before the log
        assert values["welfare/utilitarian"] == pytest.approx(utilitarian_welfare(table, deployed))
        assert values["welfare/argmax"] == pytest.approx(utilitarian_welfare(table, logits_argmax))
    assert any(v["welfare/argmax"] < v["welfare/utilitarian"] - 1e-6 for v in recorder.recorded)
