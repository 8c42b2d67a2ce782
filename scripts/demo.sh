#!/usr/bin/env bash
# The main job: install, then a short ε-DPO run on the embedded SmolLM2-135M-Instruct with the bundled
# pairs, `tether eval` against the starting model on held-out tasks, and `tether report`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh eval
export HF_HUB_OFFLINE=1
tether train examples/quickstart.yaml "$@"
tether eval runs/quickstart --data data/tasks/sft.heldout.jsonl --max-samples 24 --max-new-tokens 16
tether report runs/quickstart --out runs/quickstart/report
