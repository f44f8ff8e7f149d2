"""``sb3_rmdp.plotting.plot_welfare_vs_k``: what the benchmarks' welfare figures draw."""

from __future__ import annotations

import numpy as np

from sb3_rmdp.plotting import plot_welfare_vs_k


def test_welfare_vs_k_draws_means_and_a_visible_reference_at_a_single_k() -> None:
    rows = [
        {"algorithm": "em", "k": "5", "welfare_eval": str(w), "upper_bound": "37.4"} for w in (20.0, 24.0)
    ] + [{"algorithm": "random", "k": "5", "welfare_eval": "10.0", "upper_bound": "37.4"}]
    ax = plot_welfare_vs_k(rows).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    bound = lines["upper bound"]
    assert np.allclose(bound.get_ydata(), [37.4])
    assert bound.get_marker() == "_" and bound.get_markersize() > 0  # one k: no line, a dash
    means = {container.get_label(): container.lines[0] for container in ax.containers}
    assert np.allclose(means["em"].get_ydata(), [22.0])  # the mean over seeds
    assert np.allclose(means["random"].get_ydata(), [10.0])
