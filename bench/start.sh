# Sourced by the training benches (bench/ablation.sh, bench/workflow.sh) after `set -euo pipefail`:
# run from the repository root with $PYTHON (default .venv/bin/python), print the provenance line
# first, and set FAIL=0 when BENCH_NO_FAIL is set or the bench's first argument is --no_fail
# (a miss then reports without exit 1).
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" bench/provenance.py  # commit, UTC time, CPU, cores, load, versions: what produced the numbers below
FAIL=1
case ${BENCH_NO_FAIL:-0} in ""|0) ;; *) FAIL=0 ;; esac
if [ "${1:-}" = "--no_fail" ]; then FAIL=0; fi  # not `[ … ] && FAIL=0`: a false last test would fail `source` under set -e
