# Quick start: `make demo` (set up, then trace/show/execute the bundled example)
#              `make test` (set up, then run the test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   := build/demo

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PY) -m sanitrace trace examples/tiny-qwen3-moe -q -o $(DEMO)/plan.msgpack
	$(PY) -m sanitrace show $(DEMO)/plan.msgpack
	$(PY) -m sanitrace execute $(DEMO)/plan.msgpack --source examples/tiny-qwen3-moe --out $(DEMO)/mlx-model
	$(PY) -c "from mlx_lm import load; load('$(DEMO)/mlx-model'); print('mlx_lm.load: ok')"

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf build $(VENV)
