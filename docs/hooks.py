"""MkDocs hook: the committed benchmark results, straight from ``benchmarks/results/``.

* Every ``benchmarks/results/**/*.png`` is served as ``assets/results/<path>.png`` (no copy in docs/
  to go stale; a store's figures keep their folder): pages link to it as ``../assets/results/<path>.png``
  and ``--strict`` checks the link.
* A line ``<!-- results: KIND NAME... -->`` in a page is replaced by a table built from the committed
  files (so the site never shows a number the results do not hold):

  - ``report NAME`` / ``headline NAME`` / ``fairness NAME``: the store ``benchmarks/results/NAME/``'s
    ``report.md`` / ``headline.md`` / ``fairness.md``, as ``sb3-rmdp bench report`` wrote them from its
    ``cells.csv``;
  - ``committee NAME``: zero-shot, few-shot and best-member welfare of held-out agents per clustering and
    K, from the store ``benchmarks/results/NAME/cells.csv``;
  - ``runs NAME...``: the command, date, machine and notes of ``benchmarks/results/NAME.json``;
  - ``throughput [NAME]``: ``benchmarks/results/NAME.csv`` (default ``throughput``);
  - ``threads``: ``benchmarks/results/threads.csv``;
  - ``profile [NAME]``: the share of each phase of a run, per configuration and algorithm, from
    ``benchmarks/results/NAME.csv`` (default ``profile``).

An unknown KIND or a missing file stops the build with an error naming it.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
ASSETS = "assets/results"
MARKER = re.compile(r"^<!--\s*results:\s*(\w+)((?:\s+[\w.-]+)*)\s*-->\s*$", re.MULTILINE)


def on_files(files: Files, config: Any) -> Files:
    # a store's figures keep their folder: assets/results/<grid>/<name>.png
    for png in sorted(RESULTS.glob("**/*.png")):
        name = png.relative_to(RESULTS).as_posix()
        files.append(File.generated(config, f"{ASSETS}/{name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, names = match.group(1), match.group(2).split()
        if kind in ("report", "headline", "fairness") and len(names) == 1:
            return store_report(names[0], kind, page.file.src_uri)
        if kind == "committee" and len(names) == 1:
            return committee_table(names[0])
        if kind == "runs" and names:
            return runs_list(names)
        if kind == "throughput" and len(names) <= 1:
            return throughput_table(names[0] if names else "throughput")
        if kind == "threads" and not names:
            return threads_table()
        if kind == "profile" and len(names) <= 1:
            return profile_table(names[0] if names else "profile")
        raise PluginError(f"{page.file.src_uri}: unknown results marker {match.group(0)!r}")

    return MARKER.sub(replace, markdown)


def store_report(name: str, kind: str, page_uri: str) -> str:
    """A store's ``report.md`` (``report``: tables, comparisons, figures) or ``headline.md``, as
    ``sb3-rmdp bench report`` wrote it, its heading levels pushed below the page's and its figure
    links pointed at the site's copies."""
    text = _read(f"{name}/{kind}.md").read_text()
    prefix = "../" * page_uri.count("/") + f"{ASSETS}/{name}/"
    figure = re.compile(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)")
    text = figure.sub(lambda m: f"![{m.group(1)}]({prefix}{m.group(2)})", text)
    text = re.sub(r"^## Grid .*\n", "", text, flags=re.MULTILINE)
    return text


def _read(name: str) -> Path:
    path = RESULTS / name
    if not path.is_file():
        raise PluginError(f"docs/hooks.py: {path} is missing (the docs render the committed results).")
    return path


def _rows(name: str) -> list[dict[str, str]]:
    with open(_read(f"{name}.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _mean_se(v: list[float]) -> str:
    """``mean ± s.e. (count)`` of the seeds' values."""
    if not v:
        return ""
    mean = sum(v) / len(v)
    if len(v) == 1:
        return f"{mean:.2f} (1)"
    se = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1) / len(v))
    return f"{mean:.2f} ± {se:.2f} ({len(v)})"


def committee_table(name: str) -> str:
    """The store ``benchmarks/results/NAME/`` of a committee grid: per clustering and K, the held-out
    agents' zero-shot, few-shot and best-member welfare."""
    cells: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    budgets = set()
    for row in _rows(f"{name}/cells"):
        method = row["algorithm"] if not row["epsilon"] else f"{row['algorithm']} ε={float(row['epsilon']):g}"
        for key in ("welfare_zero_shot", "welfare_few_shot", "welfare_best_member", "upper_bound_new"):
            cells[(method, int(row["k"]))][key].append(float(row[key]))
        budgets.add(int(row["budget_per_representative"]))
    lines = [
        "| clustering | K | zero-shot | few-shot | best member | upper bound |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (method, k), v in sorted(cells.items(), key=lambda item: (item[0][1], item[0][0])):
        bound = sum(v["upper_bound_new"]) / len(v["upper_bound_new"])
        lines.append(
            f"| {method} | {k} | {_mean_se(v['welfare_zero_shot'])} | {_mean_se(v['welfare_few_shot'])} "
            f"| {_mean_se(v['welfare_best_member'])} | {bound:.2f} |"
        )
    steps = ", ".join(f"{b:,}" for b in sorted(budgets))
    return (
        "\n".join(lines)
        + f"\n\n*Held-out agents' mean return: mean ± standard error (seeds), {steps} env steps per "
        f"representative. Source: `benchmarks/results/{name}/cells.csv`.*\n"
    )


def runs_list(names: list[str]) -> str:
    items = []
    for name in names:
        meta = json.loads(_read(f"{name}.json").read_text())
        machine = meta.get("machine", {})
        versions = meta.get("versions", {})
        item = (
            f"- **`{name}`**: `{meta.get('command', '?')}`, {meta.get('date', '?')}, "
            f"{machine.get('cpu_count', '?')} CPU cores ({machine.get('cpu', '?')}, "
            f"{machine.get('gpu', '?')}), wall {meta.get('wall_s', '?')} s; "
            f"torch {versions.get('torch', '?')}, "
            f"SB3 {versions.get('stable_baselines3', versions.get('stable-baselines3', '?'))}."
        )
        if meta.get("notes"):
            item += f" {_escape(meta['notes'])}"
        items.append(item)
    return "\n".join(items) + "\n"


def _escape(text: str) -> str:
    """Free text as literal Markdown (no emphasis, code or HTML from its ``*``, ``_``, backticks or ``<``)."""
    text = re.sub(r"([\\`*_\[\]])", r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def throughput_table(name: str) -> str:
    rows = _rows(name)
    by_algo = "algo" in rows[0]  # the other algorithms against their bases
    ours, base = ("sb3-rmdp", "base") if by_algo else ("RMDPPPO", "SB3 PPO")
    lines = [
        f"| config |{' algorithm (vs base) |' if by_algo else ''} env | n_agents | k | n_envs | n_steps "
        f"| {ours} steps/s | {base} steps/s | ratio | peak RSS MB ({ours} / {base}) |",
        f"|---|{'---|' if by_algo else ''}---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rmdp, sb3, ratio = float(r["steps_per_s_rmdp"]), float(r["steps_per_s_sb3"]), float(r["ratio"])
        rss, rss_sb3 = float(r["peak_rss_mb"]), float(r["peak_rss_mb_sb3"])
        algo = f" {ALGORITHM_PAIRS.get(r['algo'], r['algo'])} |" if by_algo else ""
        lines.append(
            f"| {r['config']} |{algo} `{r['env']}` | {r['n_agents']} | {r['k']} | {r['n_envs']} "
            f"| {r['n_steps']} | {rmdp:.0f} | {sb3:.0f} | {ratio:.2f} | {rss:.0f} / {rss_sb3:.0f} |"
        )
    return "\n".join(lines) + f"\n\n*Source: `benchmarks/results/{name}.csv`.*\n"


#: how the throughput tables name an algorithm and its base
ALGORITHM_PAIRS = {
    "ppo": "RMDPPPO (PPO)",
    "a2c": "RMDPA2C (A2C)",
    "maskable_ppo": "RMDPMaskablePPO (MaskablePPO)",
    "recurrent_ppo": "RMDPRecurrentPPO (RecurrentPPO)",
}


def threads_table() -> str:
    lines = [
        "| config | torch threads | other core | RMDPPPO steps/s | speed vs first row of its condition |",
        "|---|---:|---|---:|---:|",
    ]
    for r in _rows("threads"):
        lines.append(
            f"| {r['config']} | {r['threads']} | {r['other_core']} | {float(r['steps_per_s']):.0f} "
            f"| {float(r['speed_vs_first_threads']):.2f} |"
        )
    return "\n".join(lines) + "\n\n*Source: `benchmarks/results/threads.csv`.*\n"


def profile_table(name: str) -> str:
    """One row per (configuration, algorithm): its wall time and each phase's share of it, in percent."""
    rows = _rows(name)
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    runs: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    totals: dict[tuple[str, str], float] = {}
    for r in rows:
        runs[(r["config"], r["algorithm"])][r["phase"]] = r["percent"]
        totals[(r["config"], r["algorithm"])] = float(r["total_s"])
    lines = [
        "| config | algorithm | seconds | " + " | ".join(phases) + " |",
        "|---|---|---:|" + "---:|" * len(phases),
    ]
    for (config, algorithm), shares in runs.items():
        cells = [f"{float(shares[p]):.0f}" if p in shares else "" for p in phases]
        lines.append(
            f"| {config} | {algorithm} | {totals[(config, algorithm)]:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + f"\n\n*Source: `benchmarks/results/{name}.csv` (percent of each run's time).*\n"
