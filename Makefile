# Every target sets itself up on a fresh machine: it creates .venv if missing, installs the pinned
# CPU torch first (any other torch build pulls GBs of CUDA), then the package with its extras.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
# One torch thread per process: with the default two threads PPO collapses >10x whenever the other
# core is busy (measured in benchmarks/throughput.py).
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: install demo test lint format bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo_resource_gathering.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

lint: $(STAMP)
	$(VENV)/bin/ruff check sb3_rmdp tests benchmarks examples docs
	$(VENV)/bin/ruff format --check sb3_rmdp tests benchmarks examples docs
	$(VENV)/bin/mypy sb3_rmdp

format: $(STAMP)
	$(VENV)/bin/ruff format sb3_rmdp tests benchmarks examples docs
	$(VENV)/bin/ruff check --fix sb3_rmdp tests benchmarks examples docs

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

# The site (mkdocs.yml, docs/) into site/; --strict fails on any warning (broken link, bad docstring).
# The benchmark PNGs and result tables come straight from benchmarks/results/ (docs/hooks.py), so
# re-running a benchmark updates the site with no copy to refresh. `make test` builds it too.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build *.egg-info demo_output site .pytest_cache .mypy_cache .ruff_cache
