"""``sb3-rmdp train --algo``, envs of the user's own module (``--env module:Id``), ``--hyperparams FILE``."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from sb3_rmdp.algorithms import load_model
from sb3_rmdp.cli import main

# A user's own module, as the tutorial writes it: an r-MDP with action masks, registered under an id.
MODULE = '''
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Corridor(gym.Env):
    """5 cells; agent i is paid 1 per step on cell i; moves off the ends are masked."""

    def __init__(self, length=5):
        self.length = length
        self.observation_space = spaces.Box(0.0, 1.0, shape=(length,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.reward_space = spaces.Box(0.0, 1.0, shape=(length,), dtype=np.float32)
        self.agent_params = np.arange(length, dtype=np.float64).reshape(length, 1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position, self.steps = self.length // 2, 0
        return np.eye(self.length, dtype=np.float32)[self.position], {}

    def step(self, action):
        self.position = int(np.clip(self.position + (1 if int(action) == 1 else -1), 0, self.length - 1))
        self.steps += 1
        obs = np.eye(self.length, dtype=np.float32)[self.position]
        return obs, obs.copy(), False, self.steps >= 8, {}


class MaskedCorridor(Corridor):
    def action_masks(self):
        return np.array([self.position > 0, self.position < self.length - 1])


gym.register(id="{name}/Corridor-v0", entry_point=Corridor)
gym.register(id="{name}/MaskedCorridor-v0", entry_point=MaskedCorridor)
'''
SMALL = ["--timesteps", "128", "--n-steps", "32", "--policy-kwargs", "net_arch=[8]", "--no-progress-bar"]


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Writes the module into a fresh working folder, under a name of its own (modules are cached)."""
    name = f"user_envs_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(MODULE.replace("{name}", name))
    monkeypatch.chdir(tmp_path)
    return name


@pytest.mark.parametrize(
    ("algo", "env", "extra"),
    [
        ("a2c", "Corridor-v0", []),
        ("maskable_ppo", "MaskedCorridor-v0", ["--batch-size", "32"]),
        ("recurrent_ppo", "Corridor-v0", ["--batch-size", "32", "--policy-kwargs", "lstm_hidden_size=8"]),
        ("ppo", "Corridor", []),  # an env class of the module, not an id
    ],
)
def test_every_algorithm_trains_on_an_env_of_the_users_module(
    algo: str,
    env: str,
    extra: list[str],
    user_module: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"{user_module}:{user_module}/{env}" if env.endswith("-v0") else f"{user_module}:{env}"
    save = tmp_path / "model.zip"
    argv = ["train", "--env", spec, "-k", "2", "--algo", algo, *SMALL, *extra, "--save", str(save)]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    model = load_model(save)
    assert (
        type(model).algorithm_name
        == {
            "ppo": "RMDPPPO",
            "a2c": "RMDPA2C",
            "maskable_ppo": "RMDPMaskablePPO",
            "recurrent_ppo": "RMDPRecurrentPPO",
        }[algo]
    )
    assert f"Training {type(model).__name__}" in out and "welfare of the deployed assignment" in out
    # the saved model of any algorithm evaluates and exports from the command line
    assert main(["evaluate", str(save), "--env", spec]) == 0
    assert main(["export", str(save), "-j", "0", "--out", str(tmp_path / "rep0.zip")]) == 0
    base = {"ppo": "stable_baselines3.PPO", "a2c": "stable_baselines3.A2C"}.get(algo, "sb3_contrib.")
    assert base in capsys.readouterr().out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module:Env-v0", r"cannot import the module 'no_such_module'.*run from the folder"),
        ("{module}:Nope-v0", r"has no env id or env factory 'Nope-v0' \(it registers .*Corridor-v0"),
        ("{broken}:Env-v0", r"importing .* raised SyntaxError.*line 2.*fix the module"),
    ],
)
def test_a_module_env_that_cannot_be_made_is_one_line_exit_2(
    spec: str, message: str, user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = f"{user_module}_broken"
    (tmp_path / f"{broken}.py").write_text("import numpy\ndef oops(:\n")
    argv = ["train", "--env", spec.format(module=user_module, broken=broken), "-k", "2", *SMALL]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    import re

    assert re.search(message, err), err


def _best(tmp_path: Path, module: str, **overrides: Any) -> Path:
    """A best-trial file in the format of ``sb3-rmdp tune --out``."""
    best = {
        "env": f"{module}:{module}/Corridor-v0",
        "k": 2,
        "assigner": "em",
        "algo": "a2c",
        "welfare": 1.0,
        "trial": 3,
        "study_name": "Corridor-v0-k2-em",
        "hyperparams": {
            "learning_rate": 0.001,
            "n_steps": 16,
            "gamma": 0.95,
            "policy_kwargs": {"net_arch": [8]},
            "assigner_kwargs": {"mixing": 0.5, "warm_start_updates": 0},
        },
        "normalize_observations": False,
        **overrides,
    }
    path = tmp_path / "best.json"
    path.write_text(json.dumps(best))
    return path


def test_train_reads_what_tune_wrote(
    user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = _best(tmp_path, user_module)
    spec = f"{user_module}:{user_module}/Corridor-v0"
    save = tmp_path / "tuned.zip"
    argv = [
        "train",
        "--env",
        spec,
        "-k",
        "2",
        "--hyperparams",
        str(best),
        "--timesteps",
        "64",
        "--save",
        str(save),
    ]
    assert main([*argv, "--no-progress-bar"]) == 0, capsys.readouterr().err
    assert "best.json hyperparameters" in capsys.readouterr().out
    model = load_model(save)
    assert type(model).__name__ == "RMDPA2C" and model.n_steps == 16 and model.gamma == 0.95
    assert model.assigner.mixing == 0.5 and model.policy.net_arch == [8]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-k", "3"], r"tuned for -k 2, not 3: pass -k 2"),
        (["-k", "2", "--algo", "ppo"], r"tuned for --algo a2c, not ppo"),
        (["-k", "2", "--batch-size", "8"], r"--batch-size: A2C takes one gradient step"),
    ],
)
def test_a_hyperparams_file_that_does_not_fit_says_so(
    argv: list[str], message: str, user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = _best(tmp_path, user_module)
    spec = f"{user_module}:{user_module}/Corridor-v0"
    assert main(["train", "--env", spec, *argv, "--hyperparams", str(best), *SMALL]) == 2
    import re

    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_a_file_that_is_not_a_tune_result(
    user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.json").write_text(json.dumps({"lr": 1}))
    spec = f"{user_module}:{user_module}/Corridor-v0"
    assert main(["train", "--env", spec, "-k", "2", "--hyperparams", "notes.json", *SMALL]) == 2
    assert "not a file of 'sb3-rmdp tune --out'" in capsys.readouterr().err


def test_the_console_script_imports_the_module_from_the_working_folder(
    user_module: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    # sb3-rmdp's console script starts with its own folder on sys.path, not the working folder
    code = "import sys; sys.path.pop(0); from sb3_rmdp.cli import main; sys.exit(main(sys.argv[1:]))"
    spec = f"{user_module}:{user_module}/Corridor-v0"
    argv = ["train", "--env", spec, "-k", "2", *SMALL, "--eval-episodes", "0", "--save", "m.zip"]
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert textwrap.dedent("Model saved to m.zip") in result.stdout


def test_tune_then_train_with_what_it_wrote(user_module: str, tmp_path: Path) -> None:
    from sb3_rmdp.tuning import tune_main

    spec = f"{user_module}:{user_module}/Corridor-v0"
    tuned = ["--env", spec, "-k", "2", "--algo", "a2c", "--n-trials", "2", "--n-timesteps", "64"]
    tuned += ["--n-evaluations", "1", "--n-eval-episodes", "1", "--storage", ":memory:", "--verbose", "0"]
    assert tune_main([*tuned, "--out", str(tmp_path / "best.json")]) == 0
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["algo"] == "a2c" and "batch_size" not in best["hyperparams"]  # A2C's own search space
    argv = ["train", "--env", spec, "-k", "2", "--hyperparams", str(tmp_path / "best.json")]
    assert main([*argv, "--timesteps", "64", "--no-progress-bar", "--save", str(tmp_path / "m.zip")]) == 0
    model = load_model(tmp_path / "m.zip")
    assert type(model).__name__ == "RMDPA2C" and model.n_steps == best["hyperparams"]["n_steps"]


@pytest.mark.parametrize("algo", ["a2c", "maskable_ppo", "recurrent_ppo"])
def test_tensorboard_logs_of_every_algorithm(algo: str, user_module: str, tmp_path: Path) -> None:
    env = "MaskedCorridor-v0" if algo == "maskable_ppo" else "Corridor-v0"
    spec = f"{user_module}:{user_module}/{env}"
    extra = [] if algo == "a2c" else ["--batch-size", "32"]
    argv = ["train", "--env", spec, "-k", "2", "--algo", algo, *SMALL, *extra, "--eval-episodes", "0"]
    assert main([*argv, "--tensorboard-log", str(tmp_path / "runs"), "--save", str(tmp_path / "m.zip")]) == 0
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
