"""Plots: the assignment over agent params, welfare against k, representatives' paths on the grid.

Figures are built with :class:`matplotlib.figure.Figure` when no ``ax`` is given, not with ``pyplot``:
pyplot would keep every figure alive until it is closed, and a figure logged during training is
dropped unclosed by every logger output but TensorBoard's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from sb3_rmdp.core import RMDPAlgorithm

# Representative j is drawn in colour j of matplotlib's "tab10" (cycling beyond 10), in every plot here.
_COLORMAP = "tab10"


def representative_paths(model: RMDPAlgorithm, env: Any, max_steps: int = 1000) -> list[np.ndarray]:
    """Deterministic path of every representative on a grid env whose observation starts with (row, col).

    :param model: a trained model.
    :param env: a gymnasium r-MDP env (not vectorized).
    :return: per representative, the visited positions ``(T + 1, 2)`` from the start to the end.
    """
    paths = []
    for j in range(model.k):
        obs, _ = env.reset()
        positions = [np.asarray(obs[:2], dtype=np.float64)]
        for _ in range(max_steps):
            action, _ = model.predict(obs, deterministic=True, representative=j)
            obs, _, terminated, truncated, _ = env.step(action)
            positions.append(np.asarray(obs[:2], dtype=np.float64))
            if terminated or truncated:
                break
        paths.append(np.array(positions))
    return paths


def plot_grid_paths(
    paths: list[np.ndarray],
    assignment: np.ndarray,
    size: int = 5,
    home: tuple[int, int] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Draw each representative's path on the grid and colour each agent's cell by its representative.

    :param paths: per representative, positions ``(T + 1, 2)`` as (row, col).
    :param assignment: ``(size * size,)`` representative of the agent of each cell (row-major).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    else:
        fig = ax.figure  # type: ignore[assignment]
    colors = plt.get_cmap("tab10")
    k = len(paths)
    for cell, j in enumerate(np.asarray(assignment)):
        row, col = divmod(cell, size)
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, color=colors(int(j) % 10), alpha=0.25, lw=0))
    home = home if home is not None else (size - 1, size // 2)
    ax.text(home[1], home[0], "H", ha="center", va="center", fontsize=14, fontweight="bold")
    for j, path in enumerate(paths):
        offset = (j - (k - 1) / 2) * 0.5 / max(k, 1)
        ax.plot(
            path[:, 1] + offset,
            path[:, 0] + offset,
            "-o",
            color=colors(j % 10),
            ms=3,
            lw=2,
            label=f"representative {j} (T={len(path) - 1})",
        )
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    ax.grid(False)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.05), fontsize=7, ncol=1, frameon=False)
    return fig


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure of ``figsize`` inches (not pyplot's) and its axes."""
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot()
    return ax.figure, ax  # type: ignore[return-value]


def _representative_color(j: int) -> Any:
    import matplotlib

    return matplotlib.colormaps[_COLORMAP](j % 10)


def plot_assignment(
    assignment: np.ndarray,
    k: int,
    agent_params: np.ndarray | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Draw who serves whom: the hard assignment over the agents' params, one colour per representative.

    * 1-D agent params (e.g. target velocities): a histogram of the params, stacked by representative.
    * d >= 2 (e.g. Resource Gathering's cells, preference weights): a scatter of the first two dims.
    * no agent params: a bar of each representative's number of agents.

    Cheap to call after every few updates (no pyplot state; a few ms for hundreds of agents).

    :param assignment: the hard assignment ``(n_agents,)``, representative indices in ``[0, k)``.
    :param k: the number of representatives.
    :param agent_params: ``(n_agents,)`` or ``(n_agents, d)``, or ``None``.
    :param ax: the axes to draw on (default: a new 5 x 3.5 inch figure).
    :param title: the title (default: ``"assignment of n agents to k representatives"``).
    :return: the figure drawn on.
    """
    from matplotlib.ticker import MaxNLocator

    assignment = np.asarray(assignment, dtype=np.int64).reshape(-1)
    n_agents = len(assignment)
    fig, ax = _figure_and_axes(ax, (5, 3.5))
    colors = [_representative_color(j) for j in range(k)]
    labels = [f"representative {j}" for j in range(k)]
    params = None
    if agent_params is not None:
        params = np.asarray(agent_params, dtype=np.float64).reshape(n_agents, -1)
    if params is None or params.shape[1] == 0:
        sizes = np.bincount(assignment[assignment >= 0], minlength=k)
        ax.bar(np.arange(k), sizes, color=colors)
        ax.set_xticks(np.arange(k))
        ax.set_xlabel("representative")
        ax.set_ylabel("agents")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    elif params.shape[1] == 1:
        values = params[:, 0]
        bins = np.histogram_bin_edges(values, bins=int(np.clip(n_agents // 4, 5, 40))).tolist()
        groups = [values[assignment == j] for j in range(k)]
        ax.hist(groups, bins=bins, stacked=True, color=colors, label=labels)
        ax.set_xlabel("agent param")
        ax.set_ylabel("agents")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        for j in range(k):
            members = assignment == j
            ax.scatter(params[members, 0], params[members, 1], color=colors[j], s=25, label=labels[j])
        ax.set_xlabel("agent param 0")
        ax.set_ylabel("agent param 1")
    if params is not None and params.shape[1] >= 1 and k <= 10:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title or f"assignment of {n_agents} agents to {k} representatives", fontsize=9)
    return fig


#: Columns of a benchmark CSV that hold a bound to plot against, and their legend labels.
REFERENCE_COLUMNS = {"optimal_welfare": "optimum", "upper_bound": "upper bound"}


def plot_welfare_vs_k(
    rows: Sequence[Mapping[str, Any]],
    ax: Axes | None = None,
    title: str | None = None,
    welfare_key: str = "welfare_eval",
) -> Figure:
    """Welfare against the policy budget k: mean +- standard error over the rows (seeds) of each algorithm.

    A reference column (``optimal_welfare`` or ``upper_bound``, see :data:`REFERENCE_COLUMNS`), when the
    rows have it, is drawn as a dashed black line with a dash at each k (its mean per k).

    :param rows: one mapping per run with ``algorithm``, ``k`` and ``welfare_key`` (e.g. the rows of a
        ``benchmarks/results/*.csv``); values may be strings, as ``csv.DictReader`` gives them.
    :param ax: the axes to draw on (default: a new figure).
    :param title: the title.
    :param welfare_key: the column plotted.
    :return: the figure drawn on.
    """

    fig, ax = _figure_and_axes(ax, (5, 3.5))
    algorithms = sorted({str(row["algorithm"]) for row in rows})
    for index, algorithm in enumerate(algorithms):
        by_k: dict[int, list[float]] = {}
        for row in rows:
            if str(row["algorithm"]) == algorithm:
                by_k.setdefault(int(row["k"]), []).append(float(row[welfare_key]))
        ks = sorted(by_k)
        means = [float(np.mean(by_k[k])) for k in ks]
        errors = [_standard_error(by_k[k]) for k in ks]
        ax.errorbar(
            ks,
            means,
            yerr=errors,
            marker="o",
            ms=4,
            capsize=3,
            color=_representative_color(index),
            label=algorithm,
        )
    for column, label in REFERENCE_COLUMNS.items():
        references: dict[int, list[float]] = {}
        for row in rows:
            if row.get(column) not in (None, ""):
                references.setdefault(int(row["k"]), []).append(float(row[column]))
        if references:
            ks = sorted(references)
            # a dash at each k too, so that a single k shows its reference
            ax.plot(ks, [np.mean(references[k]) for k in ks], "k--", lw=1, marker="_", ms=16, label=label)
    ax.set_xlabel("policy budget k")
    evaluated = welfare_key in ("welfare", "welfare_eval")
    label = "social welfare (evaluation)" if evaluated else welfare_key.replace("_", " ")
    ax.set_ylabel(f"{label}, mean ± s.e.")
    ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def _standard_error(values: list[float]) -> float:
    """Standard error of the mean over seeds (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def plot_assignment_histogram(
    targets: np.ndarray,
    assignment: np.ndarray,
    k: int,
    returns: np.ndarray | None = None,
    bins: Sequence[float] | int = 20,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The paper's Figures 4-5: the agents' target velocities, stacked by the representative serving them.

    :param targets: ``(n_agents,)`` each agent's target (its one-dimensional agent params).
    :param assignment: ``(n_agents,)`` the deployed representative of each agent.
    :param k: the number of representatives.
    :param returns: ``(n_agents,)`` each agent's return under its representative, or ``None``; agents with
        none (no representative serves them) are drawn apart, in grey, as "unserved".
    :param bins: the histogram's bins (edges or a count).
    :param ax: the axes to draw on (default: a new figure).
    :param title: the title.
    :return: the figure drawn on.
    """

    fig, ax = _figure_and_axes(ax, (4, 3.2))
    targets, assignment = np.asarray(targets, dtype=float), np.asarray(assignment, dtype=int)
    served = np.ones(len(targets), dtype=bool) if returns is None else np.asarray(returns, dtype=float) > 0
    groups = [targets[(assignment == j) & served] for j in range(k)]
    labels = [f"rep {j}" for j in range(k)]
    colors = [_representative_color(j) for j in range(k)]
    if not served.all():
        groups.append(targets[~served])
        labels.append("unserved")
        colors.append("0.8")
    ax.hist(groups, bins=bins, stacked=True, label=labels, color=colors)
    ax.set_xlabel("target velocity")
    ax.set_ylabel("agents")
    if title:
        ax.set_title(title, fontsize=9)
    return fig
