# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CUDA build of torch cached on our machines; elsewhere pip picks any torch >= 2.4.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
export DVC_NO_ANALYTICS := 1

.PHONY: run test lint install clean paper exp dvc-ready dashboard ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Byte-code: pip --no-compile skips compiling all of torch, MLflow and DVC up front (about 100 s
# of one core for ~20,000 files, most never imported); Python compiles each module the first time
# it is imported and keeps the .pyc. That needs PYTHONDONTWRITEBYTECODE unset (it is set on our
# machines): without a .pyc every process (each test, stage, shard and worker) would compile
# torch, torchvision and MLflow from source again, 30 s instead of 10.
unexport PYTHONDONTWRITEBYTECODE
PIP := $(BIN)/pip install --quiet --no-compile

# The install itself is uv's (`uv pip install`): the same packages from the same sources as pip
# (tools/pip_sources.py hands it pip's configuration), in about 40 s instead of 3 min on our
# 2-core machines (torch alone: 21 s instead of 62). Where uv cannot be installed, pip does it all.
UV := $(BIN)/uv pip install --quiet --python $(BIN)/python $(shell $(PYTHON) tools/pip_sources.py 2>/dev/null)

$(VENV)/.installed: pyproject.toml deploy/field/pyproject.toml tools/pip_sources.py | $(BIN)/python
	@if $(PIP) 'uv>=0.5' 2>/dev/null; then \
	    echo "$(UV) $(TORCH) && -e '.[cpu,test]' -e deploy/field"; \
	    $(UV) $(TORCH) && $(UV) -e '.[cpu,test]' -e deploy/field; \
	else \
	    echo "no uv here: pip installs"; \
	    $(PIP) $(TORCH) && $(PIP) -e '.[cpu,test]' -e deploy/field; \
	fi   # finalbn-field: field inference, and finalbn's decoder and decision rules (one command: finalbn needs it)
	touch $@

install: $(VENV)/.installed

# The main job: the whole DVC pipeline on the embedded default (params.yaml).
# `finalbn store` first: does the MLflow store still hold the runs each stage's outputs cite? (A stage
# whose runs are gone runs again; run it yourself before a bare `dvc repro`: src/finalbn/stages/store.py.)
# `finalbn plan` then: each stage `dvc repro` will run, and its projected time on this machine.
run: install
	@$(MAKE) --no-print-directory dvc-ready
	@$(BIN)/finalbn store --out results/store
	@$(BIN)/finalbn plan
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# DVC needs git unless told otherwise. Outside a git work tree (a ZIP download, a release
# tarball, a container build context without .git) it runs without SCM: core.no_scm in
# .dvc/config.local, which belongs to this copy only (.dvc/.gitignore ignores it).
IN_GIT := $(shell git rev-parse --is-inside-work-tree 2>/dev/null)
# `dvc plots show` offline: a page with Vega inlined (tools/offline_plots.py, .dvc/plots.html, made once
# from the npm registry; without npm, DVC's own page, which loads Vega from its CDN).
dvc-ready:
	@test -d .dvc || "$(BIN)/dvc" init --quiet $(if $(IN_GIT),,--no-scm)
	@$(BIN)/python tools/offline_plots.py .dvc/plots.html && if test -f .dvc/plots.html; then \
	    "$(BIN)/dvc" config --local plots.html_template plots.html; fi
ifeq ($(IN_GIT),true)
	@"$(BIN)/dvc" config --local --unset core.no_scm 2>/dev/null || true
else
	@"$(BIN)/dvc" config --local core.no_scm true
	@echo "not a git work tree: DVC runs without git here (core.no_scm in .dvc/config.local)"
endif

# The paper's study on PlantVillage (profiles/paper.yaml); outside DVC so that it never touches
# the embedded default's outputs.
PAPER := --params params.yaml --params profiles/paper.yaml
paper: install
	$(BIN)/finalbn prepare $(PAPER) --out data/splits-paper
	$(BIN)/finalbn ceiling $(PAPER) --splits data/splits-paper --out results-paper/ceiling/all.json
	$(BIN)/finalbn grid $(PAPER) --splits data/splits-paper --results results-paper
	$(BIN)/finalbn sensitivity $(PAPER) --splits data/splits-paper --out results-paper/sensitivity
	$(BIN)/finalbn report $(PAPER) --grid-csv results-paper/grid.csv --ceiling results-paper/ceiling --search results-paper/search.json --sensitivity results-paper/sensitivity/sensitivity.csv --out report-paper

# The house rules first (seconds): ruff's lint and its formatter's check (pyproject.toml [tool.ruff];
# `ruff format src deploy tests benchmarks tools` lays a file out), the import contracts
# (import-linter: the layers point down, stages never import each other, MLflow only in tracking/)
# and the type checker (mypy, pyproject.toml [tool.mypy]: finalbn and the field package).
LINTED := src deploy tests benchmarks tools
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# The tests in as many processes as cores (at most 4; each test trains with one thread), handed
# out one at a time, the longest first (tests/conftest.py); the 15 slowest are listed at the end.
# While the lint runs, one process imports what every test process imports, so that its byte-code is
# compiled once (the install skips it, above) instead of by the four test processes at once (~17 s
# of a core each).
WARM := import torch, torchvision, mlflow, optuna, sklearn, pandas, matplotlib.pyplot, onnx, onnxruntime, \
        finalbn.cli, finalbn.stages.grid, finalbn.stages.search, finalbn.stages.report, finalbn.stages.export
test: install
	@$(BIN)/python -c "$(WARM)" & warm=$$!; \
	$(MAKE) --no-print-directory lint || { wait $$warm; exit 1; }; wait $$warm
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist load --maxschedchunk 1 --durations 15

# A variant of the study as a DVC experiment: the profile's values written into params.yaml inside
# `dvc exp run -n <profile>` (finalbn variant prints the -S arguments), its params and metrics then in
# `dvc exp show` beside the workspace's: make exp PROFILE=profiles/paper.yaml
PROFILE ?= profiles/paper.yaml
exp: install
	@$(MAKE) --no-print-directory dvc-ready
	@$(BIN)/finalbn store --out results/store
	args=$$($(BIN)/finalbn variant $(PROFILE)) && eval "PATH=\"$(CURDIR)/$(BIN):\$$PATH\" $(BIN)/dvc exp run $$args"

# The search's study in a browser (optuna-dashboard, installed into the project's venv on first use;
# plain `pip` would install into the system Python): make dashboard [STORAGE=...] [PORT=8080]
STORAGE ?= $(shell $(BIN)/python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['search']['storage'])" 2>/dev/null)
PORT    ?= 8080
dashboard: install
	@$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || $(PIP) -e '.[dashboard]'
	@test -e "$(STORAGE)" || case "$(STORAGE)" in *://*) ;; *) echo "no study at $(STORAGE): run the search first (make run)"; exit 2;; esac
	$(BIN)/optuna-dashboard "$(STORAGE)" --host 127.0.0.1 --port $(PORT)

# The MLflow UI on the project's store: one experiment per stage (finalbn/grid, finalbn/search, ...).
# The address printed first opens the grid's runs in the model-training view (MLflow 3.17's UI opens
# its GenAI view otherwise): tracking.store.ui_url.
ui: install
	@$(BIN)/python -c "from finalbn.config import load_config; from finalbn.tracking.store import ui_url; \
	    print('the grid in the MLflow UI:', ui_url(load_config(['params.yaml']), '127.0.0.1', 5000))" || true
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV)
