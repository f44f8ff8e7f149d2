"""Dict and image observations: ``"MultiInputPolicy"`` and ``"CnnPolicy"`` for RMDPPPO, SB3's at n = k = 1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import DictObservation, ImageWalk, ScaledRewardsEnv, assert_same_training
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.vec_env import VecTransposeImage

from sb3_rmdp import RMDPPPO, export_representative
from sb3_rmdp.envs import SingleAgentRMDP, make_rmdp_vec_env
from sb3_rmdp.policies import MultiRepresentativeMultiInputPolicy, MultiRepresentativePolicy

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, seed=5)
# alias -> scalar-reward envs: one with discrete actions, one with continuous actions
ENVS: dict[str, list[Callable[[], gym.Env]]] = {
    "MultiInputPolicy": [
        lambda: SimpleMultiObsEnv(random_start=False),  # SB3's own: an image and a vector key
        lambda: DictObservation(gym.make("Pendulum-v1")),
    ],
    "CnnPolicy": [lambda: ImageWalk(discrete=True), lambda: ImageWalk(discrete=False, channel_last=True)],
}
CASES = [(alias, i) for alias, factories in ENVS.items() for i in range(len(factories))]


@pytest.mark.parametrize(("alias", "env_index"), CASES)
@pytest.mark.parametrize("share_features_extractor", [True, False])
def test_one_agent_one_representative_is_sb3_ppo(
    alias: str, env_index: int, share_features_extractor: bool
) -> None:
    make = ENVS[alias][env_index]
    policy_kwargs: dict[str, Any] = {"share_features_extractor": share_features_extractor}
    if alias == "MultiInputPolicy":
        policy_kwargs["features_extractor_kwargs"] = {"cnn_output_dim": 32}  # honoured as in SB3
    np.random.seed(0)  # noqa: NPY002  (SimpleMultiObsEnv draws its observations from NumPy's global stream)
    reference = PPO(alias, make(), policy_kwargs=policy_kwargs, **SMALL).learn(3 * 64)
    np.random.seed(0)  # noqa: NPY002
    ours = RMDPPPO(alias, SingleAgentRMDP(make()), k=1, policy_kwargs=policy_kwargs, **SMALL).learn(3 * 64)
    assert type(ours.policy).__mro__[1] is MultiRepresentativePolicy
    if alias == "MultiInputPolicy" and env_index == 0:
        assert ours.policy.features_extractor.extractors["img"].linear[0].out_features == 32
    assert_same_training(reference, ours)


def _rmdp(alias: str, env_index: int, k: int = 2) -> RMDPPPO:
    make = ENVS[alias][env_index]
    env = make_rmdp_vec_env(lambda: ScaledRewardsEnv(make(), scales=(1.0, 2.0, 3.0)), n_envs=2)
    return RMDPPPO(alias, env, k=k, **SMALL)


@pytest.mark.parametrize(("alias", "env_index"), CASES)
def test_k_representatives_train_save_load_and_export(alias: str, env_index: int, tmp_path: Path) -> None:
    model = _rmdp(alias, env_index).learn(2 * 128)
    if alias == "CnnPolicy" and env_index == 1:  # channel-last: SB3 transposes it to (C, H, W)
        assert isinstance(model.get_env(), VecTransposeImage)
        assert model.observation_space.shape == (1, 36, 36)
    env = ENVS[alias][env_index]()
    observations = [env.reset(seed=s)[0] for s in range(4)]
    batch: Any = (
        {key: np.stack([o[key] for o in observations]) for key in observations[0]}
        if isinstance(observations[0], dict)
        else np.stack(observations)
    )
    model.save(tmp_path / "model.zip")
    loaded = RMDPPPO.load(tmp_path / "model.zip")
    exported = PPO.load(export_representative(model, 1, tmp_path / "rep1.zip"))
    for j in range(2):
        actions = model.predict(batch, representative=j, deterministic=True)[0]
        np.testing.assert_array_equal(actions, loaded.predict(batch, representative=j, deterministic=True)[0])
    np.testing.assert_array_equal(
        exported.predict(batch, deterministic=True)[0],
        model.predict(batch, representative=1, deterministic=True)[0],
    )
    assert type(exported.policy).__name__ == (
        "MultiInputActorCriticPolicy" if alias == "MultiInputPolicy" else "ActorCriticCnnPolicy"
    )


def test_a_dict_space_with_a_policy_for_arrays_names_multi_input_policy() -> None:
    env = lambda: ScaledRewardsEnv(DictObservation(gym.make("CartPole-v1")))  # noqa: E731
    with pytest.raises(ValueError, match="MultiInputPolicy"):
        RMDPPPO("MlpPolicy", env, k=1)  # SB3's own check of the alias
    with pytest.raises(ValueError, match=r"Dict space \(keys \['profile', 'state'\]\).*'MultiInputPolicy'"):
        RMDPPPO(MultiRepresentativePolicy, env, k=1)
    RMDPPPO(MultiRepresentativeMultiInputPolicy, env, k=1, n_steps=8, batch_size=8)  # the class itself works


def test_multi_input_policy_on_arrays_names_mlp_policy() -> None:
    with pytest.raises(ValueError, match=r"reads Dict observations.*'MlpPolicy'"):
        RMDPPPO("MultiInputPolicy", lambda: ScaledRewardsEnv(gym.make("CartPole-v1")), k=1)


def test_cnn_policy_on_vectors_names_mlp_policy() -> None:
    with pytest.raises(ValueError, match=r"reads images.*'MlpPolicy' for vectors"):
        RMDPPPO("CnnPolicy", lambda: ScaledRewardsEnv(gym.make("CartPole-v1")), k=1)


class _FloatImages(gym.ObservationWrapper):
    def __init__(self, env: gym.Env, shape: tuple[int, ...] = (1, 36, 36)):
        super().__init__(env)
        self.observation_space = spaces.Box(0.0, 1.0, shape=shape, dtype=np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return (observation / 255.0).astype(np.float32).reshape(self.observation_space.shape)


def test_cnn_policy_on_float_images_names_normalize_images() -> None:
    env = lambda: ScaledRewardsEnv(_FloatImages(ImageWalk()))  # noqa: E731
    with pytest.raises(ValueError, match=r"uint8 images in \[0, 255\].*normalize_images=False"):
        RMDPPPO("CnnPolicy", env, k=1)
    kwargs = dict(normalize_images=False, features_extractor_kwargs=dict(normalized_image=True))
    RMDPPPO("CnnPolicy", env, k=1, policy_kwargs=kwargs, n_steps=8, batch_size=8).learn(8)  # the fix works


class _MiddleChannels(gym.ObservationWrapper):
    """(36, 1, 36) images: the channel axis in the middle."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = spaces.Box(0, 255, shape=(36, 1, 36), dtype=np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        return np.transpose(observation, (1, 0, 2))


@pytest.mark.parametrize("alias", ["CnnPolicy", "MlpPolicy"])
def test_an_image_with_its_channels_in_the_middle_says_how_to_transpose(alias: str) -> None:
    env = lambda: ScaledRewardsEnv(_MiddleChannels(ImageWalk()))  # noqa: E731
    with pytest.raises(ValueError, match=r"shape \(36, 1, 36\).*neither channel-first.*TransformObservation"):
        RMDPPPO(alias, env, k=1)


def test_a_loaded_dict_model_keeps_its_buffer_and_resumes(tmp_path: Path) -> None:
    model = _rmdp("MultiInputPolicy", 1).learn(128)
    model.save(tmp_path / "model.zip")
    loaded = RMDPPPO.load(
        tmp_path / "model.zip",
        env=make_rmdp_vec_env(lambda: ScaledRewardsEnv(DictObservation(gym.make("Pendulum-v1"))), n_envs=2),
    )
    assert type(loaded.rollout_buffer).__name__ == "RMDPDictRolloutBuffer"
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.num_timesteps == 256
    assert all(th.isfinite(p).all() for p in loaded.policy.parameters())
