#!/usr/bin/env bash
# The test suite: install with the test extras (TRL 1.16 as the numerical oracle), lint, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check src tests benchmarks
ruff format --check src tests benchmarks
python -m pytest -q -p no:cacheprovider "$@"
