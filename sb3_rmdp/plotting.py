"""Plots: representatives' paths on the Resource Gathering grid (the paper's Figure 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from sb3_rmdp.ppo import RMDPPPO


def representative_paths(model: RMDPPPO, env: Any, max_steps: int = 1000) -> list[np.ndarray]:
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
