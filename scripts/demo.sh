#!/usr/bin/env bash
# The main job: install, then a short DPO run on the embedded SmolLM2-135M-Instruct with the bundled pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
tether train examples/quickstart.yaml "$@"
