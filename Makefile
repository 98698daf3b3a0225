# Two commands get a newcomer going: `make demo` and `make test`.
# Both bootstrap .venv once (re-installing only when requirements.txt changes).

VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.requirements-installed
# One process on 2 cores: 2 OpenMP threads, passive waiting (busy-waiting halves the speed).
export OMP_NUM_THREADS ?= 2
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	PYTHON=$(PYTHON) bash script/demo.sh

test: $(STAMP)
	$(PYTHON) -m pytest -q tests

bench: $(STAMP)
	for b in bench/*_bench.py; do echo "== $$b"; $(PYTHON) $$b || exit 1; done

clean:
	rm -rf demo_output .pytest_cache
