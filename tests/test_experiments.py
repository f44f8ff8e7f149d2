"""The experiment runner: grid files, cell keys, the store, resuming after a kill, executors, dry runs."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sb3_rmdp.experiments import Cell, Grid, GridError, Store, StoreError, make_executor, plan, run_grid
from sb3_rmdp.experiments.cli import main as bench
from sb3_rmdp.experiments.runner import LocalExecutor, describe

GRIDS = Path(__file__).resolve().parents[1] / "benchmarks" / "grids"
#: the columns that say where and when a cell ran, not what it computed
PROVENANCE = {"wall_s", "executor", "machine", "finished_at"}


def tiny_grid(tmp_path: Path, body: str, name: str = "tiny") -> Path:
    """A grid file of small Resource Gathering cells (about 3 s each) whose store lies beside it."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nstore = "store"\n[defaults]\ntask = "ResourceGathering"\n'
        f"budget_per_representative = 512\n{body}"
    )
    return path


def test_product_order_blocks_and_defaults() -> None:
    grid = Grid.from_dict(
        {
            "name": "g",
            "defaults": {
                "task": "HalfCheetah",
                "seed": [0, 1],
                "algorithm": ["em", "random"],
                "n_agents": 10,
            },
            "cells": [{"k": 5}, {"k": [2, 3], "seed": 7}],
        }
    )
    got = [(c.config["k"], c.config["seed"], c.config["algorithm"]) for c in grid.cells]
    assert got == [
        (5, 0, "em"),
        (5, 0, "random"),
        (5, 1, "em"),
        (5, 1, "random"),
        (2, 7, "em"),
        (3, 7, "em"),
        (2, 7, "random"),
        (3, 7, "random"),
    ]  # fmt: skip: a block's own keys come after the defaults' (vary fastest); seed keeps its place
    assert all(
        c.config["n_agents"] == 10 and c.config["budget_per_representative"] == 100_000 for c in grid.cells
    )


def test_cell_key_is_the_resolved_config() -> None:
    base = {"task": "HalfCheetah", "algorithm": "em", "k": 5}
    assert Cell.of(base).key == Cell.of({**base, "n_agents": 100}).key  # a default written out: same cell
    assert Cell.of(base).key != Cell.of({**base, "seed": 1}).key
    assert Cell.of(base).key != Cell.of({**base, "log_std_init": -2}).key
    # another algorithm's parameter is blanked: it never splits a cell
    assert Cell.of(base).key == Cell.of({**base, "end_to_end_lr": 1e-2}).key
    assert Cell.of(base).config["end_to_end_lr"] is None
    e2e = {**base, "algorithm": "end_to_end"}
    assert Cell.of(e2e).key != Cell.of({**e2e, "end_to_end_lr": 1e-2}).key
    assert len(Cell.of(base).key) == 16


def test_k1_cells_share_one_run() -> None:
    grid = Grid.from_dict(
        {
            "name": "g",
            "defaults": {
                "task": "ResourceGathering",
                "algorithm": ["em", "end_to_end", "random"],
                "k": [1, 2],
            },
        }
    )
    runs = grid.runs()
    assert len(grid.cells) == 6 and len(runs) == 4
    k1 = [cells for cells in runs.values() if cells[0].config["k"] == 1]
    assert [c.config["algorithm"] for c in k1[0]] == ["em", "end_to_end", "random"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "g", "defaults": {"task": "Pong"}}, "unknown task 'Pong'; choose one of"),
        (
            {"name": "g", "defaults": {"task": "Ant", "algorithm": "ppo"}},
            "unknown algorithm 'ppo'; choose one of",
        ),
        (
            {"name": "g", "defaults": {"task": "Ant", "n_agent": 5}},
            "unknown key(s) ['n_agent'] for task 'Ant'",
        ),
        ({"name": "g", "defaults": {"task": "Ant", "k": "5"}}, "k = '5' is a str; write a int"),
        ({"name": "g", "defaults": {"task": "Ant", "k": 0}}, "k = 0; it must be at least 1"),
        ({"name": "g", "defaults": {"task": "Ant", "log_std_init": float("nan")}}, "write a finite number"),
        ({"name": "g", "defaults": {"k": 5}}, "no task; add task = one of"),
        ({"name": "g", "seeds": [1], "defaults": {"task": "Ant"}}, "unknown top-level key(s) ['seeds']"),
        ({"defaults": {"task": "Ant"}}, "no name; add name ="),
    ],
)
def test_bad_grid_names_the_fix(data: dict[str, Any], message: str) -> None:
    with pytest.raises(GridError) as error:
        Grid.from_dict(data)
    assert message in str(error.value)


def test_bad_grid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench(["run", str(tmp_path / "missing.toml")]) == 2
    assert "not found; give the path of a .toml grid file" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("name = 'x'\n[defaults\n")
    assert bench(["run", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    typo = tiny_grid(tmp_path, 'algorithm = "em"\nk = 1\nbudget = 5\n', name="typo")
    assert bench(["run", str(typo), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['budget']" in err and "budget_per_representative" in err


def test_store_refuses_another_grid_and_foreign_folders(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", "first")
    store.append([{"cell": "a" * 16, "task": "ResourceGathering", "welfare": 1.0}])
    with pytest.raises(StoreError, match="holds the results of grid 'first', not 'second'"):
        Store(tmp_path / "s", "second")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and is no store"):
        Store(tmp_path / "other", "first")
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="is a file; give a folder"):
        Store(tmp_path / "file", "first")
    with pytest.raises(ValueError, match="already in"):
        store.append([{"cell": "a" * 16, "task": "ResourceGathering", "welfare": 2.0}])
    assert Store(tmp_path / "s", "first").rows()[0]["welfare"] == "1.0"  # never replaced


def test_store_new_columns_and_a_cut_row(tmp_path: Path) -> None:
    store = Store(tmp_path, "g")
    store.append([{"cell": "1", "task": "t", "welfare": 1.5, "wall_s": 3}])
    store.append([{"cell": "2", "task": "t", "welfare": 2.5, "extra": [1, 2], "wall_s": 4}])
    rows = Store(tmp_path, "g").rows()
    assert [r["extra"] for r in rows] == ["", "1 2"]
    assert list(rows[0])[-1] == "wall_s"  # provenance columns stay last
    with open(store.path, "a") as f:
        f.write("3,t,9.9")  # a row cut by a kill mid-write
    reopened = Store(tmp_path, "g")
    assert reopened.finished() == {"1", "2"}
    assert store.path.read_text().endswith("\n")


def test_run_resume_and_shared_k1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = Grid.from_file(tiny_grid(tmp_path, 'algorithm = ["em", "random"]\nk = [1, 2]\n'))
    store = Store(grid.store, grid.name)
    assert run_grid(grid, store, LocalExecutor(2)) == 4
    rows = {(r["algorithm"], r["k"]): r for r in store.rows()}
    em1, random1 = rows[("em", "1")], rows[("random", "1")]
    assert random1["shared_with"] == "em" and em1["shared_with"] == ""
    assert {c: em1[c] for c in ("welfare", "assignment", "paths")} == {
        c: random1[c] for c in ("welfare", "assignment", "paths")
    }
    for row in store.rows():
        assert float(row["upper_bound"]) in (74.0, 86.0) and row["versions"].startswith("python=")
    # the same grid again runs nothing; one more algorithm reuses the shared k = 1 run
    assert run_grid(grid, Store(grid.store, grid.name), LocalExecutor(1)) == 0
    wider = Grid.from_file(tiny_grid(tmp_path, 'algorithm = ["em", "random", "kmeans"]\nk = [1]\n'))
    todo = plan(wider, Store(wider.store, wider.name))
    assert (len(todo.left), len(todo.runs), len(todo.copies)) == (1, 0, 1)
    assert run_grid(wider, Store(wider.store, wider.name), LocalExecutor(1)) == 1
    kmeans1 = next(r for r in Store(wider.store, wider.name).rows() if r["algorithm"] == "kmeans")
    assert kmeans1["shared_with"] == "em" and kmeans1["welfare"] == em1["welfare"]


def test_a_failing_cell_is_reported_and_the_others_land(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # k = 30 > 25 agents: RMDPPPO refuses the cell when it starts, the k = 2 cell runs on
    path = tiny_grid(tmp_path, 'algorithm = "em"\nk = [30, 2]\n')
    assert bench(["run", str(path), "--n-jobs", "1"]) == 1
    captured = capsys.readouterr()
    assert "ResourceGathering em k=30 seed=0: FAILED" in captured.out
    assert "1 of 2 runs failed" in captured.err and "lower k to at most 25" in captured.err
    rows = Store(tmp_path / "store", "tiny").rows()
    assert [r["k"] for r in rows] == ["2"]


def test_dry_run_counts_what_is_left(tmp_path: Path) -> None:
    grid = Grid.from_file(GRIDS / "figure3.toml")
    out = io.StringIO()
    todo = describe(grid, Store(tmp_path / "empty", grid.name), out)
    text = out.getvalue()
    assert len(grid.cells) == 4 * 4 * 4 * 3 and len(todo.left) == len(grid.cells)
    # k = 1 runs once per task and seed: 4 x 3 x (3 k x 4 algorithms + 1)
    assert len(todo.runs) == 4 * 3 * 13
    steps = 3 * (100_000 + 2_000) + 3 * 4 * (2 * 100_000 + 4_000) + 3 * 4 * (5 * 100_000 + 10_000)
    steps += 3 * 4 * (10 * 100_000 + 20_000)
    assert f"{steps:,} env steps" in text.splitlines()[1]  # HalfCheetah's line
    assert "total" in text and "core-hours" in text
    # cells in the store are left out of the estimate
    store = Store(tmp_path / "partial", grid.name)
    store.append([{"cell": grid.cells[0].key, **grid.cells[0].config, "welfare": 1.0, "wall_s": 100.0}])
    out = io.StringIO()
    assert len(describe(grid, store, out).left) == len(grid.cells) - 1
    # the measured cell sets HalfCheetah's rate: 510,000 env steps in 100 s
    assert "at 5,100 steps/s" in out.getvalue()


def test_dry_run_of_the_full_grid(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench(["run", str(GRIDS / "figure3_full.toml"), "--dry-run", "--store", "/nonexistent/store"]) == 0
    text = capsys.readouterr().out
    assert "800 cells, 0 finished" in text and "total                800 cells left,   680 runs" in text
    grid = Grid.from_file(GRIDS / "figure3_full.toml")
    assert {c.config["budget_per_representative"] for c in grid.cells} == {2_000_000}
    assert {(c.config["k"], c.config["n_agents"]) for c in grid.cells} == {
        (1, 100),
        (2, 100),
        (5, 100),
        (10, 100),
        (50, 1000),
    }
    assert {c.config["seed"] for c in grid.cells} == set(range(10))


@pytest.mark.xdist_group("kill")
def test_killed_grid_resumes_and_loses_nothing(tmp_path: Path) -> None:
    path = tiny_grid(tmp_path, 'algorithm = "em"\nk = 2\nseed = [0, 1, 2, 3]\n')
    command = [sys.executable, "-m", "sb3_rmdp", "bench", "run", str(path), "--n-jobs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    cells = tmp_path / "store" / "cells.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (cells.is_file() and cells.read_text().count("\n") >= 2):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the runner and its worker, mid-grid
    process.wait()
    before = cells.read_text()
    finished = len(list(csv.DictReader(io.StringIO(before))))
    assert 1 <= finished < 4, "the kill came after the grid finished: give it more cells"
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert f"{4 - finished} runs for {4 - finished} cells left ({finished} finished)" in resumed.stdout
    after = cells.read_text()
    assert after.startswith(before)  # the finished rows are kept as they were
    rows = list(csv.DictReader(io.StringIO(after)))
    assert sorted(int(r["seed"]) for r in rows) == [0, 1, 2, 3]
    assert len({r["cell"] for r in rows}) == 4


def test_executor_errors() -> None:
    with pytest.raises(GridError, match="--address is for --executor ray"):
        make_executor("local", 1, "auto")
    with pytest.raises(GridError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(GridError, match="run at least one worker"):
        make_executor("local", 0)


def test_ray_unreachable_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")  # CI installs it (the `ray` extra); a machine without Ray skips
    path = tiny_grid(tmp_path, 'algorithm = "em"\nk = 1\n')
    assert bench(["run", str(path), "--executor", "ray", "--address", "ray://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray cluster at 'ray://127.0.0.1:9'" in err and "ray start --head" in err
    assert bench(["run", str(path), "--executor", "ray", "--address", "http://x"]) == 2
    assert "write auto, ray://HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing ran, nothing written


@pytest.mark.xdist_group("ray")
def test_ray_and_local_write_the_same_row(tmp_path: Path) -> None:
    pytest.importorskip("ray")  # CI installs it (the `ray` extra); a machine without Ray skips
    body = 'algorithm = ["em", "end_to_end"]\nk = 2\n'
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    local = Grid.from_file(tiny_grid(tmp_path / "local", body))
    ray_grid = Grid.from_file(tiny_grid(tmp_path / "ray", body))
    run_grid(local, Store(local.store, local.name), make_executor("local", 2))
    run_grid(ray_grid, Store(ray_grid.store, ray_grid.name), make_executor("ray", 2))
    local_rows = Store(local.store, local.name).rows()
    ray_rows = Store(ray_grid.store, ray_grid.name).rows()
    assert {r["executor"] for r in ray_rows} == {"ray"} and {r["executor"] for r in local_rows} == {"local"}

    def computed(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
        return {r["cell"]: {c: v for c, v in r.items() if c not in PROVENANCE} for r in rows}

    assert computed(local_rows) == computed(ray_rows)
    assert len(local_rows) == 2


def test_report_tables_and_figures(tmp_path: Path) -> None:
    grid = Grid.from_dict(
        {
            "name": "r",
            "defaults": {"task": "HalfCheetah", "algorithm": ["em", "random"], "seed": [0, 1, 2], "k": 5},
        }
    )
    store = Store(tmp_path / "store", "r")
    welfare = {"em": [20.0, 22.0, 24.0], "random": [9.0, 10.0, 11.0]}
    targets = " ".join(f"{0.04 * i:.4f}" for i in range(100))
    store.append(
        {
            "cell": cell.key,
            **cell.config,
            "welfare": welfare[cell.config["algorithm"]][cell.config["seed"]],
            "upper_bound": 36.0,
            "targets": targets,
            "assignment": " ".join(str(i // 20) for i in range(100)),
            "returns": " ".join("1" for _ in range(100)),
            "wall_s": 60.0,
        }
        for cell in grid.cells
    )
    from sb3_rmdp.experiments.report import write_report

    written = write_report(grid, store, tmp_path / "out")
    names = {p.name for p in written}
    assert names == {"report.md", "headline.md", "welfare.png", "histograms_k5.png"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| EM | 22.00 ± 1.15 (3) |" in report and "| *bound* | 36.00 |" in report
    assert "EM 22.00 ± 1.15 is ahead of random 10.00 ± 0.58 at k = 5 (3 and 3 seeds)." in report
    headline = (tmp_path / "out" / "headline.md").read_text()
    assert "| HalfCheetah, n = 100 | 5 | 22.00 ± 1.15 (3) | 10.00 ± 0.58 (3) | 36.00 |" in headline
    assert "6 of 6 cells of grid `r` finished" in headline


def test_report_keeps_variants_of_a_row_apart(tmp_path: Path) -> None:
    # Two objectives (or scaling options) of EM at the same task, n and k are two rows, not one mean.
    grid = Grid.from_dict(
        {
            "name": "v",
            "defaults": {"task": "HalfCheetah", "algorithm": "em", "seed": [0, 1], "k": 5},
            "cells": [{"objective": "utilitarian"}, {"objective": "egalitarian"}],
        }
    )
    store = Store(tmp_path / "store", "v")
    store.append(
        {
            "cell": cell.key,
            **cell.config,
            "welfare": {"utilitarian": 20.0, "egalitarian": 10.0}[cell.config["objective"]]
            + cell.config["seed"],
            "upper_bound": 36.0,
            "wall_s": 1.0,
        }
        for cell in grid.cells
    )
    from sb3_rmdp.experiments.report import grid_rows, welfare_table

    rows = grid_rows(grid, store)
    assert {r["algorithm"] for r in rows} == {
        "em [objective=utilitarian]",
        "em [objective=egalitarian]",
    }
    assert {r["base_algorithm"] for r in rows} == {"em"}
    table = welfare_table(rows)
    assert "| EM [objective=utilitarian] | 20.50 ± 0.50 (2) |" in table
    assert table.index("utilitarian") < table.index("egalitarian")  # the grid's order


def test_committed_report_is_the_store_s(tmp_path: Path) -> None:
    """The committed figure3 report is what `bench report` writes from the committed store: no number in
    it was copied by hand."""
    grid = Grid.from_file(GRIDS / "figure3.toml")
    assert grid.store is not None
    if not (grid.store / "cells.csv").is_file():
        pytest.fail("benchmarks/results/figure3/cells.csv is missing: run the grid (docs/experiments.md)")
    from sb3_rmdp.experiments.report import write_report

    cwd = Path.cwd()
    os.chdir(Path(__file__).resolve().parents[1])
    try:
        write_report(grid, Store(grid.store, grid.name), tmp_path)
    finally:
        os.chdir(cwd)
    for name in ("report.md", "headline.md"):
        assert (tmp_path / name).read_text() == (grid.store / name).read_text(), (
            f"rerun: sb3-rmdp bench report {name}"
        )
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.partition("<!-- bench: figure3 -->\n")[2].partition("<!-- /bench -->")[0]
    assert block.strip() == (grid.store / "headline.md").read_text().strip(), (
        "README's headline is not the store's: "
        "sb3-rmdp bench report benchmarks/grids/figure3.toml --embed README.md"
    )


@pytest.mark.parametrize("grid_file", ["resource_gathering.toml", "halfcheetah_300k.toml"])
def test_committed_stores_are_complete(grid_file: str) -> None:
    """The migrated result sets hold every cell of their grid files: a rerun would run nothing."""
    grid = Grid.from_file(GRIDS / grid_file)
    assert grid.store is not None
    todo = plan(grid, Store(grid.store, grid.name))
    assert (len(todo.left), todo.orphans) == (0, 0)


def test_embed_writes_between_the_markers(tmp_path: Path) -> None:
    from sb3_rmdp.experiments.report import embed

    page = tmp_path / "README.md"
    page.write_text("intro\n<!-- bench: g -->\nold\n<!-- /bench -->\nend\n")
    assert embed(page, "g", "| new |\n")
    assert page.read_text() == "intro\n<!-- bench: g -->\n| new |\n<!-- /bench -->\nend\n"
    assert not embed(page, "g", "| new |")
    with pytest.raises(GridError, match="has no block <!-- bench: other -->"):
        embed(page, "other", "x")
    with pytest.raises(GridError, match="no such file"):
        embed(tmp_path / "missing.md", "g", "x")


def test_velocity_cells_pass_their_scaling_options_to_the_model() -> None:
    from sb3_rmdp.aggregate import TRACKED_FROM, RMDPAggregateRolloutBuffer
    from sb3_rmdp.experiments.velocity import PARAMS, ppo_kwargs

    config = {name: param.default for name, param in PARAMS.items()}
    plain = ppo_kwargs(config)
    assert "rollout_buffer_class" not in plain and "critic_agents" not in plain["policy_kwargs"]
    config.update(
        tracked_agents=32, critic_agents=32, tracked_from="assignment", minibatches="per_representative"
    )
    scaled = ppo_kwargs(config)
    assert scaled["rollout_buffer_class"] is RMDPAggregateRolloutBuffer
    assert scaled["rollout_buffer_kwargs"] == {
        "tracked_agents": 32,
        "tracked_from": "assignment",
        "minibatches": "per_representative",
    }
    assert scaled["policy_kwargs"]["critic_agents"] == 32
    # a cell written before the option keeps its key and its meaning: one sample of the population
    assert PARAMS["tracked_from"].default == "population" and not PARAMS["tracked_from"].keyed_default
    assert set(PARAMS["tracked_from"].choices or ()) == set(TRACKED_FROM)  # the buffer's, spelled again
