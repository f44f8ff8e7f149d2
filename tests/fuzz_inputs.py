"""Bad inputs, tried as a demanding user would: does each get a clear error that names the fix?

Run it with ``python tests/fuzz_inputs.py`` (about 20 s; it is not a test module, pytest does not collect
it). Each case is an API call or a command line that must fail, or warn, with a message matching the
case's pattern (the fix, or what is wrong). A case is

- **clear** when it raises a ``ValueError`` / ``TypeError`` / ``FileNotFoundError`` (a command: exit code
  2 with one ``error:`` line, or 130 where that is the contract) or warns, with a message matching;
- **unclear** when it fails otherwise: another exception, a traceback, a message that does not match;
- **silent** when it is accepted without a word.

The last line reads ``N tried, N clear errors, N unclear, N silent``; the exit code is 1 unless every case
is clear. ``-v`` prints every case's message.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's small envs

from conftest import DictObservation, ImageWalk, ScaledRewardsEnv, make_scaled
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from sb3_rmdp import RMDPA2C, RMDPPPO, CoverageAssigner, FixedAssigner, RMDPMaskablePPO
from sb3_rmdp.cli import main as cli_main
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.policies import MlpPolicy
from sb3_rmdp.tuning import tune_main

RG = "sb3_rmdp/ResourceGathering-v0"
SMALL: dict[str, Any] = dict(n_steps=16, batch_size=16, n_epochs=1, policy_kwargs=dict(net_arch=[8]))
CLEAR_EXCEPTIONS = (ValueError, TypeError, FileNotFoundError)


@dataclass
class Case:
    name: str
    run: Callable[[], Any]
    #: a regular expression the error (or warning) message must match
    expect: str
    #: a warning is the contract (e.g. a device that falls back to the CPU)
    warns: bool = False
    #: the exit code a command must end with
    exit_code: int = 2


class _Exit(Exception):
    def __init__(self, code: int, err: str):
        super().__init__(err)
        self.code, self.err = code, err


def _command(main: Callable[[list[str]], int], argv: list[str]) -> Callable[[], None]:
    def run() -> None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's usage errors
                code = int(exit_.code or 0)
        if code != 0:
            raise _Exit(code, err.getvalue())

    return run


def _cli(*argv: str) -> Callable[[], None]:
    return _command(cli_main, list(argv))


def _tune(*argv: str) -> Callable[[], None]:
    return _command(tune_main, list(argv))


class _Overflowing(gym.Wrapper):
    def step(self, action: Any) -> tuple[Any, np.ndarray, bool, bool, dict]:
        obs, rewards, terminated, truncated, info = self.env.step(action)
        return obs, np.asarray(rewards, dtype=np.float64) * 1e39, terminated, truncated, info


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.write_text, (self.marker, "the file's code ran"))


def _rewrite_data(source: Path, target: Path, edit: Callable[[dict], dict]) -> Path:
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            content = archive.read(info.filename)
            if info.filename == "data":
                content = json.dumps(edit(json.loads(content))).encode()
            out.writestr(info, content)
    return target


def _flip_a_byte(source: Path, target: Path, entry: str) -> Path:
    raw = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo(entry)
    header = info.header_offset
    name_length, extra_length = np.frombuffer(bytes(raw[header + 26 : header + 30]), dtype="<u2")
    raw[header + 30 + name_length + extra_length + info.compress_size // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    return target


def _model(env: Any = None, policy: Any = "MlpPolicy", **kwargs: Any) -> RMDPPPO:
    return RMDPPPO(policy, env if env is not None else make_scaled, **{**SMALL, "k": 1, **kwargs})


def _masked() -> gym.Env:
    return ActionMasker(make_scaled(), lambda env: np.ones(2, dtype=bool))


class _MiddleChannels(gym.ObservationWrapper):
    """(36, 1, 36) images: the channel axis in the middle."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0, 255, shape=(36, 1, 36), dtype=np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        return np.transpose(observation, (1, 0, 2))


def _wrong_rows(assigner: Any) -> Callable[[], Any]:
    def run() -> Any:
        env = make_scaled()
        env.agent_params = np.zeros((5, 1))
        return _model(env, k=2, n_envs=2, assigner=assigner)

    return run


def _large_returns() -> None:
    env = make_rmdp_vec_env(lambda: ScaledRewardsEnv(gym.make("CartPole-v1"), scales=[1.0, 1e5]))
    _model(env).learn(32)


def cases(folder: Path) -> list[Case]:
    """The bad inputs, with the files they need written under ``folder``."""
    small_env = partial(make_rmdp_vec_env, partial(make_scaled, n_agents=3))
    saved = folder / "model.zip"
    _model(small_env(n_envs=2), k=2).save(saved)
    rg_model = folder / "rg.zip"
    RMDPPPO("MlpPolicy", RG, k=2, **SMALL).save(rg_model)
    PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16).save(folder / "ppo.zip")
    RMDPA2C("MlpPolicy", small_env(n_envs=2), k=2).save(folder / "a2c.zip")
    raw = saved.read_bytes()
    (folder / "cut.zip").write_bytes(raw[: len(raw) // 2])
    _flip_a_byte(saved, folder / "crc.zip", "policy.pth")
    marker = folder / "pwned.txt"
    payload = {":type:": "x", ":serialized:": base64.b64encode(cloudpickle.dumps(_Payload(marker))).decode()}
    _rewrite_data(saved, folder / "planted.zip", lambda data: {**data, "assigner": payload})
    BaseAlgorithm.save(_model(small_env(n_envs=2), k=2), folder / "old.zip")
    (folder / "plain_file").write_text("")
    (folder / "results.csv").write_text("algorithm,k\nem,1\n")
    for name in ("existing.zip", "existing_export.zip", "existing_best.json"):
        (folder / name).write_text("an earlier result")
    train = ["train", "--env", RG, "-k", "2", "--timesteps", "64", "--n-steps", "16", "--eval-episodes", "0"]
    save = ["--save", str(folder / "never.zip")]
    tune = ["--env", RG, "-k", "2", "--storage", ":memory:"]
    whole = r"whole number"
    budget = r"the policy budget must be a whole number of representatives"

    def load_planted() -> None:
        try:
            RMDPPPO.load(folder / "planted.zip")
        finally:
            if marker.exists():
                raise AssertionError("the planted payload ran on a default load")

    all_cases = [
        # the policy budget and the env slots
        Case("k='2'", lambda: _model(k="2"), rf"k='2': {budget}.*pass the number, k=2"),
        Case("k='abc'", lambda: _model(k="abc"), rf"k='abc': {budget}"),
        Case("k=None", lambda: _model(k=None), rf"k=None: {budget}"),
        Case("k=nan", lambda: _model(k=float("nan")), rf"k=nan: {budget}"),
        Case("k=inf", lambda: _model(k=float("inf")), rf"k=inf: {budget}"),
        Case("k=True", lambda: _model(k=True), rf"k=True: {budget}.*bool"),
        Case("k=0", lambda: _model(k=0), r"k >= 1"),
        Case("k=1.5", lambda: _model(k=1.5), rf"k=1.5: {budget}"),
        Case("k > n_agents", lambda: _model(k=4), r"lower k to at most 3"),
        Case("n_envs=0", lambda: _model(n_envs=0), r"n_envs=0: pass a number of env slots >= 1"),
        Case("n_envs=-1", lambda: _model(n_envs=-1), r"n_envs=-1: pass a number of env slots >= 1"),
        # observation spaces and masks
        Case(
            "a Dict space with a policy for arrays",
            lambda: _model(lambda: ScaledRewardsEnv(DictObservation(gym.make("CartPole-v1"))), MlpPolicy),
            r"Dict space.*'MultiInputPolicy'",
        ),
        Case("CnnPolicy on vectors", lambda: _model(policy="CnnPolicy"), r"reads images.*'MlpPolicy'"),
        Case(
            "an image with its channels in the middle",
            lambda: _model(lambda: ScaledRewardsEnv(_MiddleChannels(ImageWalk())), policy="CnnPolicy"),
            r"neither channel-first .* nor channel-last.*Transpose",
        ),
        Case("a masked env to RMDPPPO", lambda: _model(_masked), r"would ignore.*RMDPMaskablePPO"),
        Case(
            "an env without masks to RMDPMaskablePPO",
            lambda: RMDPMaskablePPO("MlpPolicy", make_scaled, **SMALL),
            r"action_masks\(\).*ActionMasker",
        ),
        Case("batch_size=1", lambda: _model(batch_size=1), r"batch_size=1: .*at least 2"),
        Case("device='nonsense'", lambda: _model(device="nonsense"), r"not a torch device; pass 'auto'"),
        # rewards
        Case(
            "reward overflowing float32",
            lambda: _model(_Overflowing(make_scaled())).learn(16),
            r"too large for float32.*Scale the rewards",
        ),
        Case("reward NaN", lambda: _model(make_scaled(bad="nan")).learn(16), r"non-finite reward"),
        Case(
            "reward of the wrong shape", lambda: _model(make_scaled(bad="shape")).learn(16), r"one reward per"
        ),
        Case("scalar-reward env", lambda: _model("CartPole-v1"), r"reward_space"),
        Case(
            "VecNormalize(norm_reward=True)",
            lambda: _model(VecNormalize(small_env(n_envs=1), norm_reward=True)),
            r"VecNormalize\(env, norm_reward=False\)",
        ),
        Case(
            "returns of scale 1e5", _large_returns, r"Per-agent returns reach .*Scale the rewards", warns=True
        ),
        # agent params, every assigner
        *[
            Case(f"agent_params rows, {name}", _wrong_rows(assigner), r"agent_params has 5 rows.*\(3, d\)")
            for name, assigner in [
                ("em", "em"),
                ("end_to_end", "end_to_end"),
                ("kmeans", "kmeans"),
                ("random", "random"),
                ("oracle", "oracle"),
                ("coverage", CoverageAssigner(epsilon=0.5)),
                ("fixed", FixedAssigner(np.array([0, 1, 0]))),
            ]
        ],
        # model files
        Case(
            "a plain SB3 PPO zip", lambda: RMDPPPO.load(folder / "ppo.zip"), r"plain SB3 PPO model.*PPO\.load"
        ),
        Case("a truncated zip", lambda: RMDPPPO.load(folder / "cut.zip"), r"is damaged"),
        Case("a zip with a bad CRC", lambda: RMDPPPO.load(folder / "crc.zip"), r"damaged.*CRC"),
        Case("a missing file", lambda: RMDPPPO.load(folder / "nowhere.zip"), r"No model file at"),
        Case("not a zip", lambda: RMDPPPO.load(folder / "results.csv"), r"not a zip file"),
        Case("a planted payload", load_planted, r"pickled objects \(assigner\).*trusted=True"),
        Case("an old pickled zip", lambda: RMDPPPO.load(folder / "old.zip"), r"older than .*trusted=True"),
        Case(
            "a zip with another n",
            lambda: RMDPPPO.load(saved, env=make_rmdp_vec_env(partial(make_scaled, n_agents=4), n_envs=2)),
            r"4 agents, but this model was built for n_agents=3",
        ),
        Case(
            "an RMDPA2C zip to RMDPPPO.load",
            lambda: RMDPPPO.load(folder / "a2c.zip"),
            r"RMDPA2C model, not an RMDPPPO one: load it with RMDPA2C.load",
        ),
        Case("load(k=3)", lambda: RMDPPPO.load(saved, k=3), r"fixed by the saved networks"),
        # the command line
        Case("train --batch-size 1", _cli(*train, *save, "--batch-size", "1"), r"at least 2 samples"),
        Case("train --device nonsense", _cli(*train, *save, "--device", "nonsense"), r"not a torch device"),
        Case(
            "train --save under a file",
            _cli(*train, "--save", str(folder / "plain_file" / "m.zip")),
            r"plain_file is a file",
        ),
        Case(
            "train --json under a file",
            _cli(*train, *save, "--json", str(folder / "plain_file" / "r.json")),
            r"plain_file is a file",
        ),
        Case(
            "train --tensorboard-log on a file",
            _cli(*train, *save, "--tensorboard-log", str(folder / "plain_file")),
            r"is a file, not a folder",
        ),
        Case(
            "train over an existing --save",
            _cli(*train, "--save", str(folder / "existing.zip")),
            r"exists already \(pass --overwrite",
        ),
        Case("train -k 0", _cli(*train[:4], "0", *train[5:], *save), r"k must be a whole number"),
        Case(
            "export over an existing --out",
            _cli("export", str(rg_model), "-j", "0", "--out", str(folder / "existing_export.zip")),
            r"exists already \(pass --overwrite",
        ),
        Case(
            "export -j 5", _cli("export", str(rg_model), "-j", "5", "--out", str(folder / "x.zip")), r"0 <= J"
        ),
        Case("evaluate a CSV", _cli("evaluate", str(folder / "results.csv"), "--env", RG), r"not a zip file"),
        Case("evaluate a damaged zip", _cli("evaluate", str(folder / "cut.zip"), "--env", RG), r"is damaged"),
        Case(
            "evaluate a planted zip", _cli("evaluate", str(folder / "planted.zip"), "--env", RG), r"--trust"
        ),
        Case(
            "evaluate a plain PPO zip",
            _cli("evaluate", str(folder / "ppo.zip"), "--env", RG),
            r"plain SB3 PPO",
        ),
        Case(
            "tune --n-timesteps 0", _tune(*tune, "--n-timesteps", "0"), rf"--n-timesteps: expected a {whole}"
        ),
        Case(
            "tune --n-timesteps -5",
            _tune(*tune, "--n-timesteps", "-5"),
            rf"--n-timesteps: expected a {whole}",
        ),
        Case("tune --n-trials 0", _tune(*tune, "--n-trials", "0"), rf"--n-trials: expected a {whole}"),
        Case("tune -k 0", _tune("--env", RG, "-k", "0"), rf"-k: expected a {whole}"),
        Case("tune -k -1", _tune("--env", RG, "-k", "-1"), rf"-k: expected a {whole}"),
        Case("tune --storage bogus://x", _tune(*tune[:4], "--storage", "bogus://x"), r"not a database URL"),
        Case("tune --storage 'not a url'", _tune(*tune[:4], "--storage", "not a url"), r"not a database URL"),
        Case(
            "tune over an existing --out",
            _tune(*tune, "--out", str(folder / "existing_best.json")),
            r"exists already \(pass --overwrite",
        ),
    ]
    if not th.cuda.is_available():  # where a GPU is present, cuda is a valid device
        all_cases += [
            Case("device='cuda' without a GPU", lambda: _model(device="cuda"), r"no CUDA GPU", warns=True),
            Case(
                "train --device cuda without a GPU", _cli(*train, *save, "--device", "cuda"), r"no CUDA GPU"
            ),
        ]
    return all_cases


def classify(case: Case) -> tuple[str, str]:
    """``("clear" | "unclear" | "silent", the message)`` for one case."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            case.run()
        except _Exit as exit_:
            lines = exit_.err.strip().splitlines()
            message = lines[-1] if lines else ""
            ok = exit_.code == case.exit_code and "Traceback" not in exit_.err and "error:" in message
            return ("clear" if ok and re.search(case.expect, message) else "unclear"), message
        except CLEAR_EXCEPTIONS as error:
            message = f"{type(error).__name__}: {error}"
            return (
                "clear" if re.search(case.expect, str(error), re.S) and not case.warns else "unclear"
            ), message
        except BaseException as error:
            return "unclear", f"{type(error).__name__}: {error}"
    for warning in caught:
        if re.search(case.expect, str(warning.message), re.S):
            return ("clear" if case.warns else "unclear"), f"warning: {warning.message}"
    return "silent", "accepted without an error or a warning"


def main(argv: list[str] | None = None) -> int:
    verbose = "-v" in (argv if argv is not None else sys.argv[1:])
    th.set_num_threads(1)
    counts = {"clear": 0, "unclear": 0, "silent": 0}
    with tempfile.TemporaryDirectory() as folder:
        all_cases = cases(Path(folder))
        for case in all_cases:
            verdict, message = classify(case)
            counts[verdict] += 1
            if verbose or verdict != "clear":
                print(f"[{verdict}] {case.name}: {message}")
    clear, unclear, silent = counts["clear"], counts["unclear"], counts["silent"]
    print(f"{len(all_cases)} tried, {clear} clear errors, {unclear} unclear, {silent} silent")
    return 0 if counts["clear"] == len(all_cases) else 1


if __name__ == "__main__":
    sys.exit(main())
