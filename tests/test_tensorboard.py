"""TensorBoard: ``tensorboard_log=`` writes SB3's keys and ours, the group sizes as a histogram and the
assignment figure; the figure is drawn only when due and only for TensorBoard."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import make_scaled
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sb3_rmdp.plotting
from sb3_rmdp import RMDPPPO, EMAssigner, RandomAssigner
from sb3_rmdp.plotting import plot_assignment

N_STEPS = 32
K = 2
SCALARS = (
    "welfare/utilitarian",
    "welfare/egalitarian",
    "welfare/nash",
    "assignment/changes",
    "assignment/smallest",
    "assignment/largest",
    "assignment/revived",  # EM's (this test's assigner)
    "rollout/ep_rew_mean",
    "rollout/ep_len_mean",
    "train/loss",
    "train/policy_gradient_loss",
    "train/value_loss",
    "train/entropy_loss",
    "train/approx_kl",
    "train/clip_fraction",
    "train/clip_range",
    "train/explained_variance",
    "train/learning_rate",
    "time/fps",
)


def _model(assigner: EMAssigner | RandomAssigner, tensorboard_log: Path | None) -> RMDPPPO:
    return RMDPPPO(
        "MlpPolicy",
        make_scaled(n_agents=3),
        k=K,
        assigner=assigner,
        n_steps=N_STEPS,
        batch_size=32,
        n_epochs=1,
        policy_kwargs={"net_arch": [8]},
        tensorboard_log=None if tensorboard_log is None else str(tensorboard_log),
        seed=0,
    )


def _events(log_dir: Path) -> EventAccumulator:
    runs = sorted(log_dir.iterdir())
    assert [run.name for run in runs] == ["tiny_1"], "SB3 names the run <tb_log_name>_<n>"
    accumulator = EventAccumulator(
        str(runs[0]), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def test_tensorboard_writes_every_key(tmp_path: Path) -> None:
    rollouts = 4
    model = _model(EMAssigner(warm_start_updates=1, figure_every=2), tmp_path)
    model.learn(rollouts * N_STEPS * K, tb_log_name="tiny")
    tags = _events(tmp_path).Tags()

    missing = [key for key in SCALARS if key not in tags["scalars"]]
    assert not missing, f"scalars missing from TensorBoard: {missing}; written: {sorted(tags['scalars'])}"
    # SB3 keeps these off TensorBoard (exclude="tensorboard"); the docs say so.
    assert "time/iterations" not in tags["scalars"] and "train/n_updates" not in tags["scalars"]
    assert "assignment/sizes" in tags["histograms"]
    assert tags["images"] == ["assignment/figure"]

    events = _events(tmp_path)
    sizes = events.Histograms("assignment/sizes")
    assert len(sizes) == rollouts
    # The histogram is over the k group sizes: k values summing to n_agents.
    assert sizes[-1].histogram_value.num == K and sizes[-1].histogram_value.sum == 3
    changes = events.Scalars("assignment/changes")
    assert [event.step for event in changes] == [N_STEPS * K * (r + 1) for r in range(rollouts)]
    # figure_every=2: rollouts 1 and 3.
    images = events.Images("assignment/figure")
    assert [image.step for image in images] == [N_STEPS * K, 3 * N_STEPS * K]
    assert images[0].width > 100 and images[0].height > 100


@pytest.mark.parametrize("tensorboard", [False, True])
def test_figure_only_when_due_and_for_tensorboard(
    tensorboard: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[np.ndarray] = []

    def counting_plot(assignment: np.ndarray, *args: object, **kwargs: object) -> Figure:
        drawn.append(assignment)
        return plot_assignment(assignment, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sb3_rmdp.plotting, "plot_assignment", counting_plot)
    _model(RandomAssigner(figure_every=1), tmp_path if tensorboard else None).learn(2 * N_STEPS * K)
    assert len(drawn) == (2 if tensorboard else 0)

    drawn.clear()
    _model(RandomAssigner(figure_every=0), tmp_path if tensorboard else None).learn(2 * N_STEPS * K)
    assert drawn == []


def test_figure_every_must_be_a_count() -> None:
    with pytest.raises(ValueError, match="figure_every=-1"):
        EMAssigner(figure_every=-1)


def test_assigner_pickled_before_figure_every_still_logs() -> None:
    assigner = RandomAssigner()
    state = assigner.__getstate__()
    del state["figure_every"]
    restored = RandomAssigner.__new__(RandomAssigner)
    restored.__setstate__(state)
    assert restored.figure_every == 10


@pytest.mark.parametrize(
    "agent_params",
    [None, np.linspace(0, 4, 30), np.linspace(0, 4, 30)[:, None], np.random.default_rng(0).random((30, 3))],
    ids=["none", "1d-flat", "1d", "3d"],
)
@pytest.mark.parametrize("k", [1, 3, 12])
def test_plot_assignment(agent_params: np.ndarray | None, k: int) -> None:
    open_figures = plt.get_fignums()
    assignment = np.arange(30) % k
    assignment[assignment == k - 1] = 0  # a representative without agents
    figure = plot_assignment(assignment, k, agent_params)
    assert isinstance(figure, Figure) and len(figure.axes) == 1
    assert figure.axes[0].get_title() == f"assignment of 30 agents to {k} representatives"
    # Not registered with pyplot: an unclosed figure (any logger output but TensorBoard) is collected.
    assert plt.get_fignums() == open_figures
    figure.savefig(io.BytesIO(), format="png")
