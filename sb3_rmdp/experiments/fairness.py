"""The fairness section of a grid's report: who each welfare objective leaves behind.

For a grid whose cells train for more than one welfare objective (the ``objective`` parameter), per task,
k and objective: the utilitarian welfare (the ``welfare`` column), the worst-off agent's return, the
10th percentile and the share of agents served (a positive return), mean +- s.e. over seeds; and a
Pareto-style figure of utilitarian against minimum-agent welfare, one point per cell. The per-agent
figures come from a row's ``returns`` (every agent's evaluated return, when the experiment keeps it) or
its ``welfare_min`` / ``welfare_p10`` columns; the exact best worst-off return (``optimal_egalitarian``)
is shown where the experiment knows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sb3_rmdp.experiments.report import mean_se

FIGURES = ("welfare", "welfare_min", "welfare_p10", "served_share", "optimal_egalitarian")
HEADERS = ("utilitarian welfare", "worst-off agent", "10th percentile", "agents served", "best worst-off")


def _objective(row: dict[str, Any]) -> str:
    name = row.get("objective") or "utilitarian"
    temperature = row.get("objective_temperature")
    if name == "egalitarian" and temperature not in (None, ""):
        return f"egalitarian (t = {float(temperature):g})"
    return str(name)


def agent_figures(row: dict[str, Any]) -> dict[str, float | None]:
    """A row's utilitarian welfare, minimum, 10th percentile and share served (``None`` where unknown)."""
    figures: dict[str, float | None] = {"welfare": float(row["welfare"])}
    returns = str(row.get("returns") or "").split()
    if returns:
        values = np.array([float(v) for v in returns])
        figures.update(
            welfare_min=float(values.min()),
            welfare_p10=float(np.percentile(values, 10)),
            served_share=float(np.mean(values > 0)),
            optimal_egalitarian=None,
        )
        return figures
    for name in ("welfare_min", "welfare_p10", "optimal_egalitarian"):
        text = row.get(name)
        figures[name] = None if text in (None, "") else float(text)
    figures["served_share"] = None
    return figures


def fairness_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, int, str, str], list[dict[str, Any]]]:
    """Rows of the objectives' comparison, grouped by (task, k, algorithm, objective)."""
    groups: dict[tuple[str, int, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        key = (
            str(row["task"]),
            int(row["k"]),
            str(row.get("base_algorithm", row["algorithm"])),
            _objective(row),
        )
        groups.setdefault(key, []).append(agent_figures(row))
    return groups


def compares_objectives(rows: list[dict[str, Any]]) -> bool:
    """Whether some (task, k, algorithm) was trained for two objectives."""
    seen: dict[tuple[str, int, str], set[str]] = {}
    for task, k, algorithm, objective in fairness_rows(rows):
        seen.setdefault((task, k, algorithm), set()).add(objective)
    return any(len(objectives) > 1 for objectives in seen.values())


def fairness_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of every (task, k, algorithm) trained for more than one objective."""
    groups = fairness_rows(rows)
    compared = {key[:3] for key in groups if sum(other[:3] == key[:3] for other in groups) > 1}
    # the exact best worst-off return, where the experiment knows it (Resource Gathering)
    shown = [
        (name, header)
        for name, header in zip(FIGURES, HEADERS)
        if name != "optimal_egalitarian"
        or any(f[name] is not None for figures in groups.values() for f in figures)
    ]
    lines = [
        "| task | k | algorithm | trained for | " + " | ".join(header for _, header in shown) + " |",
        "|---|---:|---|---|" + "---:|" * len(shown),
    ]
    # by task, k and algorithm, the utilitarian objective first
    ordered = sorted(groups.items(), key=lambda item: (*item[0][:3], item[0][3] != "utilitarian", item[0][3]))
    for (task, k, algorithm, objective), figures in ordered:
        if (task, k, algorithm) not in compared:
            continue
        cells = []
        for name, _ in shown:
            values = [f[name] for f in figures if f[name] is not None]
            if not values:
                cells.append("-")
                continue
            mean, se = mean_se(values)
            if name == "optimal_egalitarian":  # exact: the same for every seed
                cells.append(f"{mean:.2f}")
                continue
            scale = 100.0 if name == "served_share" else 1.0
            unit = "%" if name == "served_share" else ""
            cells.append(f"{mean * scale:.2f}{unit} ± {se * scale:.2f}{unit} ({len(values)})")
        lines.append(f"| {task} | {k} | {algorithm} | {objective} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_fairness(rows: list[dict[str, Any]], path: Path) -> bool:
    """Utilitarian against minimum-agent welfare, one point per cell, a colour per objective and a panel
    per (task, k); ``False`` (nothing drawn) when no cell has a minimum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = fairness_rows(rows)
    panels = sorted({key[:2] for key in groups if any(f["welfare_min"] is not None for f in groups[key])})
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (task, k) in zip(axes[0], panels):
        for (t, kk, algorithm, objective), figures in groups.items():
            points = [(f["welfare"], f["welfare_min"]) for f in figures if f["welfare_min"] is not None]
            if (t, kk) != (task, k) or not points:
                continue
            x, y = zip(*points)
            ax.scatter(x, y, label=f"{algorithm}, {objective}", alpha=0.8)
        ax.set_title(f"{task}, k = {k}")
        ax.set_xlabel("utilitarian welfare")
        ax.set_ylabel("worst-off agent's return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
