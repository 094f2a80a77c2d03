# Two commands do all the set-up on a fresh clone (see README):
#   make experiment   run the default experiment offline
#   make test         run every test: lint, the library's, the notebooks', deployments, benchmark smoke runs
# The inner loop: make test-fast (library tests only, no notebooks, deployments or subprocess kills).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Installed first and exactly: a ranged or unpinned torch pulls a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.fedlib-installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export MPLBACKEND ?= Agg
export PIP_DISABLE_PIP_VERSION_CHECK ?= 1
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv experiment test test-fast lint lab browser lock clean

venv: $(STAMP)

# --no-compile: pip's byte-compiling of every installed file (torch's and the Jupyter stack's) took about 55 of the
# 85 s a fresh venv took; Python compiles what is imported, once, on first import instead (about 6 s for torch,
# transformers and fedlib), which is why this Makefile lets it write its .pyc files (PYTHONDONTWRITEBYTECODE unset).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e ".[dev,notebooks,flower,tracking]"
	touch $(STAMP)

experiment: $(STAMP)
	$(PY) -m fedlib.experiment $(ARGS)

# Three pytest-xdist workers on 2 cores, one torch thread each (conftest.py): many tests wait on subprocesses (Flower
# nodes, kernels), so a third worker uses the idle core time; TEST_WORKERS=0 runs in one process. nbval executes each
# notebook once; tests/test_notebooks.py then checks what that run wrote, on the same worker (--dist loadgroup, read
# by conftest.py's scheduler). docs/testing.md says what each part runs and how long it takes.
# The tests that start Flower's runtimes as processes (marker flower_runtime: a SuperLink, SuperNodes, Ray) run after
# the rest, one at a time with nothing beside them: Ray gives its node 30 s to start (hard-coded), and on a slow 2-core
# machine under three workers' load it did not (docs/testing.md). Exit code 5 (nothing selected, e.g. by PYTEST_ARGS)
# is not a failure.
TEST_WORKERS ?= 3
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)
SELECTED_OK = rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
test: $(STAMP) lint browser
	$(PY) -m pytest notebooks tests --nbval-lax -p no:cacheprovider $(XDIST) -m "not flower_runtime" --durations=25 \
		$(PYTEST_ARGS); $(SELECTED_OK)
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -m flower_runtime -p no:cacheprovider --durations=5 $(PYTEST_ARGS); \
		$(SELECTED_OK)

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -p no:cacheprovider $(XDIST) --durations=10 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# JupyterLab from the project's environment: its default "python3" kernel is .venv's Python.
# --allow-root: CI and most containers run as root, where JupyterLab otherwise refuses to start. MPLBACKEND (Agg,
# exported above for headless runs) is dropped so that the kernels draw figures inline. Offline: no news feed, no
# update check, and no prompt asking to fetch them (notebooks/.jupyterlab/overrides.json; the browser test uses the
# same LAB_FLAGS).
LAB_FLAGS := --LabApp.news_url=None --LabApp.app_settings_dir=$(CURDIR)/notebooks/.jupyterlab
lab: $(STAMP)
	env -u MPLBACKEND $(VENV)/bin/jupyter lab notebooks/ $(LAB_FLAGS) $(if $(filter 0,$(shell id -u)),--allow-root,)

# Chromium and its driver for tests/test_lab_browser.py, from Debian's packages (apt needs root; CI runs as root).
# Without them that test is skipped and says why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "chromium not installed (needs root and apt): the JupyterLab browser test will be skipped"

# Re-resolve the newest versions pyproject.toml allows and record them (then run make test).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet torch==$(TORCH_VERSION) && .venv-lock/bin/pip install --quiet -e ".[dev,notebooks,flower,tracking]"
	.venv-lock/bin/pip freeze | grep -v -e "^fedlib" -e "^-e" -e "^torch==" > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) runs .pytest_cache
