"""Scaling in agents (issue 25): the exact options train bit for bit as the default path; the sampled
critic computes what the full critic computes, for its agents only."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_rmdp import RMDPPPO
from sb3_rmdp.aggregate import RMDPAggregateRolloutBuffer
from sb3_rmdp.buffers import RMDPRolloutBuffer
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.envs.velocity import VelocityPopulation, mean_velocity_reward, velocity_rewards
from sb3_rmdp.policies import MultiRepresentativePolicy, RepresentativeGroups
from sb3_rmdp.welfare import evaluate_agent_returns

HC = "sb3_rmdp/HalfCheetahVelocity-v0"


def _train(compact: bool, assigner: str, critic_agents: int | None = None) -> RMDPPPO:
    # 600 steps per slot: each slot's first episode is cut at 1000 steps (time-limit bootstrap) in rollout 2
    env = make_rmdp_vec_env(HC, n_envs=2, seed=3, env_kwargs={"n_agents": 30, "compact_rewards": compact})
    model = RMDPPPO(
        "MlpPolicy",
        env,
        k=2,
        assigner=assigner,
        n_steps=600,
        batch_size=100,
        n_epochs=2,
        seed=3,
        device="cpu",
        policy_kwargs={"critic_agents": critic_agents},
    )
    return model.learn(2400)


def _assert_same_training(a: RMDPPPO, b: RMDPPPO) -> None:
    for (name, p), q in zip(a.policy.named_parameters(), b.policy.parameters()):
        assert th.equal(p, q), name
    for name in ("rewards", "values", "advantages", "returns"):
        assert np.array_equal(getattr(a.rollout_buffer, name), getattr(b.rollout_buffer, name)), name
    assert np.array_equal(a._episode_agent_returns, b._episode_agent_returns)
    assert np.array_equal(a.training_returns, b.training_returns, equal_nan=True)
    assert th.equal(a.assigner.weights(), b.assigner.weights())


@pytest.mark.parametrize("assigner", ["em", "end_to_end", "kmeans"])
def test_compact_rewards_train_bit_for_bit(assigner: str) -> None:
    plain, compact = _train(False, assigner), _train(True, assigner)
    _assert_same_training(plain, compact)
    if assigner == "em":
        assert np.array_equal(plain.assigner.q_table, compact.assigner.q_table)
    if assigner == "kmeans":  # clustered on the reward vectors the statistics give
        assert plain.assigner.clustered and compact.assigner.clustered
        assert np.array_equal(plain.assigner.hard_assignment, compact.assigner.hard_assignment)
    # Monitor's episode return is the agents' mean reward summed: from prefix sums, equal up to rounding
    ours = [info["r"] for info in compact.ep_info_buffer]
    assert ours == pytest.approx([info["r"] for info in plain.ep_info_buffer], abs=1e-4)
    eval_envs = [
        make_rmdp_vec_env(HC, n_envs=1, seed=9, env_kwargs={"n_agents": 30, "compact_rewards": c})
        for c in (False, True)
    ]
    tables = [evaluate_agent_returns(plain, env, n_episodes=1) for env in eval_envs]
    assert np.array_equal(tables[0], tables[1])


def test_critic_agents_of_all_agents_is_the_exact_critic() -> None:
    _assert_same_training(_train(False, "em"), _train(False, "em", critic_agents=30))


def test_rewards_from_statistics_are_the_reward_vectors() -> None:
    targets = np.random.default_rng(0).uniform(0.0, 4.0, size=1000)
    env = VelocityPopulation.__new__(VelocityPopulation)  # the reward functions need no MuJoCo env
    env.targets, env.b = targets, 4.0
    speeds = np.array([-0.3, 0.0, 0.1234, 1.0, 2.5, 3.99, 4.2])
    batched = env.rewards_from_statistics(speeds)
    assert batched.dtype == np.float32 and batched.shape == (len(speeds), len(targets))
    order = np.sort(targets)
    prefix = np.concatenate(([0.0], np.cumsum(order)))
    for row, speed in zip(batched, speeds):
        assert np.array_equal(row, velocity_rewards(speed, targets, 4.0))
        mean = mean_velocity_reward(speed, order, prefix, 4.0)
        assert mean == pytest.approx(float(np.mean(row, dtype=np.float64)), abs=1e-7)


def _policy_with_sampled_critic(critic: str, k: int, n_agents: int = 40) -> MultiRepresentativePolicy:
    return MultiRepresentativePolicy(
        spaces.Box(-1.0, 1.0, (5,)),
        spaces.Box(-1.0, 1.0, (2,)),
        lambda _: 3e-4,
        k=k,
        n_agents=n_agents,
        critic=critic,
        critic_agents=7,
    )


@pytest.mark.parametrize("critic", ["per_representative", "conditioned"])
@pytest.mark.parametrize("k", [1, 3])
def test_sampled_critic_values_are_the_full_critic_columns(critic: str, k: int) -> None:
    n_agents = 40
    policy = _policy_with_sampled_critic(critic, k, n_agents)
    assert policy.critic_agents == 7
    obs, actions = th.randn(12, 5), th.randn(12, 2)
    index = th.sort(th.randint(0, k, (12,))).values
    groups = RepresentativeGroups.of(index, k)
    agents = th.tensor([0, 3, 4, 17, 38, 39, 20])
    values, log_prob, entropy = policy.evaluate_actions(obs, actions, groups, agents=agents)
    full, full_log_prob, full_entropy = policy.evaluate_actions(obs, actions, groups)
    assert values.shape == (12, 7)
    th.testing.assert_close(values, full[:, agents])
    assert th.equal(log_prob, full_log_prob) and th.equal(entropy, full_entropy)
    # The sampled rows are leaves of their own, and the lazy Adam step moves those rows only.
    rows, bias = policy.sampled_critic_parameters()
    values.sum().backward()
    assert rows.grad is not None and bias.grad is not None and policy.value_net.weight.grad is None
    before = policy.value_net.weight.detach().clone().view(1 if critic == "conditioned" else k, n_agents, -1)
    policy.step_sampled_critic()
    after = policy.value_net.weight.detach().view_as(before)
    moved = (after != before).any(dim=2).any(dim=0)
    assert th.equal(moved.nonzero().flatten(), th.sort(agents).values)
    assert int(policy.critic_rows_steps) == 1 and policy.sampled_critic_parameters() == []


@pytest.mark.parametrize("critic", ["per_representative", "conditioned"])
def test_per_representative_agents_are_each_samples_own_columns(critic: str) -> None:
    # (k, m) agents: each sample gets the values of its representative's row of agents; a conditioned
    # head's agent tracked for two representatives (17, 20) is one row, one gradient, one Adam step.
    k, n_agents = 3, 40
    policy = _policy_with_sampled_critic(critic, k, n_agents)
    obs, actions = th.randn(12, 5), th.randn(12, 2)
    index = th.tensor([2, 0, 1, 1, 0, 2, 2, 0, 1, 0, 0, 2])  # unsorted
    agents = th.tensor([[0, 3, 17, 20], [4, 17, 20, 38], [1, 2, 20, 39]])
    for j in range(k):  # one representative for the whole batch
        ours, _, _ = policy.evaluate_actions(obs, actions, j, agents=agents)
        th.testing.assert_close(ours, policy.evaluate_actions(obs, actions, j)[0][:, agents[j]])
    values, _, _ = policy.evaluate_actions(obs, actions, RepresentativeGroups.of(index, k), agents=agents)
    full, _, _ = policy.evaluate_actions(obs, actions, RepresentativeGroups.of(index, k))
    th.testing.assert_close(values, th.gather(full, 1, agents[index]))
    rows, _ = policy.sampled_critic_parameters()
    assert len(rows) == (9 if critic == "conditioned" else 12)  # distinct head rows only
    before = policy.value_net.weight.detach().clone()
    values.sum().backward()
    policy.step_sampled_critic()
    moved = (policy.value_net.weight != before).any(dim=1).nonzero().flatten()
    assert th.equal(moved, th.sort(th.unique(policy.critic_rows(agents))).values)
    assert int(policy.critic_rows_steps) == 1


def test_sampled_critic_trains_saves_and_loads(tmp_path) -> None:
    model = _train(True, "em", critic_agents=8)
    assert model.policy.critic_agents == 8
    assert model.rollout_buffer.critic_agents is None  # set for the update only
    model.save(tmp_path / "model")
    loaded = RMDPPPO.load(tmp_path / "model", device="cpu")
    assert loaded.policy.critic_agents == 8
    assert loaded._critic_agent_generator.random() == model._critic_agent_generator.random()


def test_critic_agents_must_be_positive() -> None:
    with pytest.raises(ValueError, match="critic_agents=0"):
        MultiRepresentativePolicy(
            spaces.Box(-1.0, 1.0, (3,)),
            spaces.Box(-1.0, 1.0, (1,)),
            lambda _: 3e-4,
            n_agents=4,
            critic_agents=0,
        )


def _aggregate_model(
    n_steps: int, tracked: int, assigner: str = "em", compact: bool = True, critic: str = "auto"
) -> RMDPPPO:
    env = make_rmdp_vec_env(HC, n_envs=2, seed=3, env_kwargs={"n_agents": 30, "compact_rewards": compact})
    return RMDPPPO(
        "MlpPolicy",
        env,
        k=2,
        assigner=assigner,
        n_steps=n_steps,
        batch_size=100,
        n_epochs=1,
        seed=3,
        device="cpu",
        rollout_buffer_class=RMDPAggregateRolloutBuffer,
        rollout_buffer_kwargs={"tracked_agents": tracked},
        policy_kwargs={"critic": critic},
    )


@pytest.mark.parametrize("critic", ["per_representative", "conditioned"])
def test_aggregate_marginal_advantages_are_the_per_agent_ones(critic: str) -> None:
    # Tracking every agent, the buffer holds the per-agent advantages too: the aggregate GAE (from the
    # speeds and the critic latents) must give their alpha-weighted sums, time-limit bootstraps included.
    model = _aggregate_model(600, tracked=30, critic=critic)
    assert model.policy.critic_layout == critic
    buffer = model.rollout_buffer
    compared = []
    aggregate = buffer._compute_marginal_advantages

    def compare(alpha: np.ndarray) -> np.ndarray:
        marginal = aggregate(alpha)
        expected = RMDPRolloutBuffer._compute_marginal_advantages(buffer, alpha)
        np.testing.assert_allclose(marginal, expected, rtol=1e-4, atol=1e-4)
        compared.append(len(buffer.bootstraps))
        return marginal

    buffer._compute_marginal_advantages = compare  # type: ignore[method-assign]
    model.learn(3 * 2 * 600)
    assert len(compared) == 3 and sum(compared) == 2  # both slots cut their first episode at 1000 steps


def test_aggregate_episode_returns_are_the_summed_reward_vectors() -> None:
    # One rollout of 1100 steps: the same trajectory as the per-agent path, whose returns are the sums
    # of the reward vectors; the aggregate path sums the tents from the episode's speeds.
    plain = _train_one_rollout()
    aggregate = _aggregate_model(1100, tracked=8).learn(2 * 1100)
    for ours, expected in zip(aggregate.rollout_episode_returns, plain.rollout_episode_returns):
        assert ours.shape == expected.shape == (1, 30)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)
    assert np.array_equal(aggregate._last_obs, plain._last_obs)
    assert aggregate.rollout_buffer.n_agents == 8 and aggregate.rollout_buffer.tracked.shape == (2, 8)


def _train_one_rollout() -> RMDPPPO:
    env = make_rmdp_vec_env(HC, n_envs=2, seed=3, env_kwargs={"n_agents": 30, "compact_rewards": True})
    model = RMDPPPO("MlpPolicy", env, k=2, n_steps=1100, batch_size=100, n_epochs=1, seed=3, device="cpu")
    return model.learn(2 * 1100)


def test_aggregate_buffer_refuses_what_it_cannot_aggregate() -> None:
    with pytest.raises(ValueError, match="compact rewards"):
        _aggregate_model(64, tracked=8, compact=False).learn(128)
    with pytest.raises(ValueError, match="end-to-end"):
        _aggregate_model(64, tracked=8, assigner="end_to_end").learn(128)


def test_velocity_rewards_in_blocks_are_the_one_expression_rewards() -> None:
    # A rollout's (m, a) rewards go through the in-place blocks: the same float64 arithmetic, bit for bit.
    rng = np.random.default_rng(1)
    targets, speeds = rng.uniform(0.0, 4.0, 300), rng.uniform(-1.0, 5.0, (1000, 1))
    expected = (0.1 * np.clip(1.0 - np.abs(speeds - targets) / 0.2, 0.0, 1.0)).astype(np.float32)
    assert speeds.size * len(targets) > 32_768  # more than one block
    assert np.array_equal(velocity_rewards(speeds, targets, 4.0), expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("per_representative", [False, True])
@pytest.mark.parametrize("critic", ["per_representative", "conditioned"])
def test_pinned_critic_steps_as_the_lazy_adam(critic: str, per_representative: bool) -> None:
    # The same minibatches through the lazy Adam (rows gathered and scattered per step) and through the
    # pinned rows (one working copy stepped by the policy optimizer): the same rows, moments and steps.
    import copy

    k = 3
    if per_representative:  # each representative its own agents; 17 and 20 tracked for two of them
        agents = th.tensor([[0, 3, 17, 20], [4, 17, 20, 38], [1, 2, 20, 39]])
    else:
        agents = th.tensor([0, 3, 4, 17, 20, 38, 39])
    lazy = _policy_with_sampled_critic(critic, k)
    pinned = copy.deepcopy(lazy)
    generator = th.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        index = th.sort(th.randint(0, k, (16,), generator=generator)).values
        batches.append((th.randn(16, 64, generator=generator), RepresentativeGroups.of(index, k)))
    for latent, groups in batches:
        values = lazy._values_from_latent(latent, groups, agents)
        (values**2).mean().backward()
        lazy.step_sampled_critic()
    with pinned.pinned_critic(agents):
        for latent, groups in batches:
            pinned.optimizer.zero_grad()
            values = pinned._values_from_latent(latent, groups, agents)
            assert pinned.sampled_critic_parameters()[0].grad is None
            (values**2).mean().backward()
            pinned.optimizer.step()
            pinned.step_sampled_critic()  # the optimizer stepped the pinned rows already: nothing to do
    assert pinned._pinned_critic is None and len(pinned.optimizer.param_groups[0]["params"]) == len(
        list(pinned.parameters())
    )
    for name in ("critic_rows_exp_avg", "critic_rows_exp_avg_sq"):
        th.testing.assert_close(getattr(pinned, name), getattr(lazy, name), rtol=1e-5, atol=1e-9)
    th.testing.assert_close(pinned.value_net.weight, lazy.value_net.weight, rtol=1e-5, atol=1e-7)
    th.testing.assert_close(pinned.value_net.bias, lazy.value_net.bias, rtol=1e-5, atol=1e-7)
    assert int(pinned.critic_rows_steps) == int(lazy.critic_rows_steps) == 4
    rows = lazy.critic_rows(agents)
    others = th.ones(lazy.value_net.weight.shape[0], dtype=th.bool)
    others[rows] = False
    fresh = _policy_with_sampled_critic(critic, k)
    fresh.load_state_dict(pinned.state_dict())  # (the state dict has no trace of the pinned rows)
    assert th.equal(pinned.value_net.weight[others], lazy.value_net.weight[others])


@pytest.mark.parametrize("critic", ["per_representative", "conditioned"])
def test_pinned_critic_steps_only_the_minibatchs_representative(critic: str) -> None:
    # Rows in k blocks (a per-representative head's; a conditioned head's of (k, m) agents without
    # repeats) pinned as k pairs of leaves: a minibatch of representative 1 steps its rows and moments
    # only (as the reference code's separate PPOs), the lazy Adam without pinning likewise.
    agents = th.tensor([[0, 3, 17], [4, 18, 38], [1, 2, 39]])
    own = agents[1] + (40 if critic == "per_representative" else 0)
    for pin in (True, False):
        policy = _policy_with_sampled_critic(critic, 3)
        before = policy.value_net.weight.detach().clone()
        with policy.pinned_critic(agents) if pin else contextlib.nullcontext():
            policy.optimizer.zero_grad()
            policy._values_from_latent(th.randn(16, 64), 1, agents).pow(2).mean().backward()
            grads = [p.grad is not None for p in policy.sampled_critic_parameters()]
            policy.optimizer.step()
            policy.step_sampled_critic()
        assert grads == ([False, False, True, True, False, False] if pin else [True, True])
        moved = (policy.value_net.weight != before).any(dim=1).nonzero().flatten()
        assert th.equal(moved, own)
        stepped = policy.critic_rows_exp_avg.abs().sum(dim=1).nonzero().flatten()
        assert th.equal(stepped, own) and int(policy.critic_rows_steps) == 1


def test_pinned_critic_refuses_what_it_cannot_pin() -> None:
    exact = _policy_with_sampled_critic("per_representative", 2, n_agents=5)  # 7 >= 5 agents: exact critic
    with pytest.raises(ValueError, match="critic_agents"):
        with exact.pinned_critic(th.tensor([0, 1])):
            pass
    policy = _policy_with_sampled_critic("per_representative", 2)
    with policy.pinned_critic(th.tensor([0, 1])):
        with pytest.raises(RuntimeError, match="do not nest"):
            with policy.pinned_critic(th.tensor([2])):
                pass


def _minibatch_model(minibatches: str, k: int, n_envs: int, assigner: str = "em") -> RMDPPPO:
    env = make_rmdp_vec_env(HC, n_envs=n_envs, seed=3, env_kwargs={"n_agents": 30, "compact_rewards": True})
    return RMDPPPO(
        "MlpPolicy",
        env,
        k=k,
        assigner=assigner,
        n_steps=96,
        batch_size=48,
        n_epochs=2,
        seed=3,
        device="cpu",
        rollout_buffer_kwargs={"minibatches": minibatches},
    )


@pytest.mark.parametrize("n_envs", [3, 4])  # slots that keep their representative, and rotating ones
def test_per_representative_minibatches_partition_the_rollout(n_envs: int) -> None:
    model = _minibatch_model("per_representative", k=3, n_envs=n_envs).learn(2 * n_envs * 96)
    buffer = model.rollout_buffer
    seen, order = [], []
    for minibatch in buffer.get(40):  # 40 does not divide a representative's samples: short last pieces
        groups = minibatch.representatives
        assert groups.single is not None and set(groups.index.tolist()) == {groups.single}
        assert 1 <= len(groups.index) <= 40 and groups.counts[groups.single] == len(groups.index)
        order.append(groups.single)
        seen.append(minibatch.observations)
    samples = th.cat(seen)
    assert samples.shape[0] == n_envs * 96  # every sample once
    expected = buffer.observations.reshape(-1, buffer.observations.shape[-1])
    assert th.equal(th.sort(samples.sum(1)).values, th.sort(th.as_tensor(expected).sum(1)).values)
    assert order[:3] == [0, 1, 2]  # the representatives take turns


def test_per_representative_minibatches_with_one_representative_are_sb3s() -> None:
    _assert_same_training(
        _minibatch_model("mixed", k=1, n_envs=2).learn(384),
        _minibatch_model("per_representative", k=1, n_envs=2).learn(384),
    )


@pytest.mark.parametrize("assigner", ["em", "end_to_end"])
def test_per_representative_minibatches_train(assigner: str) -> None:
    mixed = _minibatch_model("mixed", k=2, n_envs=2, assigner=assigner).learn(384)
    ours = _minibatch_model("per_representative", k=2, n_envs=2, assigner=assigner).learn(384)
    assert ours.rollout_buffer.minibatches == "per_representative"
    assert not th.equal(ours.policy.action_net.weight, mixed.policy.action_net.weight)  # another training
    assert all(th.isfinite(p).all() for p in ours.policy.parameters())


def test_minibatches_must_be_known() -> None:
    with pytest.raises(ValueError, match="minibatches='by_agent'"):
        _minibatch_model("by_agent", k=2, n_envs=2)


def _pinned_aggregate_model(n_steps: int = 600, batch_size: int = 100, n_epochs: int = 1) -> RMDPPPO:
    # 30 agents, 8 tracked and pinned, one representative per minibatch
    env = make_rmdp_vec_env(HC, n_envs=2, seed=3, env_kwargs={"n_agents": 30, "compact_rewards": True})
    return RMDPPPO(
        "MlpPolicy",
        env,
        k=2,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=n_epochs,
        seed=3,
        device="cpu",
        policy_kwargs={"critic_agents": 8},
        rollout_buffer_class=RMDPAggregateRolloutBuffer,
        rollout_buffer_kwargs={"tracked_agents": 8, "minibatches": "per_representative"},
    )


def test_aggregate_buffer_pins_its_tracked_agents_for_the_critic(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tracked agents fewer than the population and a critic on all of them: the update pins their rows
    # (the policy reads the working copy in every minibatch), and training writes them back.
    model = _pinned_aggregate_model(n_steps=64, batch_size=32, n_epochs=2)
    pinned_reads = []
    values_from_latent = model.policy._values_from_latent

    def spy(latent: th.Tensor, representatives: object, agents: th.Tensor | None = None) -> th.Tensor:
        pin = model.policy._pinned_critic
        if th.is_grad_enabled() and agents is not None:
            pinned_reads.append(pin is not None and agents is pin.agents)
        return values_from_latent(latent, representatives, agents)  # type: ignore[arg-type]

    monkeypatch.setattr(model.policy, "_values_from_latent", spy)
    tracked = []
    draw = model.rollout_buffer.draw_tracked

    def record(*args: object) -> None:
        draw(*args)  # type: ignore[arg-type]
        tracked.append(model.rollout_buffer.tracked.copy())

    monkeypatch.setattr(model.rollout_buffer, "draw_tracked", record)
    before = model.policy.value_net.weight.detach().clone()
    model.learn(2 * 64 * 2)
    assert pinned_reads and all(pinned_reads) and len(pinned_reads) == 2 * 2 * 4  # updates x epochs x batches
    # one representative per minibatch: its block of rows steps, the other's has no gradient and stays
    assert int(model.policy.critic_rows_steps) == len(pinned_reads) // 2
    moved = (model.policy.value_net.weight != before).any(dim=1).view(2, 30)
    assert len(tracked) == 2 and all(t.shape == (2, 8) for t in tracked)
    for j in range(2):  # each representative's block: the rows of its tracked agents of the two rollouts
        assert set(moved[j].nonzero().flatten().tolist()) == set(np.concatenate([t[j] for t in tracked]))


def _three_representative_buffer(tracked_from: str) -> RMDPAggregateRolloutBuffer:
    box = spaces.Box(-1, 1, (3,))
    return RMDPAggregateRolloutBuffer(
        64, box, box, "cpu", n_envs=3, n_agents=30, k=3, tracked_agents=8, tracked_from=tracked_from
    )


def test_tracked_agents_are_each_representatives_assigned_ones() -> None:
    buffer = _three_representative_buffer("assignment")
    alpha = np.zeros((30, 3))
    alpha[np.arange(30), np.r_[np.zeros(20, int), np.ones(5, int), np.full(5, 2)]] = 1.0
    alpha[25:, :] = 0.0  # agents 25-29 take their outside option: nobody's
    buffer.draw_tracked(np.random.default_rng(0), alpha)
    tracked = buffer.tracked
    assert tracked.shape == (3, 8) and all(np.array_equal(row, np.unique(row)) for row in tracked)
    assert set(tracked[0]) <= set(range(20))  # 20 assigned: a sample of 8 of them
    assert set(range(20, 25)) <= set(tracked[1])  # 5 assigned: all of them, and 3 others
    assert len(set(tracked[2])) == 8  # none assigned: 8 of the others
    again = _three_representative_buffer("population")
    again.draw_tracked(np.random.default_rng(0), alpha)
    assert np.array_equal(again.tracked, np.sort(np.random.default_rng(0).choice(30, 8, replace=False)))
    with pytest.raises(ValueError, match="tracked_from='agents'"):
        _three_representative_buffer("agents")


def test_one_group_normalization_is_the_grouped_one() -> None:
    from sb3_rmdp.buffers import normalize_one_group, normalize_sorted_groups

    advantages = np.random.default_rng(2).normal(3.0, 2.0, 64).astype(np.float32)
    counts = np.array([0, 64, 0])
    np.testing.assert_allclose(
        normalize_one_group(advantages), normalize_sorted_groups(advantages, counts), rtol=1e-5, atol=1e-6
    )
    assert normalize_one_group(advantages).dtype == np.float32


def test_aggregate_resume_is_bit_exact(tmp_path) -> None:
    # 600 steps per slot: an episode (1000 steps) is in progress at every save. Save mid-episode, load
    # into the env pickled at save time: the episode statistics in progress, the agent generator, the
    # critic rows' Adam moments come back, and training goes on as if never stopped.
    import cloudpickle

    uninterrupted = _pinned_aggregate_model().learn(3 * 1200)
    model = _pinned_aggregate_model().learn(1200)
    model.save(tmp_path / "model")
    env = cloudpickle.loads(cloudpickle.dumps(model.get_env()))
    th.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002  (a new process: the global streams come from the zip)
    loaded = RMDPPPO.load(tmp_path / "model", env=env, device="cpu", force_reset=False)
    assert loaded.rollout_buffer.minibatches == "per_representative"
    assert (
        loaded._episode_statistics == model._episode_statistics and len(model._episode_statistics[0]) == 600
    )
    loaded.learn(2 * 1200, reset_num_timesteps=False)
    for (name, p), q in zip(uninterrupted.policy.state_dict().items(), loaded.policy.state_dict().values()):
        assert th.equal(p, q), name
    assert np.array_equal(uninterrupted.assigner.q_table, loaded.assigner.q_table)
    assert np.array_equal(uninterrupted.training_returns, loaded.training_returns, equal_nan=True)
    assert uninterrupted.assigner.n_e_steps == loaded.assigner.n_e_steps


def test_aggregate_buffer_runs_kmeans() -> None:
    # K-means pretrains, records the reward vectors from the statistics, and clusters (then a fixed
    # assignment: the aggregate marginal advantages apply)
    model = _aggregate_model(300, tracked=8, assigner="kmeans").learn(2 * 300 * 6)
    assert model.assigner.clustered and set(np.unique(model.assignment())) <= {0, 1}
