"""Per-agent GAE equals SB3's GAE applied agent by agent, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.utils import explained_variance

from sb3_rmdp.buffers import RMDPRolloutBuffer

OBS = spaces.Box(-1, 1, (2,))
ACTIONS = spaces.Discrete(2)


class OverwritingBuffer(RMDPRolloutBuffer):
    """GAE writes the advantages over the rewards, as the aggregate buffer's does."""

    advantages_overwrite_rewards = True


@pytest.mark.parametrize("n_agents", [1, 3, 17])
@pytest.mark.parametrize("gamma", [0.9, 0.99, 1.0, np.float64(0.99)])  # a NumPy float64 promotes, as in SB3
@pytest.mark.parametrize("gae_lambda", [0.0, 0.95, 1.0])
@pytest.mark.parametrize("buffer_class", [RMDPRolloutBuffer, OverwritingBuffer])
def test_per_agent_gae_is_sb3_gae_per_agent(
    n_agents: int, gamma: float, gae_lambda: float, buffer_class: type[RMDPRolloutBuffer]
) -> None:
    rng = np.random.default_rng(n_agents * 100 + int(gamma * 10) + int(gae_lambda * 7))
    n_steps, n_envs = 33, 4
    rewards = rng.normal(size=(n_steps, n_envs, n_agents)).astype(np.float32)
    values = rng.normal(size=(n_steps, n_envs, n_agents)).astype(np.float32)
    episode_starts = (rng.random((n_steps, n_envs)) < 0.15).astype(np.float32)
    # A truncated episode's last reward carries gamma * V(terminal obs), as collect_rollouts adds it.
    truncated = (rng.random((n_steps, n_envs)) < 0.1) & (np.roll(episode_starts, -1, axis=0) > 0)
    terminal_values = rng.normal(size=(n_steps, n_envs, n_agents)).astype(np.float32)
    rewards[truncated] += gamma * terminal_values[truncated]
    last_values = rng.normal(size=(n_envs, n_agents)).astype(np.float32)
    dones = rng.random(n_envs) < 0.3

    ours = buffer_class(n_steps, OBS, ACTIONS, "cpu", gae_lambda, gamma, n_envs, n_agents=n_agents, k=2)
    assert (ours.advantages is ours.rewards) == buffer_class.advantages_overwrite_rewards
    for t in range(n_steps):
        ours.add(
            np.zeros((n_envs, 2), np.float32),
            np.zeros((n_envs, 1)),
            rewards[t],
            episode_starts[t],
            th.as_tensor(values[t]),
            th.zeros(n_envs),
        )
    ours.compute_returns_and_advantage(th.as_tensor(last_values), dones)

    for i in range(n_agents):
        sb3 = RolloutBuffer(n_steps, OBS, ACTIONS, "cpu", gae_lambda, gamma, n_envs)
        for t in range(n_steps):
            sb3.add(
                np.zeros((n_envs, 2), np.float32),
                np.zeros((n_envs, 1)),
                rewards[t, :, i],
                episode_starts[t],
                th.as_tensor(values[t, :, i]),
                th.zeros(n_envs),
            )
        sb3.compute_returns_and_advantage(th.as_tensor(last_values[:, i]), dones)
        # bytes, not values: -0.0 and +0.0 must agree too
        assert ours.advantages[..., i].tobytes() == sb3.advantages.tobytes(), f"agent {i}"
        assert ours.returns[..., i].tobytes() == sb3.returns.tobytes(), f"agent {i}"


def test_samples_carry_their_slot_representative() -> None:
    n_steps, n_envs, k, n_agents = 5, 6, 3, 2
    buffer = RMDPRolloutBuffer(n_steps, OBS, ACTIONS, "cpu", 0.95, 0.99, n_envs, n_agents=n_agents, k=k)
    for _t in range(n_steps):
        # Encode the slot in the observation to check the pairing after shuffling.
        obs = np.tile(np.arange(n_envs, dtype=np.float32)[:, None], (1, 2))
        buffer.add(
            obs,
            np.zeros((n_envs, 1)),
            np.zeros((n_envs, n_agents)),
            np.zeros(n_envs),
            th.zeros(n_envs, n_agents),
            th.zeros(n_envs),
        )
    buffer.compute_returns_and_advantage(th.zeros(n_envs, n_agents), np.zeros(n_envs, dtype=bool))
    batches = list(buffer.get(batch_size=7))
    assert sum(len(b.representatives.index) for b in batches) == n_steps * n_envs
    for batch in batches:
        slots = batch.observations[:, 0].long()
        index = batch.representatives.index
        assert th.equal(index, slots % k)
        # Grouped for the policy: sorted by representative, with the group sizes.
        assert th.equal(index, th.sort(index).values)
        assert batch.representatives.counts == th.bincount(index, minlength=k).tolist()
        assert batch.advantages.shape == (len(slots), n_agents)


def test_minibatches_read_sb3s_env_major_samples_in_place() -> None:
    """Each minibatch row is the sample SB3 would give for the same index, without a flattened copy."""
    n_steps, n_envs, k, n_agents = 6, 4, 2, 3
    buffer = RMDPRolloutBuffer(n_steps, OBS, ACTIONS, "cpu", 0.95, 0.99, n_envs, n_agents=n_agents, k=k)
    rng = np.random.default_rng(3)
    for t in range(n_steps):
        obs = np.stack([[t, e] for e in range(n_envs)]).astype(np.float32)  # (step, slot) in the obs
        buffer.add(
            obs,
            np.zeros((n_envs, 1)),
            rng.normal(size=(n_envs, n_agents)),
            np.zeros(n_envs),
            th.as_tensor(rng.normal(size=(n_envs, n_agents)), dtype=th.float32),
            th.as_tensor(rng.normal(size=n_envs), dtype=th.float32),
        )
    buffer.compute_returns_and_advantage(th.zeros(n_envs, n_agents), np.zeros(n_envs, dtype=bool))
    np.testing.assert_array_equal(buffer.returns, buffer.advantages + buffer.values)
    for samples_old_values in (True, False):
        buffer.samples_old_values = samples_old_values
        for batch in buffer.get(batch_size=5):
            t, e = batch.observations[:, 0].long().numpy(), batch.observations[:, 1].long().numpy()
            np.testing.assert_array_equal(batch.returns.numpy(), buffer.returns[t, e])
            np.testing.assert_array_equal(batch.advantages.numpy(), buffer.advantages[t, e])
            np.testing.assert_array_equal(batch.old_log_prob.numpy(), buffer.log_probs[t, e])
            if samples_old_values:
                assert batch.old_values is not None
                np.testing.assert_array_equal(batch.old_values.numpy(), buffer.values[t, e])
            else:
                assert batch.old_values is None


def test_explained_variance_of_large_buffers_equals_sb3s() -> None:
    rng = np.random.default_rng(7)
    n_steps, n_envs, n_agents = 40, 4, 6
    buffer = RMDPRolloutBuffer(n_steps, OBS, ACTIONS, "cpu", 0.95, 0.99, n_envs, n_agents=n_agents, k=2)
    buffer.values[:] = rng.normal(3.0, 2.0, size=(n_steps, n_envs, n_agents))
    buffer.advantages[:] = rng.normal(0.5, 1.0, size=(n_steps, n_envs, n_agents))
    np.add(buffer.advantages, buffer.values, out=buffer.returns)
    flat = RolloutBuffer.swap_and_flatten  # SB3's env-major order, in which PPO logs it
    expected = explained_variance(flat(buffer.values).ravel(), flat(buffer.returns).ravel())
    assert buffer.explained_variance() == expected  # small buffers: SB3's function itself
    # above the threshold: in place, from the stored advantages
    assert buffer.explained_variance(exact_up_to=n_agents) == pytest.approx(expected, rel=1e-6)
    buffer.values[:] = 1.0
    buffer.advantages[:] = 0.0
    buffer.returns[:] = 1.0
    assert np.isnan(buffer.explained_variance(exact_up_to=n_agents))


@pytest.mark.parametrize("counts", [(5, 1, 0, 9), (64,), (2, 2, 0, 0, 30), (1, 1, 1)])
def test_numpy_group_normalization_equals_the_torch_one(counts: tuple[int, ...]) -> None:
    from sb3_rmdp.buffers import normalize_sorted_groups
    from sb3_rmdp.ppo import normalize_per_representative

    rng = np.random.default_rng(len(counts))
    advantages = rng.normal(2.0, 3.0, size=sum(counts)).astype(np.float32)
    representatives = np.repeat(np.arange(len(counts)), counts)
    expected = normalize_per_representative(
        th.as_tensor(advantages), th.as_tensor(representatives), len(counts)
    ).numpy()
    got = normalize_sorted_groups(advantages, np.asarray(counts))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.all(got[np.repeat(np.asarray(counts), counts) == 1] == 0.0)


def _fill(buffer: RMDPRolloutBuffer, rng: np.random.Generator) -> None:
    n_envs, n_agents = buffer.n_envs, buffer.n_agents
    for _t in range(buffer.buffer_size):
        buffer.add(
            rng.normal(size=(n_envs, 2)).astype(np.float32),
            rng.integers(0, 2, size=(n_envs, 1)),
            rng.normal(size=(n_envs, n_agents)).astype(np.float32),
            (rng.random(n_envs) < 0.2).astype(np.float32),
            th.as_tensor(rng.normal(size=(n_envs, n_agents)), dtype=th.float32),
            th.as_tensor(rng.normal(size=n_envs), dtype=th.float32),
        )
    buffer.compute_returns_and_advantage(
        th.as_tensor(rng.normal(size=(n_envs, n_agents)), dtype=th.float32), rng.random(n_envs) < 0.3
    )


@pytest.mark.parametrize("n_agents", [1, 3, 5, 8])
@pytest.mark.parametrize("normalize", [False, True])
def test_a_reused_buffer_gives_sb3_layout_minibatches_bit_for_bit(n_agents: int, normalize: bool) -> None:
    """Second rollout into the reused arrays; every minibatch tensor equals the one built from SB3's
    flattened (swap_and_flatten) copies, fixed-assignment marginal advantages included."""
    n_steps, n_envs, k = 7, 6, 3
    rng = np.random.default_rng(n_agents)
    buffer = RMDPRolloutBuffer(n_steps, OBS, ACTIONS, "cpu", 0.95, 0.99, n_envs, n_agents=n_agents, k=k)
    for _rollout in range(2):
        buffer.reset()
        _fill(buffer, rng)
    alpha = rng.dirichlet(np.ones(k), size=n_agents).astype(np.float32)  # (n_agents, k)
    buffer.fix_assignment(alpha, normalize=normalize)

    flat = RolloutBuffer.swap_and_flatten
    advantages = flat(buffer.advantages)
    slot_of_sample = np.repeat(np.arange(n_envs), n_steps)
    marginal = np.empty(n_steps * n_envs, dtype=np.float32)
    for e in range(n_envs):
        rows = slot_of_sample == e
        marginal[rows] = advantages[rows] @ alpha[:, e % k]
    np.random.seed(11)  # noqa: NPY002  (the buffer draws SB3's permutation from the global stream)
    batches = list(buffer.get(batch_size=8))
    np.random.seed(11)  # noqa: NPY002
    permutation = np.random.permutation(n_steps * n_envs)  # noqa: NPY002
    for start, batch in zip(range(0, n_steps * n_envs, 8), batches, strict=True):
        inds = permutation[start : start + 8]
        inds = inds[np.argsort(buffer.sample_representatives[inds], kind="stable")]
        expected_marginal = marginal[inds]
        if normalize:
            from sb3_rmdp.buffers import normalize_sorted_groups

            counts = np.bincount(buffer.sample_representatives[inds], minlength=k)
            expected_marginal = normalize_sorted_groups(expected_marginal, counts)
        assert batch.advantages.numpy().tobytes() == expected_marginal.tobytes()
        assert batch.returns.numpy().tobytes() == flat(buffer.returns)[inds].tobytes()
        assert batch.observations.numpy().tobytes() == flat(buffer.observations)[inds].tobytes()
        assert batch.old_log_prob.numpy().tobytes() == flat(buffer.log_probs)[inds].ravel().tobytes()
