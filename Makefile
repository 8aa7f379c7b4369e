# The two commands a newcomer types: `make demo` and `make test`. Both create (or reuse) a local
# virtual environment in .venv, install minifcn into it, then do their job.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test setup clean bench

$(STAMP): pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,mpi]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m minifcn.demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/minifcn bench

clean:
	rm -rf $(VENV) build *.egg-info
