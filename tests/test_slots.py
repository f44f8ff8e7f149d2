"""Env slots that are not a multiple of k: representatives rotate over the slots at episode ends."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch as th
from conftest import assert_same_training, make_scaled
from stable_baselines3.common.callbacks import BaseCallback

from sb3_rmdp import RMDPPPO, EMAssigner, FixedAssigner
from sb3_rmdp.envs import make_rmdp_vec_env

SMALL = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0, policy_kwargs=dict(net_arch=[8]))


class _EpisodesKeepTheirRepresentative(BaseCallback):
    """Asserts that a slot's representative changes only when its episode ends."""

    def _on_training_start(self) -> None:
        self.previous = self.model._slot_index.copy()  # type: ignore[attr-defined]
        self.changes = 0

    def _on_step(self) -> bool:
        # called after the step, before the rotation: the previous step's rotation is visible now
        current = self.model._slot_index  # type: ignore[attr-defined]
        changed = current != self.previous
        assert not np.any(changed & ~self.ended), "a representative changed in the middle of an episode"
        self.changes += int(changed.sum())
        self.ended = self.locals["dones"].copy()
        self.previous = current.copy()
        return True

    ended = np.ones(0, dtype=bool)


def test_four_slots_three_representatives() -> None:
    model = RMDPPPO("MlpPolicy", make_scaled, k=3, n_envs=4, **SMALL)
    assert model.rotates_representatives
    callback = _EpisodesKeepTheirRepresentative()
    callback.ended = np.ones(4, dtype=bool)
    model.learn(6 * 4 * 32, callback=callback)
    assert callback.changes > 0
    steps = model._representative_steps
    assert steps.sum() == model.num_timesteps
    assert steps.max() - steps.min() <= 0.25 * steps.mean(), steps  # the data is shared about evenly
    # every sample of the buffer carries the representative that acted
    buffer = model.rollout_buffer
    assert set(np.unique(buffer.step_representatives)) == {0, 1, 2}
    assert not buffer.slots_keep_their_representatives


def test_more_representatives_than_slots() -> None:
    env = make_rmdp_vec_env(partial(make_scaled, n_agents=50), n_envs=4)
    model = RMDPPPO("MlpPolicy", env, k=50, assigner=EMAssigner(warm_start_updates=0), **SMALL)
    model.learn(40 * 4 * 32)
    assert np.count_nonzero(model._representative_steps) == 50  # k=50 did not need 50 env slots
    assert np.bincount(model.assignment(), minlength=50).min() >= 1


def test_fixed_marginal_advantages_follow_each_steps_representative() -> None:
    alpha = np.array([[1.0, 0.0], [0.3, 0.7], [0.0, 1.0]], dtype=np.float32)
    model = RMDPPPO("MlpPolicy", make_scaled, k=2, n_envs=3, assigner=FixedAssigner(alpha), **SMALL)
    model.learn(4 * 3 * 32)
    buffer = model.rollout_buffer
    marginal = buffer._compute_marginal_advantages(alpha)
    expected = np.einsum("tei,ite->te", buffer.advantages, alpha[:, buffer.step_representatives])
    np.testing.assert_allclose(marginal, expected, rtol=1e-6)


@pytest.mark.parametrize("n_envs", [3, 5])
def test_resume_with_rotating_representatives_is_bit_exact(n_envs: int, tmp_path: Path) -> None:
    def model() -> RMDPPPO:
        assigner = EMAssigner(mixing=0.5, warm_start_updates=1, max_warm_start_fraction=1.0)
        return RMDPPPO(
            "MlpPolicy", make_rmdp_vec_env(make_scaled, n_envs=n_envs), k=2, assigner=assigner, **SMALL
        )

    uninterrupted = model().learn(4 * n_envs * 32)
    first = model().learn(2 * n_envs * 32)
    first.save(tmp_path / "model.zip")
    env = cloudpickle.loads(cloudpickle.dumps(first.get_env()))
    th.manual_seed(9)
    resumed = RMDPPPO.load(tmp_path / "model.zip", env=env, force_reset=False)
    np.testing.assert_array_equal(resumed._slot_index, first._slot_index)
    resumed.learn(2 * n_envs * 32, reset_num_timesteps=False)
    assert_same_training(uninterrupted, resumed)
    np.testing.assert_array_equal(resumed._representative_steps, uninterrupted._representative_steps)
