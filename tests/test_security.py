"""Loading runs no code from the file, and saving never destroys the last good file."""

from __future__ import annotations

import base64
import io
import json
import pathlib
import zipfile
from functools import partial
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch as th
from conftest import make_scaled
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_rmdp import RMDPPPO, EndToEndAssigner
from sb3_rmdp.envs import make_rmdp_vec_env
from sb3_rmdp.export import export_representative
from sb3_rmdp.files import atomic_write, write_text
from sb3_rmdp.serialization import ModelFileError, UntrustedFileError

SMALL = dict(n_steps=16, batch_size=16, n_epochs=1, seed=0, policy_kwargs=dict(net_arch=[8]))


def _model(**kwargs: object) -> RMDPPPO:
    env = make_rmdp_vec_env(partial(make_scaled, n_agents=3), n_envs=2)
    return RMDPPPO("MlpPolicy", env, k=2, **{**SMALL, **kwargs})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "model.zip"
    _model(assigner=EndToEndAssigner()).learn(64).save(path)
    return path


def _rewrite_data(source: Path, target: Path, edit: object) -> Path:
    """Copy the zip ``source`` to ``target`` with its ``data`` JSON passed through ``edit``."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            content = archive.read(info.filename)
            if info.filename == "data":
                content = json.dumps(edit(json.loads(content))).encode()  # type: ignore[operator]
            out.writestr(info, content)
    return target


class _Payload:
    """Unpickling this writes a file: the code a malicious zip would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.write_text, (self.marker, "the file's code ran"))


def _pickled(value: object) -> dict[str, str]:
    return {":type:": str(type(value)), ":serialized:": base64.b64encode(cloudpickle.dumps(value)).decode()}


def test_a_saved_model_holds_no_pickle(saved: Path) -> None:
    with zipfile.ZipFile(saved) as archive:
        data = json.loads(archive.read("data"))
    assert [key for key, item in data.items() if isinstance(item, dict) and ":serialized:" in item] == []
    assert data["assigner"][":rmdp:"] == 1


def test_a_planted_payload_does_not_run_on_a_default_load(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    planted = _rewrite_data(
        saved, tmp_path / "planted.zip", lambda data: {**data, "extra": _pickled(_Payload(marker))}
    )
    with pytest.raises(UntrustedFileError, match=r"pickled objects \(extra\).*trusted=True"):
        RMDPPPO.load(planted)
    assert not marker.exists()
    # The payload is real: it runs when the file is trusted (which is what trusted=True means).
    RMDPPPO.load(planted, trusted=True)
    assert marker.read_text() == "the file's code ran"


def test_a_payload_in_place_of_the_assigner_does_not_run(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    planted = _rewrite_data(
        saved, tmp_path / "planted.zip", lambda data: {**data, "assigner": _pickled(_Payload(marker))}
    )
    with pytest.raises(UntrustedFileError, match=r"assigner"):
        RMDPPPO.load(planted)
    assert not marker.exists()


def test_a_file_cannot_name_a_class_of_an_untrusted_module(saved: Path, tmp_path: Path) -> None:
    def rename(data: dict) -> dict:
        data["assigner"]["value"][":assigner:"] = "os:system"
        return data

    with pytest.raises(UntrustedFileError, match=r"os:system.*trusted=True"):
        RMDPPPO.load(_rewrite_data(saved, tmp_path / "renamed.zip", rename))
    with pytest.raises(ModelFileError, match="subclass of Assigner"):
        RMDPPPO.load(_rewrite_data(saved, tmp_path / "renamed.zip", rename), trusted=True)


def test_a_default_load_equals_the_saved_model(saved: Path) -> None:
    loaded = RMDPPPO.load(saved)
    original = RMDPPPO.load(saved, trusted=True)
    assert isinstance(loaded.assigner, EndToEndAssigner)
    assert loaded.assigner.optimizer.param_groups[0]["params"][0] is loaded.assigner.logits
    th.testing.assert_close(loaded.assigner.logits, original.assigner.logits, rtol=0, atol=0)
    assert loaded.observation_space == original.observation_space
    assert loaded.action_space == original.action_space


def test_an_old_pickled_file_needs_trust(tmp_path: Path) -> None:
    model = _model().learn(32)
    BaseAlgorithm.save(model, tmp_path / "old.zip")  # the format of sb3-rmdp before its data format
    with pytest.raises(UntrustedFileError, match=r"older than its data format.*trusted=True.*--trust"):
        RMDPPPO.load(tmp_path / "old.zip")
    loaded = RMDPPPO.load(tmp_path / "old.zip", trusted=True)
    obs = np.zeros((1, *model.observation_space.shape), dtype=np.float32)  # type: ignore[misc]
    for j in range(2):
        assert (
            model.predict(obs, representative=j, deterministic=True)[0]
            == loaded.predict(obs, representative=j, deterministic=True)[0]
        )
    np.testing.assert_array_equal(loaded.assignment(), model.assignment())


def test_a_function_schedule_is_pickled_and_needs_trust_or_custom_objects(tmp_path: Path) -> None:
    def schedule(progress: float) -> float:
        return 3e-4 * progress

    _model(learning_rate=schedule).save(tmp_path / "schedule.zip")
    with pytest.raises(UntrustedFileError, match=r"learning_rate, lr_schedule"):
        RMDPPPO.load(tmp_path / "schedule.zip")
    assert RMDPPPO.load(tmp_path / "schedule.zip", trusted=True).lr_schedule(0.5) == pytest.approx(1.5e-4)
    custom = RMDPPPO.load(
        tmp_path / "schedule.zip", custom_objects={"learning_rate": 1e-4, "lr_schedule": schedule}
    )
    assert custom.learning_rate == 1e-4


def test_a_plain_ppo_zip_is_named(tmp_path: Path) -> None:
    PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16).save(tmp_path / "ppo.zip")
    with pytest.raises(ModelFileError, match=r"plain SB3 PPO model.*stable_baselines3.PPO.load"):
        RMDPPPO.load(tmp_path / "ppo.zip")


def test_a_truncated_zip_is_damaged(saved: Path, tmp_path: Path) -> None:
    raw = saved.read_bytes()
    (tmp_path / "cut.zip").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match=r"cut.zip is damaged"):
        RMDPPPO.load(tmp_path / "cut.zip")


def test_a_zip_with_a_bad_crc_is_damaged(saved: Path, tmp_path: Path) -> None:
    raw = bytearray(saved.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        info = archive.getinfo("policy.pth")
    header = info.header_offset
    name_length, extra_length = np.frombuffer(bytes(raw[header + 26 : header + 30]), dtype="<u2")
    raw[header + 30 + name_length + extra_length + info.compress_size // 2] ^= 0xFF
    (tmp_path / "flipped.zip").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"damaged.*'policy.pth' fails its CRC check"):
        RMDPPPO.load(tmp_path / "flipped.zip")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RMDPPPO.load(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- saving
class _Injected(RuntimeError):
    pass


def _fail_in_th_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next ``th.save`` writes part of its output, then fails (a full disk, a crash...)."""

    def failing(obj: object, file: io.BufferedIOBase, *args: object, **kwargs: object) -> None:
        file.write(b"partial")
        raise _Injected("injected failure")

    monkeypatch.setattr(th, "save", failing)


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    model.save(tmp_path / "model.zip")
    before = _folder_state(tmp_path)
    model.learn(32)
    _fail_in_th_save(monkeypatch)
    with pytest.raises(_Injected):
        model.save(tmp_path / "model.zip")
    assert _folder_state(tmp_path) == before  # the old file, and no temporary file left behind
    monkeypatch.undo()
    RMDPPPO.load(tmp_path / "model.zip")


def test_a_save_without_suffix_writes_zip(tmp_path: Path) -> None:
    _model().save(tmp_path / "noext")
    assert sorted(_folder_state(tmp_path)) == ["noext.zip"]
    RMDPPPO.load(tmp_path / "noext")


def test_a_failed_export_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    path = export_representative(model, 0, tmp_path / "rep")
    assert path == tmp_path / "rep.zip"
    before = _folder_state(tmp_path)
    _fail_in_th_save(monkeypatch)
    with pytest.raises(_Injected):
        export_representative(model, 1, tmp_path / "rep.zip")
    assert _folder_state(tmp_path) == before
    monkeypatch.undo()
    PPO.load(path, device="cpu")  # the plain SB3 zip SB3 loads alone


def test_atomic_write_keeps_the_file_on_error(tmp_path: Path) -> None:
    write_text(tmp_path / "result.json", "old\n")
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "result.json", "w") as file:
        file.write("half of the new")
        raise KeyboardInterrupt
    assert _folder_state(tmp_path) == {"result.json": b"old\n"}
    write_text(tmp_path / "result.json", "new\n")
    assert (tmp_path / "result.json").read_text() == "new\n"
