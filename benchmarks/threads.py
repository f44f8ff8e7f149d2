"""Torch intra-op threads: 1 against 2, with the other cores idle and with one of them busy.

Trains one throughput configuration (default ``hc-100-5`` of ``benchmarks/throughput.py``) in its own
process with ``torch.set_num_threads(t)`` (and ``OMP_NUM_THREADS=t``), once with nothing else running
and once while a second process spins on one core (a pure-Python busy loop, as another training run
or a test suite would). The CLI, the benchmarks, the examples and the Makefile default to one thread
because of what this measures.

    python benchmarks/threads.py                    # hc-100-5, threads 1 and 2, 3 repeats
    python benchmarks/threads.py --configs rg-25-3 --threads 1 2 4

Writes ``benchmarks/results/threads.{csv,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results
from throughput import CONFIGS, RESULTS, machine, median, versions

BUSY_LOOP = "while True: pass"


def run_one(config_name: str, threads: int, rollouts: int, seed: int) -> dict[str, float]:
    """Train in a fresh process with ``threads`` torch threads; its wall time and steps per second."""
    code = (
        "import json, sys, time, torch as th\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from dataclasses import replace\n"
        "from throughput import CONFIGS, build_model\n"
        f"th.set_num_threads({threads})\n"
        f"config = replace({{c.name: c for c in CONFIGS}}[{config_name!r}], rollouts={rollouts})\n"
        f"model = build_model(config, 'rmdp', {seed})\n"
        "start = time.perf_counter(); model.learn(config.budget); wall = time.perf_counter() - start\n"
        "print(json.dumps({'wall_s': wall, 'steps_per_s': config.budget / wall}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{config_name} with {threads} thread(s) failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['config']}\n{r['threads']} thread(s)\nother core {r['other_core']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    ax.bar(range(len(rows)), [float(r["steps_per_s"]) for r in rows], color="tab:blue")  # type: ignore[arg-type]
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("RMDPPPO env steps / s (median)")
    ax.set_title("torch threads: 1 vs more, other core idle or busy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=["hc-100-5"], help="throughput configurations")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=1, help="rollouts (and updates) per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "threads")
    args = parser.parse_args()
    known = {c.name: c for c in CONFIGS}
    unknown = [name for name in args.configs if name not in known]
    if unknown:
        parser.error(f"unknown configurations {unknown}; choose from {sorted(known)}")

    started = time.time()
    rows: list[dict[str, object]] = []
    for name in args.configs:
        config = replace(known[name], rollouts=args.rollouts)
        for other_core in ("idle", "busy"):
            spinner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if other_core == "busy" else None
            try:
                for threads in args.threads:
                    runs = [run_one(name, threads, args.rollouts, args.seed) for _ in range(args.repeats)]
                    row = {
                        "config": name,
                        "n_agents": config.n_agents,
                        "k": config.k,
                        "budget": config.budget,
                        "threads": threads,
                        "other_core": other_core,
                        "repeats": len(runs),
                        "steps_per_s": round(median([r["steps_per_s"] for r in runs]), 1),
                        "wall_s": round(median([r["wall_s"] for r in runs]), 2),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
    for row in rows:  # slowdown against one thread in the same condition
        base = next(r for r in rows if r["config"] == row["config"] and r["other_core"] == row["other_core"])
        row["speed_vs_first_threads"] = round(float(row["steps_per_s"]) / float(base["steps_per_s"]), 3)  # type: ignore[arg-type]

    meta = {
        "machine": machine(),
        "versions": versions(),
        "seed": args.seed,
        "wall_s": round(time.time() - started, 1),
        "notes": "RMDPPPO only, each run in its own process; 'busy': a pure-Python busy loop runs in "
        "another process for the whole condition; steps_per_s is the median over repeats; "
        "speed_vs_first_threads divides by the first --threads value in the same condition.",
        "rows": rows,
    }
    write_results(rows, args.out, meta, plot)


if __name__ == "__main__":
    main()
