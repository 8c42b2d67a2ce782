#!/usr/bin/env bash
# The test suite: install with the test extras (TRL 1.16 as the numerical oracle), lint, run the tests.
#   bash scripts/test.sh          every test (CI: .ci/run), the 20 slowest listed at the end
#   bash scripts/test.sh --fast   the fast tier: the tests not marked slow (under 3 minutes on 2 cores)
# Further arguments go to pytest, e.g. bash scripts/test.sh --fast tests/test_losses.py
set -euo pipefail
cd "$(dirname "$0")/.."
marker=""  # every test
if [[ "${1:-}" == "--fast" ]]; then
  shift
  marker="not slow"
fi
bash scripts/install.sh test
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check src tests benchmarks
ruff format --check src tests benchmarks
python -m pytest -q -p no:cacheprovider --durations=20 -m "$marker" "$@"
