# Two commands get a newcomer going: `make demo` and `make test`.
# Both bootstrap .venv once (re-installing only when requirements.txt or pyproject.toml changes):
# the dependencies, then this package itself, editable (`pip install -e .`).

VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.requirements-installed
# One process on 2 cores: 2 OpenMP threads, passive waiting (busy-waiting halves the speed).
export OMP_NUM_THREADS ?= 2
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-fast venv bench clean browser dicom-tools

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PYTHON) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	PYTHON=$(PYTHON) bash script/demo.sh

# The suite runs in TEST_WORKERS pytest-xdist processes (2: one per core here); most of its time is
# single-threaded Python start-up and imports of the tools it launches, which two workers overlap.
# --dist loadscope keeps each test file on one worker, so a file's shared fixture runs once.
TEST_WORKERS ?= 2
test: $(STAMP) browser dicom-tools
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope tests

# Headless Debian chromium for tests/test_report_browser.py (slow-marked: test-fast does not need it).
# Installed with apt-get when missing, which needs root; otherwise a clear error.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends chromium; \
	  else echo "make browser: chromium is missing and installing it needs root: sudo apt-get install -y --no-install-recommends chromium" >&2; exit 1; fi; }

# Debian's dicom3tools (dciodvfy validates the DICOM outputs) and Orthanc (the PACS of the node's
# round-trip test), installed with apt-get when missing, which needs root; otherwise a clear error.
dicom-tools:
	@command -v dciodvfy >/dev/null 2>&1 && command -v Orthanc >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends dicom3tools orthanc; \
	  else echo "make dicom-tools: dciodvfy or Orthanc is missing and installing them needs root: sudo apt-get install -y --no-install-recommends dicom3tools orthanc" >&2; exit 1; fi; }

# Everything but the tests marked slow (multi-process, end-to-end, full-size models): under a minute.
test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not slow" tests

# Every bench runs even when one misses; the misses (exit code, `target: … MISS` lines, last line) are
# listed at the end, and make fails if there was any. BENCHES=… runs a subset.
BENCHES ?= $(wildcard bench/*_bench.py)
bench: $(STAMP)
	@logs=$$(mktemp -d); missed=""; \
	for b in $(BENCHES); do \
	  echo "== $$b"; log="$$logs/$$(basename $$b)"; \
	  { $(PYTHON) $$b 2>&1; echo $$? > "$$log.rc"; } | tee "$$log"; \
	  [ "$$(cat "$$log.rc")" = 0 ] || missed="$$missed $$b"; \
	done; \
	for b in $$missed; do \
	  log="$$logs/$$(basename $$b)"; \
	  echo "MISSED $$b (exit $$(cat "$$log.rc")): $$(tail -n 1 "$$log")"; \
	  grep ' MISS$$' "$$log" | sed 's/^/    /'; \
	done; \
	rm -rf "$$logs"; \
	if [ -n "$$missed" ]; then echo "$$(echo $$missed | wc -w) bench(es) missed"; exit 1; fi; \
	echo "every bench met its targets"

clean:
	rm -rf demo_output .pytest_cache
