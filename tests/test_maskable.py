"""``RMDPMaskablePPO``: sb3-contrib's MaskablePPO at n = k = 1 bit for bit, masks on every representative."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from conftest import ScaledRewardsEnv, assert_same_training
from sb3_contrib import MaskablePPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiDiscrete
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.callbacks import BaseCallback

from sb3_rmdp import RMDPA2C, RMDPPPO, RMDPMaskablePPO, export_representative
from sb3_rmdp.assigners import make_assigner
from sb3_rmdp.envs import SingleAgentRMDP, make_rmdp_vec_env
from sb3_rmdp.welfare import evaluate_agent_returns

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, seed=1)
ENVS = {
    "discrete": lambda: InvalidActionEnvDiscrete(dim=8, n_invalid_actions=4),
    "multi-discrete": lambda: InvalidActionEnvMultiDiscrete(dims=[3, 4], n_invalid_actions=3),
}


@pytest.mark.parametrize("env_name", sorted(ENVS))
def test_one_agent_one_representative_is_sb3_contribs_maskable_ppo(env_name: str) -> None:
    np.random.seed(0)  # noqa: NPY002  (the envs draw their invalid actions from NumPy's global stream)
    reference = MaskablePPO("MlpPolicy", ENVS[env_name](), **SMALL).learn(3 * 64)
    np.random.seed(0)  # noqa: NPY002
    ours = RMDPMaskablePPO("MlpPolicy", SingleAgentRMDP(ENVS[env_name]()), k=1, **SMALL).learn(3 * 64)
    assert_same_training(reference, ours)


def _masked_rmdp() -> Any:
    return ScaledRewardsEnv(InvalidActionEnvDiscrete(dim=8, n_invalid_actions=4), scales=(1.0, -1.0, 2.0))


class _CheckMasks(BaseCallback):
    """Asserts at every step that each slot's action was valid under the mask it was taken with."""

    def _on_step(self) -> bool:
        masks, actions = self.locals["buffer_extras"]["action_masks"], self.locals["actions"]
        assert np.all(np.take_along_axis(np.asarray(masks), actions.reshape(-1, 1), axis=1))
        return True


@pytest.mark.parametrize("assigner", ["em", "end_to_end", "kmeans", "random", "oracle"])
def test_every_assigner_trains_on_valid_actions_only(assigner: str, tmp_path: Path) -> None:
    env = make_rmdp_vec_env(_masked_rmdp, n_envs=2)
    model = RMDPMaskablePPO("MlpPolicy", env, k=2, assigner=make_assigner(assigner), **SMALL)
    model.learn(3 * 128, callback=_CheckMasks())
    assert set(model.assignment()) <= {0, 1} and len(model.assignment()) == 3
    if assigner in ("em", "random", "kmeans"):  # these never leave a representative without agents
        assert np.bincount(model.assignment(), minlength=2).min() >= 1
    model.save(tmp_path / "masked.zip")
    loaded = RMDPMaskablePPO.load(tmp_path / "masked.zip", env=model.get_env(), force_reset=False)
    loaded.learn(128, reset_num_timesteps=False, callback=_CheckMasks())
    table = evaluate_agent_returns(loaded, make_rmdp_vec_env(_masked_rmdp), n_episodes=1)
    assert table.shape == (3, 2) and np.all(np.isfinite(table))


def test_predict_applies_the_masks_of_every_representative() -> None:
    model = RMDPMaskablePPO("MlpPolicy", make_rmdp_vec_env(_masked_rmdp, n_envs=2), k=2, **SMALL)
    obs = np.arange(8)
    masks = np.zeros((8, 8), dtype=bool)
    masks[np.arange(8), (np.arange(8) * 3) % 8] = True  # one valid action per observation
    for j in range(2):
        for deterministic in (True, False):
            actions, _ = model.predict(obs, representative=j, action_masks=masks, deterministic=deterministic)
            np.testing.assert_array_equal(actions, (np.arange(8) * 3) % 8)


def test_a_representative_exports_as_maskable_ppo(tmp_path: Path) -> None:
    model = RMDPMaskablePPO("MlpPolicy", make_rmdp_vec_env(_masked_rmdp, n_envs=2), k=2, **SMALL).learn(128)
    exported = MaskablePPO.load(export_representative(model, 0, tmp_path / "rep0.zip"))
    obs, masks = np.arange(8), np.tile([True, False] * 4, (8, 1))
    np.testing.assert_array_equal(
        exported.predict(obs, action_masks=masks, deterministic=True)[0],
        model.predict(obs, representative=0, action_masks=masks, deterministic=True)[0],
    )


@pytest.mark.parametrize("algorithm", [RMDPPPO, RMDPA2C])
def test_a_masked_env_given_to_an_unmasked_algorithm_names_rmdp_maskable_ppo(algorithm: Any) -> None:
    with pytest.raises(ValueError, match=r"action masks.*would ignore.*RMDPMaskablePPO"):
        algorithm("MlpPolicy", _masked_rmdp, k=1)


def test_an_env_without_masks_given_to_rmdp_maskable_ppo_names_action_masker() -> None:
    with pytest.raises(ValueError, match=r"action_masks\(\).*ActionMasker.*RMDPPPO"):
        RMDPMaskablePPO("MlpPolicy", lambda: ScaledRewardsEnv(gym.make("CartPole-v1")), k=1)
    # ActionMasker is the fix
    env = lambda: ActionMasker(ScaledRewardsEnv(gym.make("CartPole-v1")), lambda e: np.ones(2, dtype=bool))  # noqa: E731
    RMDPMaskablePPO("MlpPolicy", env, k=1, n_steps=16, batch_size=16).learn(16)
