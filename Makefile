# Quick start: `make demo` (set up, then convert the bundled example, show its plan, load it)
#              `make test` (set up, then run the test suite)
#              `make test-oldest` (a fast subset with the oldest supported mlx, mlx-lm, mlx-vlm)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   := build/demo
OLDEST ?= .venv-oldest
OLD_PY := $(OLDEST)/bin/python
# trace + execute + bit-identity with the oldest libraries' own eager conversion on a few
# corpus cases (mlx_lm, FP8/MXFP4 sources, mlx_vlm); the committed plan records the newest
# tested versions, so its freshness test is left out
OLDEST_TESTS := tests/test_versions.py tests/test_tracer.py tests/test_executor.py \
	tests/test_plan.py tests/test_cli.py tests/test_check.py tests/test_corpus.py
OLDEST_K := not test_committed_example_plan_is_fresh and (not test_corpus_case \
	or [lm-llama- or [lm-qwen3_moe- or [lm-deepseek_v3- or [special-deepseek_v3-fp8- \
	or [special-gpt_oss-mxfp4- or [vlm-qwen2_5_vl- or [vlm-llama4-)

.PHONY: setup demo test test-oldest clean

# pip's own output shows progress (a silent install takes about a minute)
$(VENV)/.installed: pyproject.toml requirements.lock
	@echo "installing sanitrace and its dependencies into $(VENV) (about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -c requirements.lock -e ".[test,vlm,ray]"
	touch $@

$(OLDEST)/.installed: pyproject.toml requirements-oldest.lock
	@echo "installing sanitrace with the oldest supported libraries into $(OLDEST) (about a minute)"
	$(PYTHON) -m venv $(OLDEST)
	$(OLD_PY) -m pip install --quiet --upgrade pip
	$(OLD_PY) -m pip install --progress-bar on -c requirements-oldest.lock -e ".[test,vlm]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PY) -m sanitrace convert --hf-path examples/tiny-qwen3-moe --mlx-path $(DEMO)/mlx-model -q \
		--plan-out $(DEMO)/plan.msgpack
	$(PY) -m sanitrace show $(DEMO)/plan.msgpack
	$(PY) -c "from mlx_lm import load; load('$(DEMO)/mlx-model'); print('mlx_lm.load: ok')"
	@echo "done: $(DEMO)/mlx-model; 'source $(VENV)/bin/activate' puts sanitrace on your PATH"

lint: setup
	$(PY) -m ruff check sanitrace tests bench examples plans
	$(PY) -m ruff format --check sanitrace tests bench examples plans
	$(PY) -m mypy

test: setup
	$(PY) -m pytest -q --durations=10

test-oldest: $(OLDEST)/.installed
	$(OLD_PY) -m pytest -q -k "$(OLDEST_K)" $(OLDEST_TESTS)

clean:
	rm -rf build $(VENV) $(OLDEST)
