"""Bad input gets a ValueError that names the problem and the fix."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import ScaledRewardsEnv, make_scaled

from sb3_rmdp import RMDPPPO, FixedAssigner
from sb3_rmdp.envs import make_rmdp_vec_env

SMALL = dict(n_steps=16, batch_size=16, n_epochs=1)


def test_scalar_reward_env_is_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"reward_space.*SingleAgentRMDP"):
        RMDPPPO("MlpPolicy", "CartPole-v1")
    with pytest.raises(ValueError, match="reward_space"):
        RMDPPPO("MlpPolicy", gym.make("CartPole-v1"))


def test_more_representatives_than_agents() -> None:
    with pytest.raises(ValueError, match=r"k=4 representatives for 3 agents.*1 <= k <= n_agents"):
        RMDPPPO("MlpPolicy", make_scaled(n_agents=3), k=4)


@pytest.mark.parametrize("k", [0, -1])
def test_fewer_than_one_representative(k: int) -> None:
    with pytest.raises(ValueError, match="k >= 1"):
        RMDPPPO("MlpPolicy", make_scaled(), k=k)


def test_env_slots_not_a_multiple_of_k_are_accepted() -> None:
    # representatives rotate over the slots (tests/test_slots.py)
    assert RMDPPPO("MlpPolicy", make_scaled, k=2, n_envs=5, **SMALL).rotates_representatives
    assert RMDPPPO("MlpPolicy", make_rmdp_vec_env(make_scaled, n_envs=3), k=2, **SMALL).n_envs == 3


@pytest.mark.parametrize(
    ("bad", "message"), [("shape", r"shape \(4,\).*3 agents"), ("nan", "non-finite.*agents \\[0\\]")]
)
def test_bad_reward_vectors(bad: str, message: str) -> None:
    model = RMDPPPO("MlpPolicy", make_scaled(bad=bad), k=1, **SMALL)
    with pytest.raises(ValueError, match=message):
        model.learn(16)


@pytest.mark.parametrize("assignment", [np.zeros(2, dtype=int), np.full((3, 3), 1 / 3), np.array([0, 1, 2])])
def test_assignment_of_the_wrong_shape_or_range(assignment: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"[Aa]ssignment"):
        RMDPPPO("MlpPolicy", make_scaled, k=2, n_envs=2, assigner=FixedAssigner(assignment))


def test_vec_env_without_agent_rewards() -> None:
    from stable_baselines3.common.env_util import make_vec_env

    with pytest.raises(ValueError, match="AgentRewardsWrapper"):
        RMDPPPO("MlpPolicy", make_vec_env(make_scaled, n_envs=1), k=1)


def test_predict_without_a_representative_when_k_is_above_one() -> None:
    model = RMDPPPO("MlpPolicy", make_scaled, k=2, n_envs=2, **SMALL)
    obs = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="representative=j"):
        model.predict(obs)
    with pytest.raises(ValueError, match=r"integers in \[0, 2\)"):
        model.predict(obs, representative=2)


@pytest.mark.parametrize(
    ("k", "error", "message"),
    [
        ("2", TypeError, r"k='2': the policy budget .* got a str \(a string: pass the number, k=2\)"),
        ("abc", TypeError, r"k='abc': the policy budget .* got a str\.$"),
        (None, TypeError, r"k=None: the policy budget must be a whole number .* got a NoneType"),
        (True, TypeError, r"k=True: .* got a bool"),
        (float("nan"), ValueError, r"k=nan: the policy budget must be a whole number of representatives"),
        (float("inf"), ValueError, r"k=inf: the policy budget"),
        (1.5, ValueError, r"k=1.5: the policy budget"),
    ],
)
def test_k_that_is_not_a_whole_number(k: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        RMDPPPO("MlpPolicy", make_scaled(), k=k)  # type: ignore[arg-type]


def test_integral_k_of_another_type_is_accepted() -> None:
    assert RMDPPPO("MlpPolicy", make_scaled, k=np.int64(2), n_envs=2, **SMALL).k == 2
    assert RMDPPPO("MlpPolicy", make_scaled, k=2.0, n_envs=2, **SMALL).k == 2


@pytest.mark.parametrize("n_envs", [0, -2])
def test_no_env_slots(n_envs: int) -> None:
    with pytest.raises(ValueError, match=rf"n_envs={n_envs}: pass a number of env slots >= 1"):
        RMDPPPO("MlpPolicy", make_scaled, k=1, n_envs=n_envs)


class _Overflowing(gym.Wrapper):
    """Rewards that are finite in float64 but beyond float32's range."""

    def step(self, action: object) -> tuple[object, np.ndarray, bool, bool, dict]:
        obs, rewards, terminated, truncated, info = self.env.step(action)
        return obs, np.asarray(rewards, dtype=np.float64) * 1e39, terminated, truncated, info


def test_a_finite_reward_that_overflows_float32_says_so() -> None:
    model = RMDPPPO("MlpPolicy", _Overflowing(make_scaled()), k=1, **SMALL)
    with pytest.raises(
        ValueError, match=r"too large for float32.*agents \[0, 1, 2\].*e\+39.*[Ss]cale the rewards"
    ):
        model.learn(16)


@pytest.mark.parametrize("assigner", ["em", "end_to_end", "kmeans", "random", "oracle", "coverage", "fixed"])
def test_agent_params_with_the_wrong_number_of_rows(assigner: str) -> None:
    from sb3_rmdp import CoverageAssigner

    env = make_scaled()
    env.agent_params = np.zeros((5, 1))
    instance = {"coverage": CoverageAssigner(epsilon=0.5), "fixed": FixedAssigner(np.array([0, 1, 0]))}
    with pytest.raises(ValueError, match=r"agent_params has 5 rows, but the r-MDP has 3 agents.*\(3, d\)"):
        RMDPPPO("MlpPolicy", env, k=2, n_envs=2, assigner=instance.get(assigner, assigner), **SMALL)


def test_vec_normalize_of_the_reward_is_refused_with_the_option_that_works() -> None:
    from stable_baselines3.common.vec_env import VecNormalize

    vec_env = make_rmdp_vec_env(make_scaled, n_envs=1)
    with pytest.raises(ValueError, match=r"norm_reward=True.*VecNormalize\(env, norm_reward=False\)"):
        RMDPPPO("MlpPolicy", VecNormalize(vec_env, norm_reward=True), k=1, **SMALL)
    model = RMDPPPO("MlpPolicy", VecNormalize(vec_env, norm_reward=False), k=1, **SMALL)
    with pytest.raises(ValueError, match=r"norm_reward=True"):
        model.set_env(VecNormalize(vec_env, norm_reward=True))


def test_returns_beyond_the_critic_scale_warn_once() -> None:
    large = make_rmdp_vec_env(lambda: ScaledRewardsEnv(gym.make("CartPole-v1"), scales=[1.0, 1e4]))
    model = RMDPPPO("MlpPolicy", large, k=1, **SMALL)
    with pytest.warns(UserWarning, match=r"Per-agent returns reach .* Scale the rewards down") as record:
        model.learn(64)
    assert sum("Per-agent returns reach" in str(warning.message) for warning in record) == 1
    small = RMDPPPO("MlpPolicy", make_scaled, k=1, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        small.learn(64)


def test_batch_size_of_one() -> None:
    with pytest.raises(ValueError, match=r"batch_size=1: .* at least 2 samples"):
        RMDPPPO("MlpPolicy", make_scaled, k=1, n_steps=16, batch_size=1)


def test_devices() -> None:
    with pytest.raises(
        ValueError, match=r"device='nonsense': not a torch device; pass 'auto', 'cpu' or 'cuda'"
    ):
        RMDPPPO("MlpPolicy", make_scaled, k=1, device="nonsense", **SMALL)
    if not th.cuda.is_available():
        with pytest.warns(UserWarning, match=r"device='cuda': torch sees no CUDA GPU here"):
            RMDPPPO("MlpPolicy", make_scaled, k=1, device="cuda", **SMALL)


def test_an_interrupted_em_update_does_not_advance_the_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    import sb3_rmdp.assigners.em as em

    assigner = em.EMAssigner(mixing=0.5, warm_start_updates=0)
    # seeded: with seed 0 every slot ends a CartPole episode within the 64 steps (unseeded, one may not)
    rollout = dict(n_steps=64, batch_size=64, n_epochs=1)
    model = RMDPPPO("MlpPolicy", make_scaled, k=2, n_envs=2, assigner=assigner, seed=0, **rollout).learn(128)
    assert assigner.n_rollouts == 1 and assigner.n_e_steps == 1
    before = (assigner.q_table.copy(), assigner.observed.copy(), assigner.assignment())

    def interrupted(*args: object) -> np.ndarray:
        raise KeyboardInterrupt

    monkeypatch.setattr(em, "e_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.learn(128, reset_num_timesteps=False)
    assert assigner.n_rollouts == 1 and assigner.n_e_steps == 1  # the interrupted update is not counted
    np.testing.assert_array_equal(assigner.q_table, before[0])  # ... and changed nothing
    np.testing.assert_array_equal(assigner.observed, before[1])
    np.testing.assert_array_equal(assigner.assignment(), before[2])
    monkeypatch.undo()
    model.learn(128, reset_num_timesteps=False)
    assert assigner.n_rollouts == 2 and assigner.n_e_steps == 2


def test_the_fuzz_of_bad_inputs_finds_none_unclear_or_silent(capsys: pytest.CaptureFixture[str]) -> None:
    import fuzz_inputs  # tests/fuzz_inputs.py, also a script (about 10 s)

    code = fuzz_inputs.main([])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and last.endswith(" clear errors, 0 unclear, 0 silent"), last
