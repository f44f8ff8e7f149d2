"""Where the time of a training run goes, per phase, for the throughput configurations.

Each configuration of ``benchmarks/throughput.py`` trains once (its own process, one torch thread, CPU)
with timers wrapped around the model's methods from the outside (no change to ``sb3_rmdp``, no
``cProfile`` overhead: ``time.perf_counter`` only). Every phase's time is **exclusive**: a timed call
inside another timed call counts for the inner phase only, so the phases add up to the run's time.

============================  =================================================================
phase                         what is timed
============================  =================================================================
rollout env                   ``env.step`` (step_async + step_wait, auto-resets, infos)
rollout policy                ``policy.forward`` and ``policy.predict_values`` during rollouts
rollout storage               ``rollout_buffer.add``
rollout other                 the rest of ``collect_rollouts`` (obs to tensor, reward stacking, ...)
GAE                           ``rollout_buffer.compute_returns_and_advantage``
assigner                      the assigner's ``_on_step``, ``_on_rollout_end``, ``zero_grad``, ``step``
minibatch sampling            every ``next()`` of ``rollout_buffer.get`` (SB3: flattening; RMDPPPO: fixed
                              marginal advantages, once; both: the permutation, ``_get_samples``)
forward                       ``policy.evaluate_actions`` during training
marginal advantages           ``RMDPPPO.marginal_advantages`` (alpha-weighted, normalized)
backward                      ``torch.Tensor.backward``
optimizer                     ``optimizer.zero_grad``, ``clip_grad_norm_``, ``optimizer.step``
train other                   the rest of ``train`` (losses, ``.item()``, logging records)
other                         the rest of ``learn`` (set-up, first reset, logger dumps)
============================  =================================================================

    python benchmarks/profile_phases.py                       # every configuration, RMDPPPO and SB3 PPO
    python benchmarks/profile_phases.py --quick               # one rollout each (smoke run)
    python benchmarks/profile_phases.py --configs rg-25-3 rg-25-3-vec --algorithms rmdp

Writes ``benchmarks/results/profile.{csv,json,png}``. (The script is not called ``profile.py``: with its
folder on ``sys.path`` it would shadow the standard library's ``profile``, which ``cProfile``, and so
``torch._dynamo``, imports.)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results
from throughput import ALGORITHMS, CONFIGS, RESULTS, Config, build_model, machine, peak_rss_mb, versions

PHASES = (
    "rollout env",
    "rollout policy",
    "rollout storage",
    "rollout other",
    "GAE",
    "assigner",
    "minibatch sampling",
    "forward",
    "marginal advantages",
    "backward",
    "optimizer",
    "train other",
    "other",
)


class PhaseTimer:
    """Exclusive wall-clock time per phase of nested timed regions (``time.perf_counter``).

    :param synchronize: called at each region's boundaries (e.g. ``torch.cuda.synchronize`` on a GPU,
        whose kernels run asynchronously); ``None`` on CPU.
    """

    def __init__(self, synchronize: Callable[[], None] | None = None):
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(PHASES, 0)
        self._synchronize = synchronize
        # Open regions: [phase, start time, time spent in timed regions nested inside it].
        self._stack: list[list[Any]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._synchronize is not None:
            self._synchronize()
        self._stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            if self._synchronize is not None:
                self._synchronize()
            _, start, nested = self._stack.pop()
            elapsed = time.perf_counter() - start
            self.seconds[name] += elapsed - nested
            self.calls[name] += 1
            if self._stack:
                self._stack[-1][2] += elapsed

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` timed as phase ``name``."""

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return function(*args, **kwargs)

        return timed

    def wrap_generator(
        self, name: str, function: Callable[..., Iterator[Any]]
    ) -> Callable[..., Iterator[Any]]:
        """A generator function whose every ``next()`` is timed as phase ``name`` (not its consumer)."""

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            items = function(*args, **kwargs)
            while True:
                with self.phase(name):
                    try:
                        item = next(items)
                    except StopIteration:
                        return
                yield item

        return timed


def _patch(obj: Any, attribute: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace a bound method by a wrapped one on this instance only (if the object has it)."""
    if obj is not None and hasattr(obj, attribute):
        setattr(obj, attribute, wrapper(getattr(obj, attribute)))


def instrument(model: Any, timer: PhaseTimer) -> Callable[[], None]:
    """Wrap the methods of ``model`` (RMDPPPO or SB3's PPO) that mark the phases.

    :return: a function that undoes the class-level patches (``Tensor.backward``, ``clip_grad_norm_``);
        the instance-level ones go with the model.
    """
    import torch as th

    policy, buffer = model.policy, model.rollout_buffer
    _patch(model, "collect_rollouts", lambda f: timer.wrap("rollout other", f))
    _patch(model, "train", lambda f: timer.wrap("train other", f))
    _patch(model.env, "step", lambda f: timer.wrap("rollout env", f))
    _patch(policy, "forward", lambda f: timer.wrap("rollout policy", f))
    _patch(policy, "predict_values", lambda f: timer.wrap("rollout policy", f))
    _patch(policy, "evaluate_actions", lambda f: timer.wrap("forward", f))
    _patch(buffer, "add", lambda f: timer.wrap("rollout storage", f))
    _patch(buffer, "compute_returns_and_advantage", lambda f: timer.wrap("GAE", f))
    _patch(buffer, "get", lambda f: timer.wrap_generator("minibatch sampling", f))
    _patch(policy.optimizer, "zero_grad", lambda f: timer.wrap("optimizer", f))
    _patch(policy.optimizer, "step", lambda f: timer.wrap("optimizer", f))
    if hasattr(model, "marginal_advantages"):
        _patch(model, "marginal_advantages", lambda f: timer.wrap("marginal advantages", f))
    assigner = getattr(model, "assigner", None)
    for name in ("_on_step", "_on_rollout_end", "zero_grad", "step"):
        _patch(assigner, name, lambda f: timer.wrap("assigner", f))

    backward, clip_grad_norm = th.Tensor.backward, th.nn.utils.clip_grad_norm_
    th.Tensor.backward = timer.wrap("backward", backward)  # type: ignore[method-assign]
    th.nn.utils.clip_grad_norm_ = timer.wrap("optimizer", clip_grad_norm)

    def restore() -> None:
        th.Tensor.backward = backward  # type: ignore[method-assign]
        th.nn.utils.clip_grad_norm_ = clip_grad_norm

    return restore


def profile_run(config: Config, algorithm: str, seed: int = 0) -> dict[str, Any]:
    """Train ``algorithm`` on ``config`` in this process with the phase timers.

    :return: ``{"total_s", "wall_s", "peak_rss_mb", "phases": {phase: {"seconds", "percent", "calls"}}}``;
        ``total_s`` is the sum of the phases, ``wall_s`` the time of ``learn`` measured around it.
    """
    import torch as th

    th.set_num_threads(1)
    model = build_model(config, algorithm, seed)
    synchronize = th.cuda.synchronize if model.device.type == "cuda" else None
    timer = PhaseTimer(synchronize)
    restore = instrument(model, timer)
    try:
        start = time.perf_counter()
        with timer.phase("other"):
            model.learn(config.budget)
        wall = time.perf_counter() - start
    finally:
        restore()
    total = sum(timer.seconds.values())
    phases = {
        name: {
            "seconds": round(timer.seconds[name], 4),
            "percent": round(100.0 * timer.seconds[name] / total, 2),
            "calls": timer.calls[name],
        }
        for name in PHASES
    }
    return {
        "total_s": round(total, 4),
        "wall_s": round(wall, 4),
        "peak_rss_mb": peak_rss_mb(),
        "phases": phases,
    }


def run_in_subprocess(config: Config, algorithm: str, seed: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--single", config.name, algorithm, str(seed)]
    command += ["--rollouts", str(config.rollouts)]
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One horizontal bar per (configuration, algorithm): the share of each phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys((r["config"], r["algorithm"]) for r in rows))
    share = {(r["config"], r["algorithm"], r["phase"]): float(r["percent"]) for r in rows}
    total = {(r["config"], r["algorithm"]): float(r["total_s"]) for r in rows}
    colors = [plt.get_cmap("tab20")(i) for i in range(20)]
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(runs) + 1.8))
    left = [0.0] * len(runs)
    for p, phase in enumerate(PHASES):
        widths = [share.get((c, a, phase), 0.0) for c, a in runs]
        ax.barh(range(len(runs)), widths, left=left, color=colors[p % len(colors)], label=phase)
        left = [x + w for x, w in zip(left, widths)]
    ax.set_yticks(range(len(runs)), [f"{c} {a} ({total[(c, a)]:.1f} s)" for c, a in runs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the training run's wall time (exclusive per phase)")
    ax.legend(ncol=5, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / max(len(runs), 1)))
    ax.set_title("Where the time goes: one torch thread, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=[c.name for c in CONFIGS], help="configuration names")
    parser.add_argument(
        "--algorithms", nargs="*", default=["rmdp", "sb3"], choices=ALGORITHMS, help="algorithms to profile"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one rollout per run (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile")
    parser.add_argument("--single", nargs=3, metavar=("CONFIG", "ALGORITHM", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--rollouts", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    by_name = {c.name: c for c in CONFIGS}
    unknown = sorted(set(args.configs) - set(by_name))
    if unknown:
        parser.error(f"unknown configurations {unknown}; choose from {sorted(by_name)}")

    if args.single:
        name, algorithm, seed = args.single
        config = by_name[name] if args.rollouts is None else replace(by_name[name], rollouts=args.rollouts)
        print(json.dumps(profile_run(config, algorithm, int(seed))))
        return

    started = time.time()
    rows: list[dict[str, Any]] = []
    tables: dict[str, dict[str, Any]] = {}
    for name in args.configs:
        config = replace(by_name[name], rollouts=1) if args.quick else by_name[name]
        by_name[name] = config
        for algorithm in args.algorithms:
            result = run_in_subprocess(config, algorithm, args.seed)
            tables.setdefault(name, {})[algorithm] = result
            for phase, entry in result["phases"].items():
                rows.append(
                    {
                        "config": name,
                        "algorithm": algorithm,
                        "env": config.env,
                        "n_agents": config.n_agents,
                        "k": config.k,
                        "n_envs": config.n_envs,
                        "vec_env": "dummy" if algorithm == "rmdp-dummy" else config.vec_env,
                        "budget": config.budget,
                        "phase": phase,
                        "seconds": entry["seconds"],
                        "percent": entry["percent"],
                        "calls": entry["calls"],
                        "total_s": result["total_s"],
                        "peak_rss_mb": round(result["peak_rss_mb"], 1),
                    }
                )
            summary = ", ".join(
                f"{p} {e['percent']:.0f}%" for p, e in result["phases"].items() if e["percent"] >= 1
            )
            print(f"{name} {algorithm}: {result['total_s']:.1f} s: {summary}", flush=True)

    meta = {
        "machine": machine(),
        "versions": versions(),
        "seed": args.seed,
        "torch_threads": 1,
        "wall_s": round(time.time() - started, 1),
        "configs": [asdict(by_name[n]) for n in args.configs],
        "phases": list(PHASES),
        "notes": "one run per (configuration, algorithm); seconds are exclusive per phase (a timed call "
        "nested in another counts for the inner phase only) and add up to total_s, the training run's "
        "time; wall_s is learn() timed from outside (their gap is the timers' own overhead).",
        "tables": tables,
    }
    write_results(rows, args.out, meta, plot)


if __name__ == "__main__":
    main()
