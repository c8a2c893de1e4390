# One-command entry points. Each target works alone from a fresh clone: it creates .venv when absent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
OUT    ?= results/quickstart
EXTRAS ?= dev,lstm,live,ray,embed

.PHONY: install native demo test test-all bench validate lint clean

install: $(VENV)/.installed

# torch is pinned first so that the `lstm` extra is satisfied by the CPU wheel (an unpinned resolve pulls CUDA).
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[$(EXTRAS)]'
	$(PY) tools/build_native.py
	touch $@

# Recompile the hot modules after editing them (a stale compiled copy is ignored: pure Python until rebuilt).
native: install
	$(PY) tools/build_native.py

demo: install
	$(VENV)/bin/fleettwin sim run configs/quickstart.yaml --out $(OUT) --plot

test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m ''

bench: native
	$(PY) benchmarks/bench_serving.py

# Every public measured vLLM run simulated with each performance model next to its measurement (docs/validation.md);
# the calibrated model refitted without each run and each deployment (leave-one-out). About 10 minutes on 2 cores.
validate: install
	$(VENV)/bin/fleettwin data calibrate report --out results/validation

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) results build *.egg-info
