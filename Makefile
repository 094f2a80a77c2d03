# Two commands do all the set-up on a fresh clone (see README):
#   make experiment   run the default experiment offline
#   make test         run every test: the library's and the notebooks'
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

.PHONY: venv experiment test test-lib lab lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,notebooks,flower]"
	touch $(STAMP)

experiment: $(STAMP)
	$(PY) -m fedlib.experiment $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider $(PYTEST_ARGS)

test-lib: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

# JupyterLab from the project's environment: its default "python3" kernel is .venv's Python.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# Re-resolve the newest versions pyproject.toml allows and record them (then run make test).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet torch==$(TORCH_VERSION) && .venv-lock/bin/pip install --quiet -e ".[dev,notebooks,flower]"
	.venv-lock/bin/pip freeze | grep -v -e "^fedlib" -e "^-e" -e "^torch==" > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) runs .pytest_cache
