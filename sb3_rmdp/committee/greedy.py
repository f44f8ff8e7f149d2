"""The greedy intersection algorithm (PACMAN): a ``1 - 1/e`` approximation of the best epsilon-cover.

Two agents lie within ``epsilon`` of a common prototype in L-infinity iff, in every dimension, their
coordinates fit in an interval of width ``2 epsilon``. Any set of agents a ball covers is therefore
also covered by the box whose lower corner, per dimension, is its smallest coordinate among those
agents: the intervals ``[c, c + 2 epsilon]`` anchored at the agents' coordinates reach every maximal
coverage set, and a prototype's coverage is the intersection of one interval per dimension. The
candidates are the products of per-dimension intervals (up to ``n_agents ** d`` boxes, hence the
budget), and k of them are picked greedily by marginal coverage: greedy maximum coverage, which gets
at least ``1 - 1/e`` of the best k boxes' coverage.

Coverage sets are bit-packed rows ``(n_boxes, ceil(n_agents / 8))`` of ``uint8``, so a box costs
``n_agents / 8`` bytes and a greedy round is one AND and one popcount over the candidates.
"""

from __future__ import annotations

import numpy as np

from sb3_rmdp.committee.cover import cover_tolerance

# Number of set bits of every byte: popcount of packed coverage rows (np.bitwise_count needs numpy 2).
_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def _count(rows: np.ndarray) -> np.ndarray:
    """Agents in each packed coverage row: ``(n_rows, n_bytes)`` uint8 -> ``(n_rows,)`` int64."""
    return _POPCOUNT[rows].sum(axis=1, dtype=np.int64)


def candidate_boxes(agent_params: np.ndarray, epsilon: float, max_boxes: int = 2_000_000) -> np.ndarray:
    """The distinct non-empty coverage sets of the candidate boxes, bit-packed.

    Boxes are products of the intervals ``[c, c + 2 epsilon]`` with ``c`` an agent's coordinate in
    that dimension, built one dimension at a time. After each dimension, empty intersections are
    dropped (they stay empty) and boxes covering the same agents are kept once (they extend alike), so
    the work is ``distinct sets so far x coordinates of the next dimension`` per step, far below
    ``n_agents ** d`` when agents cluster.

    :param agent_params: ``(n_agents, d)``.
    :param epsilon: the cover radius.
    :param max_boxes: refuse when a step would examine more boxes than this.
    :return: ``(n_boxes, ceil(n_agents / 8))`` uint8, one distinct coverage set per row.
    :raises ValueError: pointing to ``method="gradient"`` when a step exceeds ``max_boxes``.
    """
    n_agents, d = agent_params.shape
    width = 2.0 * epsilon + 2.0 * cover_tolerance(agent_params, epsilon)
    rows = np.packbits(np.ones((1, n_agents), dtype=bool), axis=1)
    for m in range(d):
        x = agent_params[:, m]
        corners = np.unique(x)
        n_boxes = len(rows) * len(corners)
        if n_boxes > max_boxes:
            raise ValueError(
                f"The greedy intersection algorithm would examine {n_boxes:.3g} candidate boxes in "
                f"dimension {m + 1} of d={d} for {n_agents} agents (it grows like n_agents ** d), over its "
                f"budget max_boxes={max_boxes:.3g}: use method='gradient', which scales to any d, or raise "
                "max_boxes."
            )
        inside = (x[None, :] >= corners[:, None]) & (x[None, :] <= corners[:, None] + width)
        packed = np.packbits(inside, axis=1)  # (n_corners, n_bytes)
        rows = (rows[:, None, :] & packed[None, :, :]).reshape(-1, rows.shape[1])
        rows = _unique_rows(rows[rows.any(axis=1)])
    return rows


def _unique_rows(rows: np.ndarray) -> np.ndarray:
    """Distinct rows of a ``(n_rows, n_bytes)`` uint8 array, in the order they first appear."""
    keys = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).reshape(-1)
    _, first = np.unique(keys, return_index=True)
    return rows[np.sort(first)]


def greedy_max_coverage(rows: np.ndarray, k: int) -> np.ndarray:
    """Pick k coverage sets greedily by marginal coverage.

    Ties go to the set covering more agents in total, then to the first; once every agent is covered
    the remaining picks (marginal gain 0) thus go to the densest remaining sets, and when there are
    fewer distinct sets than k the picks start over from the first chosen.

    :param rows: ``(n_boxes, n_bytes)`` bit-packed coverage sets.
    :return: ``(k,)`` indices of the chosen rows, in the order they were picked.
    """
    total = _count(rows)
    scale = int(total.max()) + 1
    covered = np.zeros(rows.shape[1], dtype=np.uint8)
    available = np.ones(len(rows), dtype=bool)
    chosen: list[int] = []
    for _ in range(min(k, len(rows))):
        gain = _count(rows & ~covered)
        score = np.where(available, gain * scale + total, -1)
        pick = int(np.argmax(score))
        chosen.append(pick)
        available[pick] = False
        covered |= rows[pick]
    while len(chosen) < k:
        chosen.append(chosen[len(chosen) % max(1, min(k, len(rows)))])
    return np.asarray(chosen, dtype=np.int64)


def greedy_prototypes(
    agent_params: np.ndarray, k: int, epsilon: float, max_boxes: int = 2_000_000
) -> np.ndarray:
    """Prototypes of the greedy intersection algorithm: each chosen box's agents' centre.

    The centre of the box the covered agents span lies inside the candidate box and covers all of
    them (the box is at most ``2 epsilon`` wide).

    :param agent_params: ``(n_agents, d)``, validated by :func:`~sb3_rmdp.committee.epsilon_cover`.
    :return: ``(k, d)``.
    """
    n_agents = len(agent_params)
    rows = candidate_boxes(agent_params, epsilon, max_boxes)
    prototypes = np.empty((k, agent_params.shape[1]))
    for j, pick in enumerate(greedy_max_coverage(rows, k)):
        members = agent_params[np.unpackbits(rows[pick], count=n_agents).astype(bool)]
        prototypes[j] = 0.5 * (members.min(axis=0) + members.max(axis=0))
    return prototypes
