"""``device="cuda"``: training, the assigner on the GPU, a CUDA-to-CPU round trip (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from conftest import make_scaled

from sb3_rmdp import RMDPPPO, EMAssigner, EndToEndAssigner

pytestmark = pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("assigner", [EMAssigner(warm_start_updates=0), EndToEndAssigner(seed=0)])
def test_trains_on_cuda_and_loads_on_cpu(assigner, tmp_path) -> None:
    model = RMDPPPO(
        "MlpPolicy",
        make_scaled,
        k=2,
        n_envs=2,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        seed=0,
        device="cuda",
        assigner=assigner,
    )
    model.learn(128)
    assert all(p.device.type == "cuda" for p in model.policy.parameters())
    assert model.assigner.weights().device.type == "cuda"
    obs = model.get_env().reset()
    actions, _ = model.predict(obs, representative=1, deterministic=True)
    model.save(tmp_path / "model.zip")
    loaded = RMDPPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.assigner.weights().device.type == "cpu"
    assert np.array_equal(loaded.assignment(), model.assignment())
    assert np.array_equal(loaded.predict(obs, representative=1, deterministic=True)[0], actions)
