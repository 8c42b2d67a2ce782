#!/usr/bin/env bash
# The papers' protocol on the embedded model, end to end (README, "On-policy pairs, a reward model, paired
# comparisons"): on-policy pairs sampled from the SFT'd model and judged by the task checker, DPO trained
# on them, the two runs compared prompt by prompt; then a reward model trained on the bundled pairs and
# used as the judge. Each step's wall time is printed (and the whole in runs/protocol_demo.times).
# Starts from the main job (bash scripts/demo.sh), which it trains first if runs/main_job is missing; a
# step whose output exists is skipped (rerun after a failure continues).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
sft=runs/main_job
times=runs/protocol_demo.times
mkdir -p runs && touch "$times"
step() {  # step NAME COMMAND...: run it, print and record its wall time
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $*"
  "$@"
  echo "$name: $((SECONDS - t0)) s" | tee -a "$times"
}
[[ -d $sft/final ]] || bash scripts/demo.sh
[[ -f runs/onpolicy/pairs.jsonl ]] || step "1 on-policy pairs" tether pairs "$sft" --prompts data/tasks/sft.train.jsonl --judge tasks \
  --samples 4 --max-new-tokens 16 --batch-size 32 --out runs/onpolicy/pairs.jsonl
[[ -d runs/onpolicy_dpo/final ]] || step "2 DPO on them" tether train examples/dpo.yaml model.name="$sft/final" \
  data.train=runs/onpolicy/pairs.jsonl train.output_dir=runs/onpolicy_dpo train.overwrite=true
for run in "$sft" runs/onpolicy_dpo; do  # the same held-out prompts and settings for both (the SFT run
  # was trained at max_length 128, DPO at 256: the evaluation's own cap is set for both)
  step "3 eval $run" tether eval "$run" --data data/tasks/sft.heldout.jsonl --metrics generation \
    --max-new-tokens 16 --max-length 256
done
step "4 compare" tether compare "$sft" runs/onpolicy_dpo
[[ -d runs/reward/final ]] || step "5 reward model" tether train examples/reward.yaml train.overwrite=true
step "6 its accuracy" tether eval runs/reward --data data/tasks/pairs.heldout.jsonl
step "7 judged by it" tether eval runs/onpolicy_dpo --data data/tasks/pairs.heldout.jsonl --metrics generation \
  --max-new-tokens 16 --judge runs/reward --out runs/onpolicy_dpo/eval_judged.json
cat "$times"
