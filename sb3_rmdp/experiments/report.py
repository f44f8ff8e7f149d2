"""Reports from a store: welfare tables (markdown) and figures (PNG), so that no number is copied by hand.

``write_report(grid, store, folder)`` writes, for the grid's finished cells:

- ``report.md``: per task, the evaluated welfare of the deployed assignment (mean ± standard error over
  seeds, and the count) per algorithm and k, the bound; then, at the comparison k, how each algorithm
  compares with random and K-means;
- ``headline.md``: one table, the comparison k on every task (the README's);
- ``welfare.png``: welfare against k per task (Figure 3), the bound dashed;
- ``histograms_k<K>.png``: velocity tasks, the assignment over target velocity per algorithm (Figure 5);
- ``paths.png``: Resource Gathering, EM's representatives' paths (Figure 1).

"Beyond the standard errors" means the two error bars (mean ± s.e.) do not overlap.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sb3_rmdp.experiments.grid import Grid, GridError
from sb3_rmdp.experiments.store import Store

#: the k of the comparisons and histograms (the paper's Figure 5), or the grid's nearest
COMPARISON_K = 5
#: the order of the algorithms in tables and legends: the learned ones, the clusterings, the references
ALGORITHM_ORDER = ("em", "end_to_end", "coverage", "kmeans", "kmeans++", "gmm", "dbscan", "random", "oracle")
LABELS = {"em": "EM", "end_to_end": "end-to-end", "kmeans": "K-means", "random": "random", "oracle": "oracle"}
NUMERIC = ("k", "n_agents", "seed", "budget_per_representative", "welfare", "upper_bound", "wall_s")


def grid_rows(grid: Grid, store: Store) -> list[dict[str, Any]]:
    """The store's rows of ``grid``'s cells (in grid order), numeric columns parsed.

    Where the grid varies a parameter of one algorithm (end-to-end's learning rate, say), its rows'
    ``algorithm`` names the variant: ``"end_to_end [lr=0.03]"``, so that tables and figures keep the
    variants apart; the plain name is kept in ``base_algorithm``.
    """
    by_key = {row["cell"]: row for row in store.rows()}
    cells = [cell for cell in grid.cells if cell.key in by_key]
    varying = _varying_params(cells)
    rows = []
    for cell in cells:
        row: dict[str, Any] = dict(by_key[cell.key])
        for name in NUMERIC:
            if row.get(name) not in (None, ""):
                row[name] = (
                    float(row[name]) if name in ("welfare", "upper_bound", "wall_s") else int(row[name])
                )
        algorithm = str(cell.config.get("algorithm", ""))
        row["base_algorithm"] = algorithm
        suffix = [
            f"{name.removeprefix(algorithm + '_')}={cell.config.get(name)}"
            for name in varying.get(_row_group(cell.config), ())
        ]
        if suffix:
            row["algorithm"] = f"{algorithm} [{', '.join(suffix)}]"
        rows.append(row)
    return rows


#: parameters that are a table's axes (panel, row, column) or its replicates, never a variant
_AXES = ("task", "n_agents", "algorithm", "k", "seed")


def _varying_params(cells: Sequence[Any]) -> dict[tuple[str, int, str], list[str]]:
    """Per (task, n_agents, algorithm), a table row: the parameters besides its axes and seeds that take
    several values (an algorithm's options, the objective, the scaling options), which would otherwise
    pool different configurations into one mean."""
    values: dict[tuple[str, int, str], dict[str, set[Any]]] = defaultdict(lambda: defaultdict(set))
    for cell in cells:
        for name in cell.experiment.params:
            if name not in _AXES:
                values[_row_group(cell.config)][name].add(cell.config.get(name))
    return {group: [n for n, v in params.items() if len(v) > 1] for group, params in values.items()}


def _row_group(config: dict[str, Any]) -> tuple[str, int, str]:
    return str(config["task"]), int(config.get("n_agents") or 0), str(config.get("algorithm", ""))


def _label(algorithm: str) -> str:
    """``"end_to_end [lr=0.03]"`` -> ``"end-to-end [lr=0.03]"``."""
    base, space, variant = algorithm.partition(" ")
    return LABELS.get(base, base) + space + variant


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for one value)."""
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else 0.0
    return float(array.mean()), se


def _algorithms(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The rows' algorithms (variants included) in :data:`ALGORITHM_ORDER`, an algorithm's variants in
    the grid's order."""
    present = list(dict.fromkeys(str(r["algorithm"]) for r in rows))

    def order(algorithm: str) -> tuple[int, int]:
        base = algorithm.partition(" ")[0]
        rank = ALGORITHM_ORDER.index(base) if base in ALGORITHM_ORDER else len(ALGORITHM_ORDER)
        return rank, present.index(algorithm)

    return sorted(present, key=order)


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Rows per (task, n_agents) panel, in first-seen order."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((str(row["task"]), int(row.get("n_agents") or 0)), []).append(row)
    return groups


def _cell_text(values: list[float]) -> str:
    if not values:
        return ""
    mean, se = mean_se(values)
    return f"{mean:.2f} ± {se:.2f} ({len(values)})" if len(values) > 1 else f"{mean:.2f} (1)"


def _panel_title(task: str, n_agents: int) -> str:
    return f"{task}, n = {n_agents}" if n_agents else task


def welfare_table(rows: list[dict[str, Any]]) -> str:
    """One panel's table: algorithms as rows, k as columns, mean ± s.e. (seeds); the bound last."""
    ks = sorted({int(r["k"]) for r in rows})
    lines = ["| algorithm | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for algorithm in _algorithms(rows):
        cells = [
            _cell_text([r["welfare"] for r in rows if r["algorithm"] == algorithm and r["k"] == k])
            for k in ks
        ]
        lines.append(f"| {_label(algorithm)} | " + " | ".join(cells) + " |")
    bounds = [
        f"{np.mean([r['upper_bound'] for r in rows if r['k'] == k]):.2f}"
        if any(r["k"] == k and r.get("upper_bound") not in (None, "") for r in rows)
        else ""
        for k in ks
    ]
    lines.append("| *bound* | " + " | ".join(bounds) + " |")
    return "\n".join(lines) + "\n"


def compare(a: Sequence[float], b: Sequence[float]) -> str:
    """``"ahead"``/``"behind"`` when the error bars (mean ± s.e.) do not overlap, else ``"level"``;
    ``"unknown"`` with fewer than two seeds on a side (no error bar)."""
    if len(a) < 2 or len(b) < 2:
        return "unknown"
    (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
    if ma - sa > mb + sb:
        return "ahead"
    if ma + sa < mb - sb:
        return "behind"
    return "level"


def comparison_k(rows: list[dict[str, Any]]) -> int:
    """:data:`COMPARISON_K`, or the grid's k nearest to it."""
    ks = sorted({int(r["k"]) for r in rows})
    return min(ks, key=lambda k: (abs(k - COMPARISON_K), k))


def comparisons(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences: at the comparison k, each learning algorithm against random and against K-means."""
    k = comparison_k(rows)
    at_k = [r for r in rows if r["k"] == k]
    welfare = {a: [r["welfare"] for r in at_k if r["algorithm"] == a] for a in _algorithms(at_k)}
    sentences = []
    learners = [a for a in welfare if a.partition(" ")[0] in ("em", "end_to_end")]
    for algorithm in learners:
        for baseline in ("random", "kmeans"):
            if welfare[algorithm] and welfare.get(baseline):
                (m, s), (mb, sb) = mean_se(welfare[algorithm]), mean_se(welfare[baseline])
                verdict = {
                    "ahead": "ahead of",
                    "behind": "behind",
                    "level": "level with (error bars overlap)",
                    "unknown": "not yet comparable (one seed) with",
                }[compare(welfare[algorithm], welfare[baseline])]
                sentences.append(
                    f"{_label(algorithm)} {m:.2f} ± {s:.2f} is {verdict} "
                    f"{_label(baseline)} {mb:.2f} ± {sb:.2f} "
                    f"at k = {k} ({len(welfare[algorithm])} and {len(welfare[baseline])} seeds)."
                )
    return sentences


def headline_table(rows: list[dict[str, Any]]) -> str:
    """The comparison k on every panel: one row per task, one column per algorithm, the bound last."""
    groups = _groups(rows)
    algorithms = _algorithms(rows)
    lines = [
        "| task | k | " + " | ".join(_label(a) for a in algorithms) + " | bound |",
        "|---|---:|" + "---:|" * (len(algorithms) + 1),
    ]
    for (task, n_agents), panel in groups.items():
        k = comparison_k(panel)
        at_k = [r for r in panel if r["k"] == k]
        cells = [_cell_text([r["welfare"] for r in at_k if r["algorithm"] == a]) for a in algorithms]
        bound = np.mean([r["upper_bound"] for r in at_k]) if at_k else float("nan")
        lines.append(f"| {_panel_title(task, n_agents)} | {k} | " + " | ".join(cells) + f" | {bound:.2f} |")
    return "\n".join(lines) + "\n"


def _caption(grid: Grid, rows: list[dict[str, Any]], store: Store) -> str:
    budgets = sorted({int(r["budget_per_representative"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    return (
        f"*Evaluated welfare of the deployed assignment, mean ± standard error over seeds (count in "
        f"brackets); {', '.join(f'{b:,}' for b in budgets)} env steps per representative; seeds {seeds}; "
        f"{len(rows)} of {len(grid.cells)} cells of grid `{grid.name}` finished. Source: "
        f"`{_display(store.path)}`.*\n"
    )


def _display(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return os.path.normpath(path)


def report_markdown(grid: Grid, rows: list[dict[str, Any]], store: Store, figures: Sequence[str]) -> str:
    """The whole ``report.md``."""
    lines = (
        [f"## Grid `{grid.name}`", "", grid.description, ""]
        if grid.description
        else [f"## Grid `{grid.name}`", ""]
    )
    if not rows:
        return "\n".join([*lines, "No cell has finished yet.", ""])
    for (task, n_agents), panel in _groups(rows).items():
        lines += [f"### {_panel_title(task, n_agents)}", "", welfare_table(panel)]
        lines += [f"- {s}" for s in comparisons(panel)] + [""]
    lines.append(_caption(grid, rows, store))
    lines += [f"![{name}]({name})" for name in figures]
    wall = sum(
        float(r["wall_s"]) for r in rows if not r.get("shared_with") and r.get("wall_s") not in (None, "")
    )
    lines += ["", f"*Compute: {wall / 3600:.1f} core-hours of training and evaluation.*", ""]
    return "\n".join(lines)


def plot_welfare(rows: list[dict[str, Any]], path: Path) -> None:
    """Figure 3: welfare against k, one panel per (task, n_agents), mean ± s.e., the bound dashed."""
    from matplotlib.figure import Figure

    from sb3_rmdp.plotting import plot_welfare_vs_k

    groups = _groups(rows)
    fig = Figure(figsize=(4.2 * len(groups), 3.6), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, ((task, n_agents), panel) in zip(axes, groups.items()):
        plot_welfare_vs_k(panel, ax=ax, title=_panel_title(task, n_agents), welfare_key="welfare")
        ks = sorted({int(r["k"]) for r in panel})
        if len(ks) > 1:
            ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def plot_histograms(rows: list[dict[str, Any]], path: Path) -> bool:
    """Figure 5: the comparison k's assignment over target velocity, a row per task, a column per
    algorithm, the smallest seed. ``False`` (no file) when no row carries targets."""
    from matplotlib.figure import Figure

    from sb3_rmdp.envs.velocity import TARGET_RANGES
    from sb3_rmdp.plotting import plot_assignment_histogram

    panels = []
    for (task, n_agents), group in _groups([r for r in rows if r.get("targets")]).items():
        k = comparison_k(group)
        seed = min(int(r["seed"]) for r in group)
        chosen = {str(r["algorithm"]): r for r in group if r["k"] == k and r["seed"] == seed}
        if chosen:
            panels.append((task, n_agents, k, seed, chosen))
    if not panels:
        return False
    algorithms = _algorithms([r for *_, chosen in panels for r in chosen.values()])
    fig = Figure(figsize=(3.2 * len(algorithms), 2.8 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), len(algorithms), squeeze=False)
    for row_axes, (task, _, k, seed, chosen) in zip(axes, panels):
        b = TARGET_RANGES.get(f"{task}-v5", 1.0)
        for ax, algorithm in zip(row_axes, algorithms):
            if algorithm not in chosen:
                ax.set_axis_off()
                continue
            row = chosen[algorithm]
            plot_assignment_histogram(
                np.array(str(row["targets"]).split(), dtype=float),
                np.array(str(row["assignment"]).split(), dtype=int),
                k,
                returns=np.array(str(row["returns"]).split(), dtype=float) if row.get("returns") else None,
                bins=np.linspace(0.0, b, 21).tolist(),
                ax=ax,
                title=f"{task} k={k} seed {seed}: {_label(algorithm)} {row['welfare']:.1f}",
            )
    axes[0][-1].legend(fontsize=6, frameon=False)
    fig.savefig(path, dpi=100)
    return True


def plot_paths(rows: list[dict[str, Any]], path: Path) -> bool:
    """Figure 1: EM's representatives' paths on the grid at k = 1, 2, 3, 5 (smallest seed); ``False`` (no
    file) when no row carries paths."""
    from matplotlib.figure import Figure

    from sb3_rmdp.plotting import plot_grid_paths

    em = [r for r in rows if r.get("paths") and r["base_algorithm"] == "em" and r["k"] in (1, 2, 3, 5)]
    if not em:
        return False
    em = [r for r in em if r["algorithm"] == em[0]["algorithm"]]  # EM's first variant in the grid
    seed = min(int(r["seed"]) for r in em)
    chosen = sorted((r for r in em if r["seed"] == seed), key=lambda r: r["k"])
    fig = Figure(figsize=(4 * len(chosen), 4.4), layout="constrained")
    axes = fig.subplots(1, len(chosen), squeeze=False)[0]
    for ax, row in zip(axes, chosen):
        paths = [
            np.array([[float(v) for v in step.split(",")] for step in rep.split(";")])
            for rep in row["paths"].split("|")
        ]
        assignment = np.array(str(row["assignment"]).split(), dtype=int)
        plot_grid_paths(paths, assignment, ax=ax, title=f"EM, k={row['k']}: welfare {row['welfare']:.2f}")
    fig.savefig(path, dpi=100)
    return True


def write_report(grid: Grid, store: Store, folder: str | Path) -> list[Path]:
    """Write ``report.md``, ``headline.md`` and the figures of ``grid``'s finished cells into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = grid_rows(grid, store)
    written: list[Path] = []
    figures: list[str] = []
    if rows:
        plot_welfare(rows, folder / "welfare.png")
        figures.append("welfare.png")
        k = comparison_k(rows)
        if plot_histograms(rows, folder / f"histograms_k{k}.png"):
            figures.append(f"histograms_k{k}.png")
        if plot_paths(rows, folder / "paths.png"):
            figures.append("paths.png")
        (folder / "headline.md").write_text(headline_table(rows) + "\n" + _caption(grid, rows, store))
        written.append(folder / "headline.md")
        written += _write_fairness(grid, rows, store, folder, figures)
    (folder / "report.md").write_text(report_markdown(grid, rows, store, figures))
    written.append(folder / "report.md")
    return written + [folder / name for name in figures]


def _write_fairness(
    grid: Grid, rows: list[dict[str, Any]], store: Store, folder: Path, figures: list[str]
) -> list[Path]:
    """``fairness.md`` and ``fairness.png`` when the grid trains for more than one welfare objective."""
    from sb3_rmdp.experiments.fairness import compares_objectives, fairness_table, plot_fairness

    if not compares_objectives(rows):
        return []
    text = fairness_table(rows) + "\n" + _caption(grid, rows, store)
    (folder / "fairness.md").write_text(text)
    if plot_fairness(rows, folder / "fairness.png"):
        figures.append("fairness.png")
    return [folder / "fairness.md"]


def embed(path: str | Path, grid_name: str, text: str) -> bool:
    """Replace the block between ``<!-- bench: GRID -->`` and ``<!-- /bench -->`` in the markdown file
    ``path`` (a README, say) by ``text``; ``True`` if the file changed.

    :raises GridError: if the file has no such block (it says what to add).
    """
    path = Path(path)
    if not path.is_file():
        raise GridError(f"--embed {str(path)!r}: no such file; give an existing markdown file.")
    start, end = f"<!-- bench: {grid_name} -->", "<!-- /bench -->"
    old = path.read_text()
    head, found, rest = old.partition(start)
    _, closed, tail = rest.partition(end)
    if not found or not closed:
        raise GridError(
            f"{path} has no block {start} ... {end} to write grid {grid_name!r}'s headline into; add one."
        )
    new = f"{head}{start}\n{text.rstrip()}\n{end}{tail}"
    if new != old:
        path.write_text(new)
    return new != old


def by_cell(rows: list[dict[str, Any]], *columns: str) -> dict[tuple[Any, ...], list[float]]:
    """``welfare`` values grouped by ``columns`` (e.g. ``("task", "algorithm", "k")``)."""
    grouped: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for row in rows:
        grouped[tuple(row[c] for c in columns)].append(float(row["welfare"]))
    return dict(grouped)
