"""``benchmarks/profile_phases.py`` times every phase of a (tiny) training run; the phases add up to it."""

from __future__ import annotations

import pytest
import torch as th
from conftest import load_benchmark


@pytest.mark.parametrize(("algorithm", "vec_env"), [("rmdp", "batched"), ("rmdp", "dummy"), ("sb3", "dummy")])
def test_phases_cover_a_tiny_run(algorithm: str, vec_env: str) -> None:
    profile = load_benchmark("profile_phases")
    config = profile.Config(
        "tiny", "sb3_rmdp/ResourceGathering-v0", 25, 3, 3, 64, rollouts=2, vec_env=vec_env
    )
    backward = th.Tensor.backward
    result = profile.profile_run(config, algorithm, seed=0)
    assert th.Tensor.backward is backward  # class-level patches are undone
    phases = result["phases"]
    assert list(phases) == list(profile.PHASES)
    measured = ["rollout env", "rollout policy", "rollout storage", "GAE", "minibatch sampling", "forward"]
    measured += ["backward", "optimizer"]
    if algorithm == "rmdp":
        measured += ["assigner", "marginal advantages"]
    for phase in measured:
        assert phases[phase]["seconds"] > 0 and phases[phase]["calls"] > 0, phase
    assert phases["GAE"]["calls"] == 2
    assert phases["forward"]["calls"] == 2 * 10 * (3 * 64 // 64)  # rollouts x epochs x minibatches
    total = sum(entry["seconds"] for entry in phases.values())
    # Each phase's seconds and the total are rounded to 1e-4 s: the sum may be off by half of that per term.
    assert total == pytest.approx(result["total_s"], abs=0.5e-4 * (len(phases) + 1))
    assert total == pytest.approx(result["wall_s"], rel=0.15)  # the timers account for the whole run
    assert sum(entry["percent"] for entry in phases.values()) == pytest.approx(100.0, abs=0.1)
