# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: run test test-fast venv demo bench clean-cache

venv: $(STAMP)

# The pins, then this checkout as an editable package (its dependencies are those pins: --no-deps).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel setuptools
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	cp requirements.txt $(STAMP)

run: $(STAMP)
	$(PY) app.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -rs tests $(ARGS)

demo: $(STAMP)
	$(PY) -m braindive generate --preset demo --subject S1 --roi FFA --n 4 --steps 25 --seed 0 --out outputs/demo

bench: $(STAMP)
	$(PY) -m benchmarks.guidance --config tiny
