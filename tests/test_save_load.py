"""Save, load and resume: the assignment state travels with the model, and training resumes bit for bit."""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch as th
from conftest import make_scaled
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_rmdp import RMDPPPO, Assigner, EMAssigner, EndToEndAssigner, KMeansAssigner, RandomAssigner
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.policies import AUTO_CRITIC_MAX_OUTPUTS

ROLLOUT = 64 * 2  # n_steps * n_envs
N = 2 * ROLLOUT


def _vec_env(n_agents: int = 3, n_envs: int = 2) -> VecEnv:
    return make_rmdp_vec_env(partial(make_scaled, n_agents=n_agents), n_envs=n_envs)


def _assigner(name: str) -> Assigner:
    if name == "em":
        # A warm start that the budget does not cap, so that learn(N) twice plans as learn(2N) does.
        return EMAssigner(mixing=0.5, warm_start_updates=1, max_warm_start_fraction=1.0)
    if name == "end_to_end":
        # non-defaults that must survive
        return EndToEndAssigner(lr=0.05, gradient_statistics="none", deploy="best_response")
    if name == "kmeans":
        return KMeansAssigner(pretrain_fraction=0.5, n_samples=64, n_init=2)
    return RandomAssigner()


def _model(assigner: str | Assigner, k: int = 2, env: VecEnv | None = None) -> RMDPPPO:
    return RMDPPPO(
        "MlpPolicy",
        _vec_env() if env is None else env,
        k=k,
        assigner=_assigner(assigner) if isinstance(assigner, str) else assigner,
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        seed=3,
        policy_kwargs=dict(net_arch=[8]),
    )


def _assert_identical(expected: Any, got: Any, where: str = "") -> None:
    """Exact equality of nested dicts / lists / tuples of tensors, arrays and plain values."""
    if isinstance(expected, th.Tensor):
        assert isinstance(got, th.Tensor) and expected.dtype == got.dtype, where
        assert th.equal(expected.cpu(), got.cpu()), where
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(expected, got, err_msg=where, strict=True)
    elif isinstance(expected, dict):
        assert sorted(map(str, expected)) == sorted(map(str, got)), where
        for key in expected:
            _assert_identical(expected[key], got[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(got), where
        for i, (a, b) in enumerate(zip(expected, got)):
            _assert_identical(a, b, f"{where}[{i}]")
    else:
        assert expected == got or (expected != expected and got != got), where  # NaN == NaN here


def _assert_same_training_state(expected: RMDPPPO, got: RMDPPPO) -> None:
    _assert_identical(expected.policy.state_dict(), got.policy.state_dict(), "policy")
    _assert_identical(expected.policy.optimizer.state_dict(), got.policy.optimizer.state_dict(), "optimizer")
    assert expected.num_timesteps == got.num_timesteps
    assert expected._n_updates == got._n_updates
    _assert_identical(expected._last_obs, got._last_obs, "_last_obs")
    _assert_identical(expected.training_returns, got.training_returns, "training_returns")
    _assert_identical(expected._episode_agent_returns, got._episode_agent_returns, "episode returns")
    _assert_identical(expected.assigner.weights().detach(), got.assigner.weights().detach(), "weights")
    np.testing.assert_array_equal(expected.assignment(), got.assignment())
    assert expected.assigner.rng.bit_generator.state == got.assigner.rng.bit_generator.state
    assert expected.assigner.n_rollouts == got.assigner.n_rollouts
    if isinstance(expected.assigner, EMAssigner):
        assert isinstance(got.assigner, EMAssigner)
        _assert_identical(expected.assigner.q_table, got.assigner.q_table, "q_table")
        _assert_identical(expected.assigner.observed, got.assigner.observed, "observed")
        assert expected.assigner.n_e_steps == got.assigner.n_e_steps
    if isinstance(expected.assigner, EndToEndAssigner):
        assert isinstance(got.assigner, EndToEndAssigner)
        assert expected.assigner.gradient_statistics == got.assigner.gradient_statistics
        assert expected.assigner.deploy == got.assigner.deploy
        _assert_identical(expected.assigner.returns_table, got.assigner.returns_table, "returns_table")
        _assert_identical(expected.assigner.logits.detach(), got.assigner.logits.detach(), "logits")
        _assert_identical(
            expected.assigner.optimizer.state_dict(),
            got.assigner.optimizer.state_dict(),
            "assigner optimizer",
        )


def _save_and_load(model: RMDPPPO, path: Path) -> RMDPPPO:
    """Save, pickle the env alongside, scramble every global random stream (a new process), load."""
    model.save(path)
    env_state = cloudpickle.dumps(model.get_env())
    th.manual_seed(12345)
    np.random.seed(12345)  # noqa: NPY002
    return RMDPPPO.load(path, env=cloudpickle.loads(env_state), force_reset=False)


@pytest.mark.parametrize("assigner", ["em", "end_to_end", "random"])
def test_resume_is_bit_exact(assigner: str, tmp_path: Path) -> None:
    uninterrupted = _model(assigner).learn(2 * N)

    model = _model(assigner).learn(N)
    loaded = _save_and_load(model, tmp_path / "model.zip")
    _assert_same_training_state(model, loaded)  # everything survived the round trip ...
    loaded.learn(N, reset_num_timesteps=False)
    _assert_same_training_state(uninterrupted, loaded)  # ... and training goes on as if never stopped
    if assigner == "em":
        assert uninterrupted.assigner.n_e_steps > 0  # E-steps ran before and after the save
    if assigner == "end_to_end":
        assert loaded.assigner.optimizer.param_groups[0]["params"][0] is loaded.assigner.logits
        assert loaded.assigner.gradient_statistics == "none"
        assert loaded.assigner.deploy == "best_response"


def test_resume_is_bit_exact_on_resource_gathering(tmp_path: Path) -> None:
    # 25 agents, episodes that end at home or at the step cutoff: episodes are in progress at the save.
    def env() -> VecEnv:
        return make_rmdp_vec_env("sb3_rmdp/ResourceGathering-v0", n_envs=2)

    uninterrupted = _model("em", env=env()).learn(2 * N)
    model = _model("em", env=env()).learn(N)
    assert np.any(model._episode_agent_returns != 0) or not np.all(model._last_episode_starts)
    loaded = _save_and_load(model, tmp_path / "model.zip")
    loaded.learn(N, reset_num_timesteps=False)
    _assert_same_training_state(uninterrupted, loaded)


def test_kmeans_state_survives_a_save_in_the_universal_phase(tmp_path: Path) -> None:
    class SaveAt(BaseCallback):
        """Saves the model at a given step, as SB3's CheckpointCallback does, with a snapshot to compare."""

        def __init__(self, step: int):
            super().__init__()
            self.step, self.snapshot = step, {}

        def _on_step(self) -> bool:
            if self.num_timesteps == self.step:
                assigner = self.model.assigner  # type: ignore[attr-defined]
                self.snapshot = {
                    "recorded": [r.copy() for r in assigner._recorded],
                    "switch_timestep": assigner.switch_timestep,
                    "clustered": assigner.clustered,
                    "rng": assigner.rng.bit_generator.state,
                }
                self.model.save(tmp_path / "universal.zip")
            return True

    # The switch comes at 3/4 of N (end of the second rollout); rewards are recorded from the first's end.
    callback = SaveAt(step=ROLLOUT + 2 * 16)  # in the second rollout, while rewards are being recorded
    assigner = KMeansAssigner(pretrain_fraction=0.75, n_samples=64, n_init=2)
    model = _model(assigner).learn(N, callback=callback)
    assert model.assigner.clustered

    loaded = RMDPPPO.load(tmp_path / "universal.zip").assigner
    assert isinstance(loaded, KMeansAssigner)
    assert not loaded.clustered and callback.snapshot["clustered"] is False
    assert loaded.switch_timestep == callback.snapshot["switch_timestep"] == 3 * N // 4
    assert len(callback.snapshot["recorded"]) == 16
    _assert_identical(callback.snapshot["recorded"], loaded._recorded, "recorded")
    assert loaded.rng.bit_generator.state == callback.snapshot["rng"]
    _assert_identical(th.full((3, 2), 0.5), loaded.weights(), "universal weights")


def test_kmeans_resume_is_bit_exact(tmp_path: Path) -> None:
    # K-means plans its switch from the first learn call, so the reference is two calls without a save.
    uninterrupted = _model("kmeans").learn(N)
    uninterrupted.learn(N, reset_num_timesteps=False)

    model = _model("kmeans").learn(N)
    assert model.assigner.clustered
    loaded = _save_and_load(model, tmp_path / "model.zip")
    assert isinstance(loaded.assigner, KMeansAssigner) and loaded.assigner.clustered
    np.testing.assert_array_equal(loaded.assigner.hard_assignment, model.assigner.hard_assignment)
    loaded.learn(N, reset_num_timesteps=False)
    _assert_same_training_state(uninterrupted, loaded)


class _GeneratorAssigner(RandomAssigner):
    """A random assigner that also keeps a torch generator (to check that its state is pickled)."""

    def _setup(self) -> None:
        super()._setup()
        self.generator = th.Generator().manual_seed(7)
        self.noise = th.nn.Parameter(th.zeros(self.n_agents))
        self.optimizer = th.optim.Adam([self.noise], lr=0.1)


def test_assigner_pickle_keeps_torch_state() -> None:
    assigner = _GeneratorAssigner(seed=0)
    assigner.bind(4, 2)
    th.rand(3, generator=assigner.generator)
    assigner.noise.grad = th.ones(4)
    assigner.optimizer.step()

    copy = pickle.loads(pickle.dumps(assigner))
    assert th.equal(th.rand(5, generator=assigner.generator), th.rand(5, generator=copy.generator))
    assert copy.optimizer.param_groups[0]["params"][0] is copy.noise  # still optimizing its parameter
    _assert_identical(assigner.optimizer.state_dict(), copy.optimizer.state_dict(), "optimizer")
    assert copy.rng.bit_generator.state == assigner.rng.bit_generator.state
    assert copy.model is None and copy.device == th.device("cpu")


def test_load_without_env_predicts_like_the_saved_model(tmp_path: Path) -> None:
    model = _model("end_to_end").learn(ROLLOUT)
    model.save(tmp_path / "model.zip")
    loaded = RMDPPPO.load(tmp_path / "model.zip")
    obs = np.stack([_vec_env().reset()[0]] * 4)
    for j in range(2):
        np.testing.assert_array_equal(
            model.predict(obs, representative=j, deterministic=True)[0],
            loaded.predict(obs, representative=j, deterministic=True)[0],
        )
    assert loaded.k == 2 and loaded.n_agents == 3
    np.testing.assert_array_equal(loaded.assignment(), model.assignment())


@pytest.fixture(scope="module")
def saved_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "model.zip"
    _model("em").save(path)  # k=2, n_agents=3, 2 env slots
    return path


def test_load_with_other_agents_says_so(saved_path: Path) -> None:
    with pytest.raises(ValueError, match=r"4 agents.*n_agents=3.*same r-MDP"):
        RMDPPPO.load(saved_path, env=_vec_env(n_agents=4))


def test_load_with_slots_not_a_multiple_of_k_rotates_representatives(saved_path: Path) -> None:
    model = RMDPPPO.load(saved_path, env=_vec_env(n_envs=3))  # saved with 2 slots, k=2
    assert model.n_envs == 3 and model.rotates_representatives
    model.learn(3 * 64)
    assert model._slot_index.shape == (3,)


def test_load_cannot_change_k(saved_path: Path) -> None:
    with pytest.raises(ValueError, match=r"k=3.*fixed by the saved networks"):
        RMDPPPO.load(saved_path, env=_vec_env(), k=3)


def test_set_env_with_a_mismatched_env_says_so(saved_path: Path) -> None:
    model = RMDPPPO.load(saved_path, env=_vec_env())
    with pytest.raises(ValueError, match=r"4 agents.*n_agents=3"):
        model.set_env(_vec_env(n_agents=4))
    model.set_env(_vec_env())  # the same r-MDP is fine


def test_files_keep_their_critic_layout(tmp_path: Path) -> None:
    """Files store the resolved critic layout; one from before critic="auto" is per representative."""
    n_agents = AUTO_CRITIC_MAX_OUTPUTS // 2 + 1  # k=2: just above the threshold, "auto" is conditioned
    auto = RMDPPPO("MlpPolicy", _vec_env(n_agents=n_agents), k=2, n_steps=8, batch_size=8, seed=0)
    assert auto.policy.critic == auto.policy_kwargs["critic"] == "conditioned"
    auto.save(tmp_path / "auto.zip")
    assert RMDPPPO.load(tmp_path / "auto.zip").policy.critic == "conditioned"

    old = RMDPPPO(
        "MlpPolicy",
        _vec_env(n_agents=n_agents),
        k=2,
        n_steps=8,
        batch_size=8,
        seed=0,
        policy_kwargs={"critic": "per_representative"},
    )
    del old.policy_kwargs["critic"]  # as written by a version without the "auto" layout
    old.save(tmp_path / "old.zip")
    loaded = RMDPPPO.load(tmp_path / "old.zip")
    assert loaded.policy.critic == "per_representative"
    th.testing.assert_close(loaded.policy.value_net.weight, old.policy.value_net.weight)
