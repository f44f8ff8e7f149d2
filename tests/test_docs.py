"""The documentation: the site builds with ``mkdocs build --strict`` and the pages' code runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sb3_rmdp import RMDPPPO

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"

    api = (site / "api" / "index.html").read_text()
    for name in ("sb3_rmdp.RMDPPPO", "sb3_rmdp.assigners.EMAssigner", "sb3_rmdp.welfare.utilitarian_welfare"):
        assert f'id="{name}"' in api, f"the API page lost {name}"
    # Every results marker was rendered by docs/hooks.py (a mistyped one would pass as an HTML comment).
    for page in site.rglob("*.html"):
        assert "<!-- results" not in page.read_text(), f"{page}: a results marker was not rendered"
    results = ROOT / "benchmarks" / "results"
    for png in results.rglob("*.png"):
        name = png.relative_to(results)
        assert (site / "assets" / "results" / name).is_file(), f"{name} is missing from the site"


PAGES_WITH_CODE = sorted(
    str(page.relative_to(ROOT / "docs"))
    for page in (ROOT / "docs").rglob("*.md")
    if "```python" in page.read_text() and page.name != "index.md"  # index.md: a sketch (obs, j)
)


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_docs_code_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every python block of a page runs, in order, in one namespace, with training cut to 3 rollouts."""
    original_init, original_learn = RMDPPPO.__init__, RMDPPPO.learn

    def small_init(self: RMDPPPO, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **{**kwargs, "n_steps": 32, "batch_size": 32, "n_epochs": 1})

    def small_learn(self: RMDPPPO, total_timesteps: int, *args: Any, **kwargs: Any) -> RMDPPPO:
        kwargs["progress_bar"] = False
        return original_learn(self, min(int(total_timesteps), 3 * 32 * self.n_envs), *args, **kwargs)

    monkeypatch.setattr(RMDPPPO, "__init__", small_init)
    monkeypatch.setattr(RMDPPPO, "learn", small_learn)
    monkeypatch.chdir(tmp_path)  # e.g. tensorboard_log="runs/"
    text = (ROOT / "docs" / page).read_text()
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
        exec(compile(code, f"docs/{page} (block {i})", "exec"), namespace)
