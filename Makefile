# Two commands get a newcomer going: `make demo` and `make test`.
# Both bootstrap .venv once (re-installing only when requirements.txt or pyproject.toml changes):
# the dependencies, then this package itself, editable (`pip install -e .`).

VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.requirements-installed
# One process on 2 cores: 2 OpenMP threads, passive waiting (busy-waiting halves the speed).
export OMP_NUM_THREADS ?= 2
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-fast venv bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PYTHON) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	PYTHON=$(PYTHON) bash script/demo.sh

test: $(STAMP)
	$(PYTHON) -m pytest -q tests

# Everything but the tests marked slow (multi-process, end-to-end, full-size models): under a minute.
test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	for b in bench/*_bench.py; do echo "== $$b"; $(PYTHON) $$b || exit 1; done

clean:
	rm -rf demo_output .pytest_cache
