#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite. Extra arguments go to pytest.
#   bash scripts/test.sh              # everything, slow multi-process tests included
#   bash scripts/test.sh -k riemann   # a subset
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
# No test may reach a hub: everything is built locally from configs.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${VENV:-$root/.venv}/bin/python" -m pytest "$@"
