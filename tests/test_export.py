"""Export of one representative: a stock SB3 PPO file that acts as it does, and its review dossier."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch as th
from conftest import make_scaled
from stable_baselines3 import PPO

from sb3_rmdp import RMDPPPO, export_representative, review_dossier
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.export import served_agents
from sb3_rmdp.welfare import evaluate_agent_returns

ENV_IDS = ["CartPole-v1", "Pendulum-v1"]  # Discrete and Box actions

# Loads exported files with `sb3_rmdp` made unimportable, and writes the deterministic actions.
_LOADER = """
import sys


class BlockSb3Rmdp:
    def find_spec(self, name, path=None, target=None):
        if name == "sb3_rmdp" or name.startswith("sb3_rmdp."):
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, BlockSb3Rmdp())
try:
    import sb3_rmdp  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("sb3_rmdp could be imported: the test would prove nothing")

import numpy as np
from stable_baselines3 import PPO

for model_path, obs_path, out_path in zip(*[iter(sys.argv[1:])] * 3):
    model = PPO.load(model_path, device="cpu")
    np.save(out_path, model.predict(np.load(obs_path), deterministic=True)[0])
assert not any(name.startswith("sb3_rmdp") for name in sys.modules)
"""


def _model(env_id: str) -> RMDPPPO:
    env = make_rmdp_vec_env(partial(make_scaled, env_id, n_agents=3), n_envs=2)
    model = RMDPPPO(
        "MlpPolicy", env, k=2, n_steps=64, batch_size=32, n_epochs=2, seed=0, policy_kwargs=dict(net_arch=[8])
    )
    return model.learn(128)


def _observations(model: RMDPPPO) -> np.ndarray:
    model.observation_space.seed(0)
    return np.stack([model.observation_space.sample() for _ in range(32)])


@pytest.fixture(scope="module")
def models() -> dict[str, RMDPPPO]:
    return {env_id: _model(env_id) for env_id in ENV_IDS}


def test_exported_representative_loads_without_sb3_rmdp_and_acts_the_same(
    models: dict[str, RMDPPPO], tmp_path: Path
) -> None:
    args, expected = [], {}
    for env_id, model in models.items():
        obs = _observations(model)
        obs_path = tmp_path / f"{env_id}-obs.npy"
        np.save(obs_path, obs)
        for j in range(model.k):
            path = export_representative(model, j, tmp_path / f"{env_id}-{j}")
            assert path == tmp_path / f"{env_id}-{j}.zip" and path.exists()
            out_path = tmp_path / f"{env_id}-{j}-actions.npy"
            args += [str(path), str(obs_path), str(out_path)]
            expected[out_path] = model.predict(obs, representative=j, deterministic=True)[0]
    script = tmp_path / "load_without_sb3_rmdp.py"
    script.write_text(_LOADER)
    # -I: no PYTHONPATH, no user site, no script directory on sys.path; the finder blocks the rest.
    result = subprocess.run(
        [sys.executable, "-I", str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for out_path, actions in expected.items():
        np.testing.assert_array_equal(np.load(out_path), actions, strict=True)
    # The two representatives differ, so the check above tells them apart.
    obs = _observations(models["Pendulum-v1"])
    assert not np.array_equal(*(models["Pendulum-v1"].predict(obs, representative=j)[0] for j in (0, 1)))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_exported_distribution_and_value_head(
    env_id: str, models: dict[str, RMDPPPO], tmp_path: Path
) -> None:
    model = models[env_id]
    obs = th.as_tensor(_observations(model))
    for j in range(model.k):
        exported = PPO.load(export_representative(model, j, tmp_path / f"rep{j}.zip"), device="cpu")
        assert type(exported.policy).__name__ == "ActorCriticPolicy"
        with th.no_grad():
            ours = model.policy.get_distribution(obs, representatives=j).distribution
            theirs = exported.policy.get_distribution(obs).distribution
            if env_id == "Pendulum-v1":
                assert th.equal(ours.mean, theirs.mean) and th.equal(ours.stddev, theirs.stddev)
                assert th.equal(exported.policy.log_std, model.policy.log_std[j])
            else:
                assert th.equal(ours.logits, theirs.logits)
            agents = served_agents(model, j)
            expected_values = model.policy.predict_values(obs, representatives=j)[:, agents].mean(dim=1)
            th.testing.assert_close(exported.policy.predict_values(obs)[:, 0], expected_values)
        assert exported.gamma == model.gamma and exported.observation_space == model.observation_space


def test_export_rejects_a_representative_out_of_range(models: dict[str, RMDPPPO], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"k=2 representatives, 0 <= j < 2"):
        export_representative(models["CartPole-v1"], 2, tmp_path / "rep.zip")


def test_review_dossier_names_the_agents_served(models: dict[str, RMDPPPO], tmp_path: Path) -> None:
    model = models["CartPole-v1"]
    env = make_rmdp_vec_env(partial(make_scaled, n_agents=3), n_envs=1)
    table = evaluate_agent_returns(model, env)
    for j in range(model.k):
        dossier = review_dossier(model, j, env, tmp_path / f"rep{j}", table=table)
        agents = np.flatnonzero(model.assignment() == j)
        assert len(agents) > 0
        on_disk = json.loads((tmp_path / f"rep{j}.json").read_text())
        assert on_disk == json.loads(json.dumps(dossier))
        assert [row["agent"] for row in on_disk["agents"]] == agents.tolist()
        assert model.agent_params is not None
        assert [row["params"] for row in on_disk["agents"]] == model.agent_params[agents].tolist()
        assert [row["return"] for row in on_disk["agents"]] == table[agents, j].tolist()
        assert on_disk["served_returns"]["mean"] == pytest.approx(table[agents, j].mean())
        markdown = (tmp_path / f"rep{j}.md").read_text()
        assert markdown.startswith(f"# Representative {j} of 2")
        for i in agents:
            assert f"\n| {i} |" in markdown
    # Without a table, the dossier runs its own evaluation episodes.
    dossier = review_dossier(model, 0, env, tmp_path / "evaluated.json", n_episodes=1)
    assert (tmp_path / "evaluated.md").exists() and len(dossier["agents"]) == len(served_agents(model, 0))
