"""The command line loses no work: outputs checked before training, Ctrl-C saves, nothing overwritten
unless asked, untrusted files refused, and bad options named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch as th

from sb3_rmdp import RMDPPPO
from sb3_rmdp.cli import main

RG = "sb3_rmdp/ResourceGathering-v0"
FAST = [
    *["--timesteps", "64", "--n-steps", "16", "--batch-size", "16", "--n-epochs", "1"],
    *["--policy-kwargs", "net_arch=[8]", "--eval-episodes", "0", "--no-progress-bar"],
]


def _train(*extra: str) -> int:
    return main(["train", "--env", RG, "-k", "2", *FAST, *extra])


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_the_printed_path_is_the_path_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train("--save", str(tmp_path / "noext"), "--json", str(tmp_path / "run.json")) == 0
    out = capsys.readouterr().out
    assert f"Model saved to {tmp_path / 'noext.zip'}\n" in out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["noext.zip", "run.json"]
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["model"] == str(tmp_path / "noext.zip") and summary["num_timesteps"] == 64


@pytest.mark.parametrize("option", ["--save", "--json"])
def test_train_refuses_an_output_under_a_file(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plain_file").write_text("")
    learned = []
    monkeypatch.setattr(RMDPPPO, "learn", lambda *args, **kwargs: learned.append(1))
    assert _train(option, str(tmp_path / "plain_file" / "out.zip")) == 2
    assert f"{option} {tmp_path / 'plain_file' / 'out.zip'}: {tmp_path / 'plain_file'} is a file" in _error(
        capsys
    )
    assert learned == []  # failed at once, before any training


def test_train_refuses_tensorboard_log_on_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "runs").write_text("")
    assert _train("--save", str(tmp_path / "m.zip"), "--tensorboard-log", str(tmp_path / "runs")) == 2
    assert f"--tensorboard-log {tmp_path / 'runs'}: {tmp_path / 'runs'} is a file, not a folder" in _error(
        capsys
    )
    assert not (tmp_path / "m.zip").exists()


def test_train_refuses_an_unwritable_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # (root writes everywhere, whatever the mode bits: what os.access answers is what is tested)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    assert _train("--save", str(locked / "sub" / "m.zip")) == 2
    assert f"the folder {locked} is not writable" in _error(capsys)
    assert _train("--save", str(tmp_path / "m.zip"), "--tensorboard-log", str(locked)) == 2
    assert f"--tensorboard-log {locked}: the folder {locked} is not writable" in _error(capsys)


def test_train_does_not_overwrite_without_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.zip"
    model.write_bytes(b"an earlier model")
    assert _train("--save", str(model)) == 2
    assert f"--save {model}: {model} exists already (pass --overwrite" in _error(capsys)
    assert model.read_bytes() == b"an earlier model"
    assert _train("--save", str(model), "--overwrite") == 0
    assert RMDPPPO.load(model).num_timesteps == 64


def test_ctrl_c_during_train_saves_the_model_so_far(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    collect = RMDPPPO.collect_rollouts
    calls = []

    def interrupted_on_the_second_rollout(self: RMDPPPO, *args: object, **kwargs: object) -> bool:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return collect(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RMDPPPO, "collect_rollouts", interrupted_on_the_second_rollout)
    assert _train("--save", str(tmp_path / "m")) == 130
    err = capsys.readouterr().err
    assert f"Interrupted after 32 of 64 steps: the model so far is saved to {tmp_path / 'm.zip'}" in err
    model = RMDPPPO.load(tmp_path / "m.zip")
    assert model.num_timesteps == 32 and model._n_updates == 1


def test_export_does_not_overwrite_without_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train("--save", str(tmp_path / "m.zip")) == 0
    out = tmp_path / "rep0.zip"
    out.write_bytes(b"an earlier export")
    assert main(["export", str(tmp_path / "m.zip"), "-j", "0", "--out", str(out)]) == 2
    assert f"--out {out}: {out} exists already" in _error(capsys)
    assert out.read_bytes() == b"an earlier export"
    assert (
        main(["export", str(tmp_path / "m.zip"), "-j", "0", "--out", str(tmp_path / "rep0"), "--overwrite"])
        == 0
    )
    assert f"written to {out}\n" in capsys.readouterr().out


def test_evaluate_refuses_a_pickled_file_without_trust(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stable_baselines3.common.base_class import BaseAlgorithm

    model = RMDPPPO("MlpPolicy", RG, k=2, n_steps=8, batch_size=8, policy_kwargs={"net_arch": [8]}, seed=0)
    BaseAlgorithm.save(model, tmp_path / "old.zip")  # pickled, as sb3-rmdp wrote files before
    assert main(["evaluate", str(tmp_path / "old.zip"), "--env", RG]) == 2
    assert "If you trust the file, pass --trust (see the Security page" in _error(capsys)
    assert main(["evaluate", str(tmp_path / "old.zip"), "--env", RG, "--trust"]) == 0


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        (["--batch-size", "1"], "at least 2 samples"),
        (["--device", "nonsense"], "not a torch device; pass auto, cpu or cuda"),
        pytest.param(
            ["--device", "cuda"],
            "torch sees no CUDA GPU here",
            marks=pytest.mark.skipif(
                th.cuda.is_available(), reason="a GPU is present: cuda is a valid device"
            ),
        ),
    ],
)
def test_bad_train_options_are_named(
    options: list[str], fix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train("--save", str(tmp_path / "m.zip"), *options) == 2
    assert fix in _error(capsys)
    assert not (tmp_path / "m.zip").exists()
