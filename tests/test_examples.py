"""Every script in examples/ runs, as a user runs it, at a tiny budget: exit code 0, its lines, its files.

Each script is one test (xdist spreads them over its workers), run in a subprocess from a temporary
working directory with ``--out`` there. The tiny budgets are one or two PPO rollouts: the scripts' own
defaults are real budgets, documented in their docstrings. Together they take about a minute of CPU.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# script -> (tiny-budget arguments, lines the output must contain, files it must write under --out)
CASES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "demo_resource_gathering.py": (
        ["--timesteps", "1536"],
        ["Welfare (deployed assignment, evaluation episodes)", "exact optimum for k=3: 89.28"],
        ["paths.png"],
    ),
    "em_resource_gathering.py": (
        ["--timesteps", "1536"],
        ["welfare (deployed assignment):", "exact optimum for k=3: 89.28", "EM ran"],
        ["paths.png", "model.zip"],
    ),
    "end_to_end.py": (
        ["--timesteps", "1536"],
        [
            "soft welfare (sum_j alpha Q):",
            "deployed welfare (argmax assignment):",
            "best-response welfare (deploy='best_response'):",
        ],
        ["weights.png"],
    ),
    "kmeans_baseline.py": (
        ["--timesteps", "1536"],
        ["     em: welfare", " kmeans: welfare", " random: welfare"],
        ["comparison.csv", "comparison.png"],
    ),
    "velocity_population.py": (
        ["--timesteps", "320", "--n-steps", "64"],
        ["welfare (deployed assignment):", "upper bound for k=5 (best k constant speeds):"],
        ["assignment.png", "model.zip", "vec_normalize.pkl"],
    ),
    "preference_population.py": (
        ["--timesteps", "192", "--n-steps", "64", "--eval-episodes", "1"],
        ["50 agents over resource-gathering-v0 (3 objectives), k=3", "welfare (deployed assignment):"],
        ["assignment.png"],
    ),
    "committee.py": (
        ["--k", "2", "--n-agents", "20", "--timesteps", "128", "--n-steps", "64", "--new-agents", "1"],
        ["epsilon-cover (greedy, epsilon=0.4, k=2)", "zero-shot representative", "few-shot representative"],
        ["new_agents.csv"],
    ),
    "tuning.py": (
        ["--trials", "4", "--trial-timesteps", "384", "--timesteps", "384", "--n-steps", "128"],
        ["best trial", "welfare after 384 steps with the best hyperparameters:"],
        ["tuning.db", "best.json", "model.zip"],
    ),
    "export_for_review.py": (
        ["--timesteps", "1536"],
        ["# Representative 0 of 3", "actions identical to model.predict(obs, representative=0): True"],
        ["representative_0.zip", "representative_0.json", "representative_0.md", "model.zip"],
    ),
    "own_env.py": (
        ["--timesteps", "1536", "--n-steps", "256"],
        [
            "        em: welfare",
            "     fixed: welfare",
            "sb3-rmdp train --env own_env:Delivery-v0 exited with 0",
            "PPO.load acts as it does: True",
        ],
        ["em.zip", "cli.zip", "representative_0.zip", "assigners.csv"],
    ),
    "masked_recommendation.py": (
        ["--timesteps", "1536", "--n-steps", "128"],
        ["k=3: welfare", "out-of-stock recommendations in training: 0", "welfare gain of k=3 over one"],
        ["masked_k1.zip", "masked_k3.zip"],
    ),
    "dict_population.py": (
        ["--timesteps", "1024", "--n-steps", "128"],
        ["k=4: welfare", "welfare gain of k=4 over one policy"],
        ["dict_k1.zip", "dict_k4.zip"],
    ),
    "partially_observed.py": (
        ["--timesteps", "768", "--n-steps", "64"],
        ["LSTM k=3: welfare", "MLP k=3 (no memory): welfare", "memory is worth"],
        ["lstm_k1.zip", "lstm_k3.zip"],
    ),
    "save_resume.py": (
        ["--timesteps", "1536"],
        ["identical policy parameters: True", "identical EM Q-table: True", "identical assignment: True"],
        ["checkpoint.zip", "env.pkl"],
    ),
}


def test_every_example_is_tested() -> None:
    scripts = sorted(path.name for path in EXAMPLES.glob("*.py"))
    assert scripts == sorted(CASES), "add the new example to CASES (or remove the stale entry)"


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script: str, tmp_path: Path) -> None:
    arguments, lines, files = CASES[script]
    out = tmp_path / "out"
    # COLUMNS: rich (the demo's tables) would wrap lines at 80 characters.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *arguments, "--out", str(out)],
        cwd=tmp_path,  # anything written outside --out (e.g. runs/) stays in the temporary directory
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{script} failed:\n{output}"
    for line in lines:
        assert line in result.stdout, f"{script}: {line!r} is missing from its output:\n{output}"
    for name in files:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, f"{script} did not write {name}"
    assert "Traceback" not in result.stderr, f"{script} printed a traceback:\n{output}"

    if script == "kmeans_baseline.py":
        with open(out / "comparison.csv") as file:
            assert [row["assigner"] for row in csv.DictReader(file)] == ["em", "kmeans", "random"]
    if script == "tuning.py":
        best = json.loads((out / "best.json").read_text())
        assert best["k"] == 3 and best["assigner"] == "em" and "learning_rate" in best["hyperparams"]
    if script == "export_for_review.py":
        dossier = json.loads((out / "representative_0.json").read_text())
        assert dossier["representative"] == 0 and dossier["n_agents"] == 25
