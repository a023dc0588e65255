# The two commands of the README: `make demo` (main job) and `make test` (tests).
# Both install what they need, idempotently, into .venv: the CPU build of torch first, then the
# core package and every distribution under plugins/, all editable. The test-only plugins under
# tests/plugins/ are never installed: the test session makes them importable for itself only.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PKGS := . $(wildcard plugins/*)
CFGS := setup.cfg constraints-cpu.txt $(wildcard plugins/*/setup.cfg)
STAMP := $(VENV)/.installed-$(shell cat $(CFGS) | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo docs lint clean

install: $(STAMP)

$(STAMP): $(CFGS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints-cpu.txt $(foreach p,$(PKGS),-e $(p)$(if $(filter .,$(p)),[test],))
	$(PY) -m pip uninstall -q -y $(notdir $(wildcard tests/plugins/*)) 2>/dev/null || true
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	$(PY) -m pytest -q tests $(wildcard plugins/*/tests) --doctest-modules stochclosure $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests $(wildcard plugins/*/tests) $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/stochclosure demo

docs: install
	$(VENV)/bin/mkdocs build --strict

lint: install
	$(VENV)/bin/ruff check stochclosure plugins tests benchmarks tutorials

clean:
	rm -rf $(VENV) build *.egg-info
