"""Throughput of the r-MDP algorithms against their bases: env steps per second and peak memory.

For every configuration an algorithm of the package (``algo``: RMDPPPO, RMDPA2C, RMDPMaskablePPO or
RMDPRecurrentPPO) and its SB3 / sb3-contrib base train on the same r-MDP env (the base sees the agents'
mean reward), with the same number of env slots, network, ``n_steps``, minibatch size, epochs and
budget. Each run is its own process (so its peak RSS, ``VmHWM``, is its own), with one torch thread;
runs of the two algorithms alternate, and the figures are medians over ``--repeats``.

A configuration with ``vec_env="batched"`` (``rg-25-3-vec``) trains on
:class:`~sb3_rmdp.envs.ResourceGatheringVec` (all slots stepped in NumPy) instead of a ``DummyVecEnv``;
RMDPPPO also runs on the ``DummyVecEnv`` there, and ``vec_speedup`` is the median ratio of RMDPPPO's
steps per second on the batched VecEnv to the ``DummyVecEnv`` (the transitions are the same).
``hc-10000-10`` is a memory smoke run: 10,000 agents, k=10, one short rollout.

    python benchmarks/throughput.py                       # the default grid (about 20 min on 2 cores)
    python benchmarks/throughput.py --quick               # a smoke run
    python benchmarks/throughput.py --configs hc-100-5    # one configuration
    python benchmarks/throughput.py --configs a2c-hc-1-1 a2c-hc-100-5 mask-1-1 mask-100-5 lstm-hc-1-1 \
        lstm-hc-100-5 --out benchmarks/results/throughput_algorithms   # the other algorithms

Writes ``benchmarks/results/throughput.{csv,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

from sb3_rmdp.experiments.provenance import machine, versions

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Config:
    """One benchmark configuration; ``vec_env`` is ``"dummy"`` (SB3's DummyVecEnv) or ``"batched"``
    (:class:`~sb3_rmdp.envs.ResourceGatheringVec`, Resource Gathering only); ``critic`` is the
    ``MultiRepresentativePolicy`` critic layout."""

    name: str
    env: str
    n_agents: int
    k: int
    n_envs: int
    n_steps: int
    rollouts: int = 3
    vec_env: str = "dummy"
    critic: str = "auto"
    #: PPO epochs per update (1 for memory configurations: the peak does not depend on it)
    n_epochs: int = 10
    #: runs per algorithm (``None``: ``--repeats``)
    repeats: int | None = None
    #: the package's algorithm (a key of ``sb3_rmdp.ALGORITHMS``), against its base (:data:`BASES`)
    algo: str = "ppo"
    #: velocity envs: rewards from the per-step speed (exact; the base then skips the n rewards too)
    compact_rewards: bool = False
    #: the sampled critic's agents per minibatch (``None``: the exact critic over all agents)
    critic_agents: int | None = None
    #: agents aggregated by representative, this many tracked for the critic (``RMDPAggregateRolloutBuffer``)
    tracked_agents: int | None = None
    #: the rollout buffer's ``minibatches`` (``"per_representative"``: one representative per minibatch)
    minibatches: str = "mixed"

    @property
    def budget(self) -> int:
        return self.n_envs * self.n_steps * self.rollouts


HC = "sb3_rmdp/HalfCheetahVelocity-v0"
#: issue 25's HalfCheetah shapes: name, n_agents, k (= n_envs), n_steps, rollouts, n_epochs
SCALE_SHAPES = [
    ("hc-100-5", 100, 5, 1024, 3, 10),
    ("hc-1000-5", 1000, 5, 1024, 3, 10),
    ("hc-1000-5-2048", 1000, 5, 2048, 2, 10),
    ("hc-1000-50-mem", 1000, 50, 2048, 1, 1),
    ("hc-10000-10", 10_000, 10, 128, 1, 10),
    ("hc-100000-10", 100_000, 10, 128, 1, 10),
]


def _scale_configs(
    suffix: str, shapes: list[tuple[str, int, int, int, int, int]], **options: Any
) -> list[Config]:
    """``NAME-suffix`` configurations of ``shapes`` with compact rewards and ``options``."""
    return [
        Config(
            f"{name}-{suffix}",
            HC,
            n,
            k,
            k,
            n_steps,
            rollouts,
            n_epochs=epochs,
            compact_rewards=True,
            **options,
        )
        for name, n, k, n_steps, rollouts, epochs in shapes
    ]


RG = "sb3_rmdp/ResourceGathering-v0"
MRG = "sb3_rmdp/MaskedResourceGathering-v0"  # 100 agents with size=10
MASKED_CARTPOLE = "CartPole-v1+mask"  # one agent, every action valid: masking's own cost
BASES = {"ppo": "stable_baselines3:PPO", "a2c": "stable_baselines3:A2C"}
BASES.update(maskable_ppo="sb3_contrib:MaskablePPO", recurrent_ppo="sb3_contrib:RecurrentPPO")
CONFIGS = [
    Config("hc-1-1", HC, 1, 1, 4, 1024),
    Config("hc-100-1", HC, 100, 1, 4, 1024),
    Config("hc-100-5", HC, 100, 5, 5, 1024),
    Config("hc-1000-5", HC, 1000, 5, 5, 1024),
    Config("hc-1000-50", HC, 1000, 50, 50, 128, rollouts=2),
    Config("hc-1000-50-perrep", HC, 1000, 50, 50, 128, rollouts=2, critic="per_representative"),
    Config("rg-25-3", RG, 25, 3, 3, 512),
    Config("rg-25-3-vec", RG, 25, 3, 3, 512, vec_env="batched"),
    Config("hc-10000-10", HC, 10_000, 10, 10, 128, rollouts=1),
    Config("hc-100000-10", HC, 100_000, 10, 10, 128, rollouts=1),
    # issue 25's acceptance configurations, today's path and with the options (``-fast``: compact rewards
    # and a critic trained on 64 agents per minibatch)
    Config("hc-1000-5-2048", HC, 1000, 5, 5, 2048, rollouts=2),
    Config("hc-1000-5-2048-fast", HC, 1000, 5, 5, 2048, rollouts=2, compact_rewards=True, critic_agents=64),
    Config(
        "hc-1000-50-mem-fast", HC, 1000, 50, 50, 2048, 1, n_epochs=1, compact_rewards=True, critic_agents=64
    ),
    Config("hc-10000-10-fast", HC, 10_000, 10, 10, 128, rollouts=1, compact_rewards=True, critic_agents=64),
    Config("hc-100000-10-fast", HC, 100_000, 10, 10, 128, rollouts=1, compact_rewards=True, critic_agents=64),
    # ``-agg``: compact rewards, agents aggregated by representative, 256 tracked, 64 per minibatch
    *_scale_configs("agg", SCALE_SHAPES, tracked_agents=256, critic_agents=64),
    # ``-rep``: compact rewards, agents aggregated by representative, the 128 tracked pinned for every
    # minibatch's critic, one representative per minibatch
    *_scale_configs(
        "rep",
        [shape for shape in SCALE_SHAPES if shape[0] != "hc-1000-5"],
        tracked_agents=128,
        critic_agents=128,
        minibatches="per_representative",
    ),
    # the memory target: 2048 steps per slot, 102,400 transitions x 1000 agents per rollout
    Config("hc-1000-50-mem", HC, 1000, 50, 50, 2048, rollouts=1, n_epochs=1, repeats=1),
    # the other algorithms, n = k = 1 and n = 100, k = 5 (LSTMs of 64 units: sb3-contrib's 256 is slow)
    Config("a2c-hc-1-1", HC, 1, 1, 4, 64, rollouts=30, algo="a2c"),
    Config("a2c-hc-100-5", HC, 100, 5, 5, 64, rollouts=30, algo="a2c"),
    Config("mask-1-1", MASKED_CARTPOLE, 1, 1, 4, 512, algo="maskable_ppo"),
    Config("mask-100-5", MRG, 100, 5, 5, 512, algo="maskable_ppo"),
    Config("lstm-hc-1-1", HC, 1, 1, 4, 256, rollouts=2, algo="recurrent_ppo"),
    Config("lstm-hc-100-5", HC, 100, 5, 5, 256, rollouts=2, algo="recurrent_ppo"),
]
#: algorithms of a run: RMDPPPO, SB3's PPO, and RMDPPPO on a DummyVecEnv for a batched configuration
ALGORITHMS = ("rmdp", "sb3", "rmdp-dummy")


def make_vec_env(config: Config, seed: int, vec_env: str | None = None) -> Any:
    """The configuration's VecEnv (``vec_env`` overrides ``config.vec_env``), seeded as SB3 does."""
    from sb3_rmdp.envs import ResourceGatheringVec, make_rmdp_vec_env

    if (vec_env or config.vec_env) == "batched":
        if config.env != RG:
            raise ValueError(f"{config.name}: vec_env='batched' exists for {RG} only, not {config.env}.")
        batched = ResourceGatheringVec(config.n_envs)
        batched.seed(seed)
        return batched
    if config.env == MASKED_CARTPOLE:
        import gymnasium as gym
        import numpy as np
        from sb3_contrib.common.wrappers import ActionMasker

        from sb3_rmdp.envs import SingleAgentRMDP

        def masked() -> Any:
            return ActionMasker(SingleAgentRMDP(gym.make("CartPole-v1")), lambda env: np.ones(2, dtype=bool))

        return make_rmdp_vec_env(masked, n_envs=config.n_envs, seed=seed)
    grid = {"size": round(config.n_agents**0.5)} if config.n_agents != 25 else {}
    env_kwargs = grid if config.env in (RG, MRG) else {"n_agents": config.n_agents, "seed": seed}
    if config.compact_rewards:
        env_kwargs["compact_rewards"] = True
    return make_rmdp_vec_env(config.env, n_envs=config.n_envs, seed=seed, env_kwargs=env_kwargs)


def build_model(config: Config, algorithm: str, seed: int) -> Any:
    """The configuration's model for ``algorithm`` (one of :data:`ALGORITHMS`; ``"sb3"`` is the base of
    ``config.algo``), on CPU."""
    import importlib

    from sb3_rmdp import algorithm_class

    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose from {ALGORITHMS}")
    vec_env = make_vec_env(config, seed, "dummy" if algorithm == "rmdp-dummy" else None)
    common: dict[str, Any] = dict(n_steps=config.n_steps, seed=seed, device="cpu")
    if config.algo != "a2c":  # A2C: one gradient step on each whole rollout
        common.update(batch_size=64, n_epochs=config.n_epochs)
    recurrent = config.algo == "recurrent_ppo"
    policy, policy_kwargs = ("MlpLstmPolicy", {"lstm_hidden_size": 64}) if recurrent else ("MlpPolicy", {})
    if algorithm == "sb3":
        module, name = BASES[config.algo].split(":")
        base = getattr(importlib.import_module(module), name)
        return base(policy, vec_env, policy_kwargs=policy_kwargs, **common)
    policy_kwargs.update(critic=config.critic, critic_agents=config.critic_agents)
    buffer_kwargs: dict[str, Any] = (
        {} if config.minibatches == "mixed" else {"minibatches": config.minibatches}
    )
    if config.tracked_agents is not None:
        from sb3_rmdp.aggregate import RMDPAggregateRolloutBuffer

        common.update(rollout_buffer_class=RMDPAggregateRolloutBuffer)
        buffer_kwargs["tracked_agents"] = config.tracked_agents
    if buffer_kwargs:
        common.update(rollout_buffer_kwargs=buffer_kwargs)
    return algorithm_class(config.algo)(policy, vec_env, k=config.k, policy_kwargs=policy_kwargs, **common)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` (``ru_maxrss`` where /proc is missing).

    ``VmHWM`` is the high-water mark of this process's own address space; ``ru_maxrss`` of a process
    started by ``vfork``/``exec`` also counts its parent's (the driver's) peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_single(config: Config, algorithm: str, seed: int) -> dict[str, float]:
    """Train one algorithm once in this process; return its wall time, steps/s and peak RSS."""
    import torch as th

    th.set_num_threads(1)
    model = build_model(config, algorithm, seed)
    start = time.perf_counter()
    model.learn(config.budget)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "steps_per_s": config.budget / wall, "peak_rss_mb": peak_rss_mb()}


def run_in_subprocess(config: Config, algorithm: str, seed: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--single", config.name, algorithm, str(seed)]
    command += ["--rollouts", str(config.rollouts)]  # --quick shortens the configuration
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        f"{r['config']}\nn={r['n_agents']} k={r['k']}"
        + (f"\nx{r['vec_speedup']} vs Dummy" if r["vec_speedup"] != "" else "")
        for r in rows
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    x = range(len(rows))
    left.bar([i - 0.2 for i in x], [float(r["steps_per_s_sb3"]) for r in rows], 0.4, label="base")  # type: ignore[arg-type]
    left.bar([i + 0.2 for i in x], [float(r["steps_per_s_rmdp"]) for r in rows], 0.4, label="sb3-rmdp")  # type: ignore[arg-type]
    left.set_xticks(list(x), names, fontsize=7)
    left.set_ylabel("env steps / s (median)")
    left.legend()
    right.bar(list(x), [float(r["ratio"]) for r in rows], color="tab:green")  # type: ignore[arg-type]
    right.axhline(1.0, color="k", lw=0.8)
    right.set_xticks(list(x), names, fontsize=7)
    right.set_ylabel("sb3-rmdp / base steps per second")
    fig.suptitle("Throughput, one torch thread, same env slots, network and budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=[c.name for c in CONFIGS], help="configuration names")
    parser.add_argument("--repeats", type=int, default=3, help="runs per algorithm and configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one repeat, one rollout each (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput")
    parser.add_argument("--single", nargs=3, metavar=("CONFIG", "ALGORITHM", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--rollouts", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    by_name = {c.name: c for c in CONFIGS}

    if args.single:
        name, algorithm, seed = args.single
        config = by_name[name] if args.rollouts is None else replace(by_name[name], rollouts=args.rollouts)
        print(json.dumps(run_single(config, algorithm, int(seed))))
        return

    started = time.time()
    rows = []
    for name in args.configs:
        config = by_name[name]
        if args.quick:
            config = replace(config, rollouts=1)
            by_name[name] = config
        algorithms = ["rmdp", "sb3"] + (["rmdp-dummy"] if config.vec_env == "batched" else [])
        runs: dict[str, list[dict[str, float]]] = {algorithm: [] for algorithm in algorithms}
        for repeat in range(1 if args.quick else config.repeats or args.repeats):
            order = algorithms if repeat % 2 == 0 else algorithms[::-1]
            for algorithm in order:
                runs[algorithm].append(run_in_subprocess(config, algorithm, args.seed))
        ratios = [r["steps_per_s"] / s["steps_per_s"] for r, s in zip(runs["rmdp"], runs["sb3"])]
        dummy_runs = runs.get("rmdp-dummy", [])
        speedups = [r["steps_per_s"] / d["steps_per_s"] for r, d in zip(runs["rmdp"], dummy_runs)]
        row = {
            "config": name,
            "algo": config.algo,
            "env": config.env,
            "n_agents": config.n_agents,
            "k": config.k,
            "n_envs": config.n_envs,
            "n_steps": config.n_steps,
            "budget": config.budget,
            "repeats": len(ratios),
            "steps_per_s_rmdp": round(median([r["steps_per_s"] for r in runs["rmdp"]]), 1),
            "steps_per_s_sb3": round(median([r["steps_per_s"] for r in runs["sb3"]]), 1),
            "ratio": round(median(ratios), 3),
            "vec_env": config.vec_env,
            "steps_per_s_rmdp_dummy": round(median([d["steps_per_s"] for d in dummy_runs]), 1)
            if dummy_runs
            else "",
            "vec_speedup": round(median(speedups), 3) if speedups else "",
            "peak_rss_mb": round(median([r["peak_rss_mb"] for r in runs["rmdp"]]), 1),
            "peak_rss_mb_sb3": round(median([r["peak_rss_mb"] for r in runs["sb3"]]), 1),
            "wall_s_rmdp": round(median([r["wall_s"] for r in runs["rmdp"]]), 2),
            "wall_s_sb3": round(median([r["wall_s"] for r in runs["sb3"]]), 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    meta = {
        "machine": machine(),
        "versions": versions(),
        "seed": args.seed,
        "torch_threads": 1,
        "wall_s": round(time.time() - started, 1),
        "configs": [asdict(by_name[n]) for n in args.configs],
        "notes": "median over repeats; ratio = median of per-repeat ratios "
        "(the package's algorithm / its base's steps per second: RMDPPPO / PPO, RMDPA2C / A2C, "
        "RMDPMaskablePPO / MaskablePPO, RMDPRecurrentPPO / RecurrentPPO); "
        "peak_rss_mb is RMDPPPO's process peak resident memory (VmHWM of its own process); "
        "vec_speedup (batched configurations only) = median of per-repeat ratios of RMDPPPO's steps "
        "per second on ResourceGatheringVec to RMDPPPO's on a DummyVecEnv of the same env "
        "(steps_per_s_rmdp_dummy).",
        "rows": rows,
    }
    write_results(rows, args.out, meta, plot)


if __name__ == "__main__":
    main()
