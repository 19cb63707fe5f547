#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite. Extra arguments go to pytest.
#   bash scripts/test.sh              # everything, slow multi-process tests included
#   bash scripts/test.sh -k riemann   # a subset
#   bash scripts/test.sh -k riemann -s   # a subset, printing what the tests print (one process)
# TEST_WORKERS=N sets the number of pytest-xdist workers (0: run in this process).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
# No test may reach a hub: everything is built locally from configs.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Two workers by default (CI has 2 cores): much of a test's time is waiting for its subprocesses
# (launchers, servers, 2-rank runs), so one worker alone leaves a core idle. Each worker runs
# torch on one thread, as a launched rank does (two threads each would oversubscribe the cores).
# A file's tests stay on one worker (--dist loadfile: its module fixtures are made once; loadgroup's
# xdist_group marks do not reach pytest 9's node ids in xdist 3.8, so they would not);
# tests/conftest.py orders the files (the most slow tests first).
# -s and --pdb need the terminal, which workers do not have: with them, one process.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
workers="${TEST_WORKERS:-2}"
for arg in "$@"; do
  case "$arg" in -s|--capture=no|--pdb|--trace) workers="${TEST_WORKERS:-0}" ;; esac
done
exec "${VENV:-$root/.venv}/bin/python" -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
