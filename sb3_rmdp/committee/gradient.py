"""PACMAN's gradient method for epsilon-covers: any dimension, no guarantee.

Prototypes ``theta`` ``(k, d)`` and soft assignment logits ``w`` ``(n_agents, k)`` minimize::

    sum_i ReLU( sum_j softmax(w_i)_j * ||theta_j - theta_i||_inf - epsilon )

with Adam. When a full cover exists the minimizers of this relaxation are exactly the full covers
(the slides' theorem), and a zero loss implies a full cover: the soft average of an agent's distances
is at least its distance to the nearest prototype. Restarts run side by side as a batch (Adam is
element-wise, so this is the same as running them one by one); the one covering most agents wins.
"""

from __future__ import annotations

import numpy as np
import torch as th

from sb3_rmdp.committee.cover import cover_tolerance


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding in L-infinity: k distinct-as-possible agents, far ones more likely.

    :param points: ``(n_agents, d)``.
    :return: ``(k,)`` indices of the picked agents.
    """
    n = len(points)
    picks = [int(rng.integers(n))]
    nearest = np.abs(points - points[picks[0]]).max(axis=1)
    for _ in range(1, k):
        weights = nearest**2
        total = weights.sum()
        pick = int(rng.choice(n, p=weights / total)) if total > 0 else int(rng.integers(n))
        picks.append(pick)
        nearest = np.minimum(nearest, np.abs(points - points[pick]).max(axis=1))
    return np.asarray(picks, dtype=np.int64)


def gradient_prototypes(
    agent_params: np.ndarray,
    k: int,
    epsilon: float,
    seed: int = 0,
    n_restarts: int = 5,
    n_steps: int = 500,
    learning_rate: float = 0.05,
) -> np.ndarray:
    """Prototypes ``(k, d)`` minimizing the relaxed cover loss, best of ``n_restarts`` Adam runs.

    The problem is solved in units of ``epsilon`` (params centred and divided by it), so the learning
    rate is a step in radii whatever the params' scale. Each restart starts from k-means++ picks of
    agents (a seeded ``np.random.Generator``) with logits ``-distance`` plus small noise (a seeded
    ``th.Generator``): nothing touches the global random streams. A run stops early once its loss is 0.

    :param agent_params: ``(n_agents, d)``, validated by :func:`~sb3_rmdp.committee.epsilon_cover`.
    :param seed: seed of both generators.
    :param n_restarts: independent starts; the one that covers most agents (then lowest loss) wins.
    :param n_steps: Adam steps per start.
    :param learning_rate: Adam's step size, in units of ``epsilon``.
    :return: ``(k, d)``.
    """
    rng = np.random.default_rng(seed)
    generator = th.Generator().manual_seed(seed)
    offset = agent_params.mean(axis=0)
    points = (agent_params - offset) / epsilon
    x = th.as_tensor(points, dtype=th.float64)
    starts = np.stack([points[kmeans_plus_plus(points, k, rng)] for _ in range(n_restarts)])
    theta = th.tensor(starts, dtype=th.float64, requires_grad=True)  # (restarts, k, d)
    with th.no_grad():
        noise = 0.01 * th.randn((n_restarts, len(points), k), generator=generator, dtype=th.float64)
        logits = (-_distances(x, theta) + noise).requires_grad_(True)  # (restarts, n, k)
    optimizer = th.optim.Adam([theta, logits], lr=learning_rate)
    for _ in range(n_steps):
        losses = _losses(x, theta, logits)
        if not bool((losses > 0).any()):
            break
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
    with th.no_grad():
        final_losses = _losses(x, theta, logits).numpy()
        nearest = _distances(x, theta).min(dim=2).values.numpy()  # (restarts, n)
    tolerance = cover_tolerance(agent_params, epsilon) / epsilon
    coverage = (nearest <= 1.0 + tolerance).sum(axis=1)
    best = int(np.lexsort((final_losses, -coverage))[0])
    return theta.detach()[best].numpy() * epsilon + offset


def _distances(x: th.Tensor, theta: th.Tensor) -> th.Tensor:
    """``(n, d)``, ``(restarts, k, d)`` -> L-infinity distances ``(restarts, n, k)``."""
    return (theta[:, None, :, :] - x[None, :, None, :]).abs().amax(dim=3)


def _losses(x: th.Tensor, theta: th.Tensor, logits: th.Tensor) -> th.Tensor:
    """The relaxed cover loss of each restart ``(restarts,)``, in units of epsilon (radius 1)."""
    soft = (th.softmax(logits, dim=2) * _distances(x, theta)).sum(dim=2)
    return th.relu(soft - 1.0).sum(dim=1)
