"""The ``sb3-rmdp`` command: train -> save -> evaluate -> export -> report, help texts, user errors."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch as th
from stable_baselines3 import PPO

from sb3_rmdp import RMDPPPO
from sb3_rmdp.cli import compact_indices, main, parse_key_values
from sb3_rmdp.welfare import egalitarian_welfare, nash_welfare, utilitarian_welfare

ROOT = Path(__file__).resolve().parent.parent
RG = "sb3_rmdp/ResourceGathering-v0"
CSV = (
    "algorithm,k,seed,welfare_eval,optimal_welfare\n"
    "em,1,0,60.0,74.0\nem,1,1,62.0,74.0\nem,2,0,80.0,86.0\nem,2,1,84.0,86.0\n"
    "random,1,0,58.0,74.0\nrandom,2,0,70.0,86.0\n"
)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained k=2 Resource Gathering model: enough for the commands that only read a model."""
    path = tmp_path_factory.mktemp("model") / "untrained.zip"
    RMDPPPO("MlpPolicy", RG, k=2, n_steps=8, batch_size=8, policy_kwargs={"net_arch": [8]}, seed=0).save(path)
    return path


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_save_evaluate_export_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_path, runs = tmp_path / "models" / "rg_k2.zip", tmp_path / "runs"
    code = main(
        [
            *["train", "--env", RG, "-k", "2", "--timesteps", "1024", "--n-steps", "64"],
            *["--batch-size", "64", "--n-epochs", "2", "--policy-kwargs", "net_arch=[16]"],
            *["--save", str(model_path)],
            *["--tensorboard-log", str(runs), "--figure-every", "4"],
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    # The summary: tuned settings, the welfare of the deployed assignment, the group sizes, the file.
    assert "tuned hyperparameters" in out and "reward_scale=0.01" in out
    assert "welfare of the deployed assignment: utilitarian" in out and "which agents" in out
    assert f"Model saved to {model_path}" in out
    # Evaluated, and to be evaluated, in the env's own units (reward_scale is a training device).
    assert f"Evaluate it with: sb3-rmdp evaluate {model_path} --env {RG}\n" in out
    assert [run.name for run in runs.iterdir()] == ["em_k2_1"]
    model = RMDPPPO.load(model_path)
    assert (model.k, model.n_agents, model.num_timesteps, model.n_steps) == (2, 25, 1024, 64)
    assert model.assigner.figure_every == 4

    results = tmp_path / "evaluation.json"
    code = main(["evaluate", str(model_path), "--env", RG, "--env-kwargs", "reward_scale=0.01"])
    code += main(["evaluate", str(model_path), "--env", RG, "--json", str(results)])
    out = capsys.readouterr().out
    assert code == 0 and "representative" in out and f"Results written to {results}" in out
    summary = json.loads(results.read_text())
    table, assignment = np.array(summary["table"]), np.array(summary["assignment"])
    assert table.shape == (25, 2) and np.array_equal(assignment, model.assignment())
    assert sum(summary["group_sizes"]) == 25 and summary["env_kwargs"] == {}
    assert summary["welfare"] == {
        "utilitarian": utilitarian_welfare(table, assignment),
        "egalitarian": egalitarian_welfare(table, assignment),
        "nash": nash_welfare(table, assignment),
        "p10": float(np.percentile(table[np.arange(25), assignment], 10)),
    }
    for row in summary["representatives"]:
        agents = row["agents"]
        assert agents == np.flatnonzero(assignment == row["representative"]).tolist()
        if agents:
            assert row["mean_return"] == pytest.approx(table[agents, row["representative"]].mean())

    exported = tmp_path / "rep0.zip"
    assert main(["export", str(model_path), "-j", "0", "--out", str(exported), "--env", RG, "--dossier"]) == 0
    policy = PPO.load(exported)
    obs = np.zeros(model.observation_space.shape, dtype=np.float32)
    action, _ = model.predict(obs, deterministic=True, representative=0)
    assert policy.predict(obs, deterministic=True)[0] == action
    assert json.loads((tmp_path / "rep0.json").read_text())["representative"] == 0
    assert (tmp_path / "rep0.md").read_text().startswith("# Representative 0 of 2")

    csv_path = tmp_path / "results.csv"
    csv_path.write_text(CSV)
    assert main(["report", str(csv_path), "--out", str(tmp_path / "welfare.png")]) == 0
    assert main(["report", str(model_path), "--out", str(tmp_path / "assignment.png")]) == 0
    assert _png(tmp_path / "welfare.png") and _png(tmp_path / "assignment.png")
    assert "em: k = 1, 2" in capsys.readouterr().out


def test_torch_threads(tmp_path: Path) -> None:
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(CSV)
    argv = ["report", str(csv_path), "--out", str(tmp_path / "welfare.png")]
    th.set_num_threads(3)
    assert main(argv) == 0 and th.get_num_threads() == 1  # the default
    assert main([*argv, "--torch-threads", "2"]) == 0 and th.get_num_threads() == 2


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["export"], ["report"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sb3-rmdp {' '.join(command)}".rstrip())
    assert "examples:\n  sb3-rmdp " in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


USER_ERRORS = {
    "unknown env": (
        ["train", "--env", "Nope-v0", "-k", "2"],
        "the sb3_rmdp envs are sb3_rmdp/AntVelocity-v0",
    ),
    "k < 1": (["train", "--env", RG, "-k", "0"], "k must be a whole number of representatives >= 1"),
    "k > n_agents": (["train", "--env", RG, "-k", "26"], "lower k to at most 25"),
    "env kwargs syntax": (["train", "--env", RG, "-k", "2", "--env-kwargs", "size"], "key=value items"),
    "env kwargs name": (["train", "--env", RG, "-k", "2", "--env-kwargs", "sise=3"], "fix --env-kwargs"),
    "policy kwargs": (["train", "--env", RG, "-k", "2", "--policy-kwargs", "foo=1"], "fix --policy-kwargs"),
    "oracle without 1-D params": (["train", "--env", RG, "-k", "2", "--assigner", "oracle"], "agent_params"),
    "no tuned settings": (
        ["train", "--env", "sb3_rmdp/HalfCheetahVelocity-v0", "-k", "2", "--hyperparams", "tuned"],
        "pass --hyperparams default",
    ),
    "missing model": (["evaluate", "missing.zip", "--env", RG], "'missing.zip' does not exist"),
    "not a model": (["evaluate", "{csv}", "--env", RG], "pass a zip written by 'sb3-rmdp train'"),
    "other env": (
        ["evaluate", "{model}", "--env", RG, "--env-kwargs", "size=3"],
        "the --env and --env-kwargs",
    ),
    "representative": (["export", "{model}", "-j", "2", "--out", "x.zip"], "pass 0 <= J < 2"),
    "dossier without env": (["export", "{model}", "-j", "0", "--out", "x.zip", "--dossier"], "pass --env ID"),
    "csv columns": (["report", "{bad_csv}", "--out", "x.png"], "lacks the column(s) seed, welfare"),
    "csv and model": (["report", "{csv}", "{model}", "--out", "x.png"], "or one model zip, not both"),
    "image format": (["report", "{csv}", "--out", "x.nope"], "cannot write x.nope"),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_user_errors_exit_2_with_the_fix(
    case: str,
    saved_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.csv").write_text(CSV)
    (tmp_path / "bad.csv").write_text("algorithm,k\nem,1\n")
    files = {"model": str(saved_model), "csv": "results.csv", "bad_csv": "bad.csv"}
    argv, fix = USER_ERRORS[case]
    assert main([arg.format(**files) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"sb3-rmdp {argv[0]}: error: ") and fix in lines[-1]
    if case != "k < 1":  # argparse's own errors print the usage first
        assert len(lines) == 1
    assert not list(tmp_path.glob("x.*"))


def test_tune_forwards_everything_after_tune(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[list[str]] = []
    tuning = types.ModuleType("sb3_rmdp.tuning")
    tuning.tune_main = lambda argv=None: received.append(argv) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sb3_rmdp.tuning", tuning)
    assert main(["tune", "--env", RG, "-k", "3", "--help"]) == 3
    assert received == [["--env", RG, "-k", "3", "--help"]]


def test_tune_without_the_tuning_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sb3_rmdp.tuning", None)  # import fails as if the module were missing
    assert main(["tune", "--help"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sb3-rmdp tune: error: ") and "sb3_rmdp.tuning" in err and "\n" not in err


def test_python_m_sb3_rmdp() -> None:
    """The real process: ``python -m sb3_rmdp`` prints help with 0 and a user error with 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "sb3_rmdp", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0 and "usage: sb3-rmdp" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "sb3_rmdp", "evaluate", "missing.zip", "--env", RG],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2 and result.stdout == ""
    message = "model file 'missing.zip' does not exist (or is not a file); check the path."
    assert result.stderr.strip().splitlines() == [f"sb3-rmdp evaluate: error: {message}"]


def test_console_script_points_at_main() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["sb3-rmdp"].partition(":")
    assert getattr(importlib.import_module(module), function) is main


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], {}),
        (["size=3", "reward_scale=0.01"], {"size": 3, "reward_scale": 0.01}),
        (["net_arch=[64, 64]", "flag=True", "none=None"], {"net_arch": [64, 64], "flag": True, "none": None}),
        (["name=sb3_rmdp/ResourceGathering-v0", "empty="], {"name": RG, "empty": ""}),
    ],
)
def test_parse_key_values(pairs: list[str], expected: dict[str, object]) -> None:
    assert parse_key_values(pairs, "--env-kwargs") == expected


@pytest.mark.parametrize(
    ("indices", "text"), [([], "-"), ([4], "4"), ([0, 1, 2, 5, 7, 8], "0-2, 5, 7-8"), ([1, 3], "1, 3")]
)
def test_compact_indices(indices: list[int], text: str) -> None:
    assert compact_indices(np.array(indices, dtype=np.int64)) == text
