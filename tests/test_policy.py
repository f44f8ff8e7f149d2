"""MultiRepresentativePolicy: only each sample's representative rows, equal to the full heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from conftest import make_scaled
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from sb3_rmdp import RMDPPPO
from sb3_rmdp.policies import (
    AUTO_CRITIC_MAX_OUTPUTS,
    GroupedLinear,
    MultiRepresentativePolicy,
    resolve_critic,
)


@pytest.mark.parametrize(("env_id", "k", "n_agents"), [("CartPole-v1", 3, 5), ("Pendulum-v1", 4, 6)])
def test_representative_rows_equal_the_full_heads(env_id: str, k: int, n_agents: int) -> None:
    model = RMDPPPO("MlpPolicy", lambda: make_scaled(env_id, n_agents=n_agents), k=k, n_envs=k, seed=0)
    policy = model.policy
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(11)]))
    representatives = th.as_tensor(np.random.default_rng(0).integers(0, k, 11))
    actions = th.as_tensor(np.stack([model.action_space.sample() for _ in range(11)])).float()
    if env_id == "CartPole-v1":
        actions = actions.long()
    values, log_prob, entropy = policy.evaluate_actions(obs, actions, representatives)
    assert values.shape == (11, n_agents)

    latent_pi, latent_vf = policy.mlp_extractor(policy.extract_features(obs))
    all_values = policy.value_net(latent_vf).view(11, k, n_agents)
    assert th.allclose(values, all_values[th.arange(11), representatives], atol=1e-6)
    all_heads = policy.action_net(latent_pi).view(11, k, -1)
    for b in range(11):
        j = int(representatives[b])
        single = policy._get_action_dist_from_latent(latent_pi[b : b + 1], j)
        assert th.allclose(log_prob[b], single.log_prob(actions[b : b + 1]).squeeze(), atol=1e-6)
        if env_id == "CartPole-v1":
            assert th.allclose(single.distribution.logits, th.log_softmax(all_heads[b, j], -1), atol=1e-6)
    assert entropy is not None and entropy.shape == (11,)


def test_predict_serves_the_named_representative() -> None:
    model = RMDPPPO("MlpPolicy", lambda: make_scaled("CartPole-v1", n_agents=3), k=3, n_envs=3, seed=0)
    with th.no_grad():
        # Make the heads disagree: representative j always pushes action j % 2.
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.copy_(th.tensor([5.0, -5.0, -5.0, 5.0, 5.0, -5.0]))
    obs = np.zeros((2, 4), dtype=np.float32)
    for j, expected in enumerate([0, 1, 0]):
        actions, _ = model.predict(obs, deterministic=True, representative=j)
        assert actions.tolist() == [expected, expected]
    actions, _ = model.predict(
        np.zeros((3, 4), np.float32), deterministic=True, representative=np.array([0, 1, 2])
    )
    assert actions.tolist() == [0, 1, 0]


def test_truncation_is_bootstrapped_per_agent_with_the_collecting_critic() -> None:
    # Pendulum ends by time limit at step 200; with two slots (representatives 0 and 1) both truncate
    # on the last step of the first rollout.
    model = RMDPPPO(
        "MlpPolicy",
        lambda: make_scaled("Pendulum-v1", n_agents=3),
        k=2,
        n_envs=2,
        n_steps=200,
        batch_size=50,
        seed=0,
    )
    checked = []

    class Spy(BaseCallback):
        def _on_step(self) -> bool:
            self.infos = self.locals["infos"]
            return True

    spy = Spy()
    original = model.rollout_buffer.add

    def add(obs, action, reward, episode_start, value, log_prob, **kwargs):
        if model.rollout_buffer.pos == 199:
            for e, info in enumerate(spy.infos):
                assert info["TimeLimit.truncated"]
                terminal_obs = th.as_tensor(info["terminal_observation"][None])
                with th.no_grad():
                    v = model.policy.predict_values(terminal_obs, representatives=[e]).numpy()[0]
                expected = info["agent_rewards"] + np.float32(model.gamma) * v
                assert np.allclose(reward[e], expected, rtol=0, atol=1e-6)
                assert not np.allclose(reward[e], info["agent_rewards"])
                checked.append(e)
        return original(obs, action, reward, episode_start, value, log_prob, **kwargs)

    model.rollout_buffer.add = add  # type: ignore[method-assign]
    model.learn(400, callback=spy)
    assert checked == [0, 1]
    # The assigner sees the raw returns, without the bootstrap: agent i gets (i + 1) x the pendulum return.
    for returns in model.rollout_episode_returns:
        assert returns.shape == (1, 3)
        assert np.allclose(returns[0] / np.arange(1, 4), returns[0, 0], rtol=1e-5)


def test_conditioned_critic_has_n_outputs_and_one_vector_per_representative(tmp_path) -> None:
    from stable_baselines3 import PPO

    from sb3_rmdp.export import export_representative

    model = RMDPPPO(
        "MlpPolicy",
        make_scaled,
        k=2,
        n_envs=2,
        n_steps=64,
        batch_size=64,
        n_epochs=2,
        seed=0,
        policy_kwargs={"critic": "conditioned", "net_arch": [16, 16]},
    )
    policy = model.policy
    assert policy.value_net.out_features == 3 and policy.critic_embedding.shape == (2, 16)
    model.learn(256)
    # The representatives' vectors were learned apart, so their critics differ on the same states.
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(-1, 4)[:8])
    with th.no_grad():
        values = [policy.predict_values(obs, representatives=j) for j in (0, 1)]
        assert values[0].shape == (8, 3) and not th.allclose(values[0], values[1])
        # forward, evaluate_actions and predict_values agree, per sample, with mixed representatives
        mixed = th.tensor([0, 1] * 4)
        _, forward_values, _ = policy(obs, representatives=mixed)
        actions = th.zeros(8, dtype=th.long)
        evaluated, _, _ = policy.evaluate_actions(obs, actions, representatives=mixed)
        expected = th.where((mixed == 0)[:, None], values[0], values[1])
        th.testing.assert_close(forward_values, expected)
        th.testing.assert_close(evaluated, expected)
    # Saved and loaded with its layout; exported with the vector folded into the first critic bias.
    model.save(tmp_path / "m.zip")
    assert RMDPPPO.load(tmp_path / "m.zip").policy.critic == "conditioned"
    exported = PPO.load(export_representative(model, 1, tmp_path / "rep1.zip", agents=[0, 2]), device="cpu")
    with th.no_grad():
        th.testing.assert_close(exported.policy.predict_values(obs)[:, 0], values[1][:, [0, 2]].mean(dim=1))


def test_unknown_critic_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="critic='shared'"):
        RMDPPPO("MlpPolicy", make_scaled, k=2, n_envs=2, policy_kwargs={"critic": "shared"})


def test_auto_critic_keeps_the_paper_head_until_it_outgrows_the_step() -> None:
    assert resolve_critic("auto", 5, 100) == "per_representative"
    assert resolve_critic("auto", 10, AUTO_CRITIC_MAX_OUTPUTS // 10) == "per_representative"
    assert resolve_critic("auto", 10, AUTO_CRITIC_MAX_OUTPUTS // 10 + 1) == "conditioned"
    assert resolve_critic("per_representative", 50, 1000) == "per_representative"
    space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    big = MultiRepresentativePolicy(space, space, lambda _: 1e-3, k=50, n_agents=1000)
    small = MultiRepresentativePolicy(space, space, lambda _: 1e-3, k=5, n_agents=100)
    # The policy stores the resolved layout, so a saved model rebuilds the same network.
    assert big.critic == big._get_constructor_parameters()["critic"] == "conditioned"
    assert big.value_net.out_features == 1000
    assert small.critic == "per_representative" and small.value_net.out_features == 500


@pytest.mark.parametrize("counts", [(3, 0, 5, 1), (0, 0, 9, 0), (2, 2, 2, 2)])
def test_grouped_linear_equals_per_sample_linear_forward_and_backward(counts: tuple[int, ...]) -> None:
    gen = th.Generator().manual_seed(sum(counts))
    k, size, width, batch = len(counts), 7, 5, sum(counts)
    weight = th.randn(k, size, width, generator=gen, requires_grad=True)
    bias = th.randn(k, size, generator=gen, requires_grad=True)
    latent = th.randn(batch, width, generator=gen, requires_grad=True)
    index = th.repeat_interleave(th.arange(k), th.tensor(counts))
    upstream = th.randn(batch, size, generator=gen)

    out = GroupedLinear.apply(latent, weight, bias, counts)
    grads = th.autograd.grad((out * upstream).sum(), (latent, weight, bias))
    expected = th.einsum("bi,boi->bo", latent, weight[index]) + bias[index]
    expected_grads = th.autograd.grad((expected * upstream).sum(), (latent, weight, bias))

    th.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        th.testing.assert_close(got, want)
    # A representative without samples gets exactly zero gradient, as with a dense head.
    assert all(float(grads[1][j].abs().sum()) == 0.0 for j in range(k) if counts[j] == 0)


@pytest.mark.parametrize(
    ("k", "size"),
    [(3, 4), (20, 6), (20, 40), (3, 200)],  # full + gather, per-sample rows, and grouped (twice)
)
def test_every_head_layout_equals_the_per_sample_product(k: int, size: int) -> None:
    from sb3_rmdp.policies import FULL_HEAD_MAX_OUTPUTS, PER_SAMPLE_MAX_SIZE, PER_SAMPLE_MIN_K

    model = RMDPPPO("MlpPolicy", lambda: make_scaled("CartPole-v1", n_agents=k), k=k, n_envs=k, seed=0)
    policy = model.policy
    gen = th.Generator().manual_seed(k * size)
    layer = th.nn.Linear(8, k * size)
    latent = th.randn(13, 8, generator=gen, requires_grad=True)
    index = th.sort(th.randint(0, k, (13,), generator=gen)).values
    upstream = th.randn(13, size, generator=gen)
    groups = policy.as_representatives(index, 13)
    per_sample = k >= PER_SAMPLE_MIN_K and size <= PER_SAMPLE_MAX_SIZE and k * size <= FULL_HEAD_MAX_OUTPUTS
    assert per_sample == ((k, size) == (20, 6))

    out = policy._per_representative_linear(layer, latent, groups, size)
    params = (latent, layer.weight, layer.bias)
    grads = th.autograd.grad((out * upstream).sum(), params)
    weight, bias = layer.weight.view(k, size, 8), layer.bias.view(k, size)
    expected = th.einsum("bi,boi->bo", latent, weight[index]) + bias[index]
    expected_grads = th.autograd.grad((expected * upstream).sum(), params)

    th.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        th.testing.assert_close(got, want)
