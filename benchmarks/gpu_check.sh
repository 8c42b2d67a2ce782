#!/usr/bin/env bash
# Issue 28's GPU check: one blind run on one GPU (≤ 8 minutes on an H100), the embedded model (smollm2) and
# the bundled data only, no network. Every part has its own time limit and records pass / FAIL / skipped in
# the table; nothing optional (liger-kernel, peft, TRL) makes the script fail, and it always exits 0 after
# writing the table (the table says what failed).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine: writes benchmarks/results/gpu_check.md
#   bash benchmarks/gpu_check.sh --dry-run       # the same parts on the CPU at toy sizes (checks the script)
#   bash benchmarks/gpu_check.sh --out FILE      # the table elsewhere
#
# Parts: the device; the fused LM head against full logits on the device; bf16 DPO and ε-DPO steps against
# TRL (bf16 autocast on both sides; + TRL with liger-kernel when it is installed) with model FLOP/s against
# the measured bf16 matmul peak (bench_dpo.py --bf16); FSDP2 over NCCL with one process; LoRA DPO through the
# CLI; a generation throughput line; the engine's exactness tests.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=benchmarks/results/gpu_check.md
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (expected --dry-run, --out FILE)"; exit 2 ;;
  esac
  shift
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tether-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$OUT")"
ROWS="$WORK/rows.md"
: >"$ROWS"
START=$(date +%s)
N=0

if [ "$DRY" = 1 ]; then  # toy sizes on the CPU
  STEPS=(--steps 2 --warmup 1 --pairs 4 --batch-size 2 --max-length 128)
  LORA_STEPS=2; LORA=(train.batch_size=1 data.max_length=64 data.eval=null); GEN=(--prompts 4 --new 8); T_STEPS=900; T_SHORT=600
else
  STEPS=(--steps 16 --warmup 4 --pairs 64 --batch-size 8 --max-length 1024)
  LORA_STEPS=20; LORA=(); GEN=(--prompts 64 --new 128); T_STEPS=240; T_SHORT=75
fi

# part NAME LIMIT_S CMD...: runs CMD under a time limit, its output in $WORK/NAME.log; the table rows
# gpu_checks.py prints go to the table, then one row with the part's status and time.
part() {
  local name=$1 limit=$2; shift 2
  local t0 rc log
  t0=$(date +%s)
  N=$((N + 1))
  log="$WORK/part$N.log"
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  local sec=$(( $(date +%s) - t0 )) status=pass
  [ $rc -ne 0 ] && status="FAIL (exit $rc$([ $rc -eq 124 ] && echo ', time limit'))"
  if [[ "$*" == *gpu_checks.py* ]]; then  # its own table rows
    grep '^| ' "$log" >>"$ROWS"
  fi
  echo "| $name | $status | ${sec} s |" >>"$ROWS"
  if [ $rc -ne 0 ]; then
    echo "   $status; last lines:"; tail -n 15 "$log" | sed 's/^/   /'
    { echo; echo "<details><summary>$name: last lines of its output</summary>"; echo; echo '```'
      tail -n 40 "$log"; echo '```'; echo "</details>"; } >>"$WORK/failures.md"
  fi
  return 0
}
skip() { echo "| $1 | skipped | $2 |" >>"$ROWS"; echo "== $1: skipped ($2)"; }

DEVICE=$("$PY" benchmarks/gpu_checks.py env 2>/dev/null || echo "device: unknown (python or torch failed)")
echo "$DEVICE"
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "note: no CUDA device; running the CPU dry run instead (--dry-run)"
  exec bash "$REPO/benchmarks/gpu_check.sh" --dry-run --out "$OUT"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

part "fused LM head" "$T_SHORT" "$PY" benchmarks/gpu_checks.py head

CONFIGS=(trl tether-precomputed tether-eps)
if "$PY" -c "import liger_kernel" 2>/dev/null; then
  CONFIGS+=(trl-liger)
else
  skip "TRL + liger-kernel" "liger_kernel is not installed (pip install liger-kernel to add this line)"
fi
if "$PY" -c "import trl" 2>/dev/null; then
  part "DPO / ε-DPO steps vs TRL (bf16)" "$T_STEPS" "$PY" benchmarks/bench_dpo.py --bf16 "${STEPS[@]}" \
    --shapes synthetic --configs "${CONFIGS[@]}" --workdir "$WORK/steps" --out "$WORK/steps.json"
  [ -f "$WORK/steps.json" ] && cp "$WORK/steps.json" "${OUT%.md}-steps.json"
else
  skip "DPO / ε-DPO steps vs TRL (bf16)" "trl is not installed"
fi

part "FSDP2, one process" "$T_SHORT" "$PY" benchmarks/gpu_checks.py fsdp

if "$PY" -c "import peft" 2>/dev/null; then
  part "LoRA DPO (tether train examples/lora_dpo.yaml, bf16 autocast, $LORA_STEPS steps)" "$T_SHORT" \
    "$PY" -m tether train examples/lora_dpo.yaml "train.output_dir=$WORK/lora" "train.max_steps=$LORA_STEPS" \
    train.save_merged=false train.mixed_precision=bf16 train.progress=false "reference.cache_dir=$WORK/cache" \
    ${LORA[@]+"${LORA[@]}"}
else
  skip "LoRA DPO" "peft is not installed"
fi

part "generation throughput" "$T_SHORT" "$PY" benchmarks/gpu_checks.py generate "${GEN[@]}"

if "$PY" -c "import pytest" 2>/dev/null; then
  part "exactness tests (logprobs, segments, invariance)" "$T_SHORT" "$PY" -m pytest -q -p no:cacheprovider \
    -m "not slow" tests/test_logprobs.py tests/test_segments.py tests/test_invariance.py
else
  skip "exactness tests" "pytest is not installed"
fi

TOTAL=$(( $(date +%s) - START ))
{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ)$([ "$DRY" = 1 ] && echo ', CPU dry run: toy sizes, not a measurement'))"
  echo
  echo "$DEVICE; total ${TOTAL} s; command: \`bash benchmarks/gpu_check.sh$([ "$DRY" = 1 ] && echo ' --dry-run')\`"
  echo
  echo "| part | result | detail |"
  echo "|---|---|---|"
  cat "$ROWS"
  if [ -f "$WORK/steps.json" ]; then
    echo
    echo "## DPO / ε-DPO steps vs TRL (bench_dpo.py --bf16 ${STEPS[*]} --shapes synthetic)"
    echo
    "$PY" benchmarks/bench_dpo.py --table "$WORK/steps.json" 2>/dev/null || echo "(table failed)"
  fi
  [ -f "$WORK/failures.md" ] && cat "$WORK/failures.md"
} >"$OUT"
echo
cat "$OUT"
echo
echo "written: $OUT (${TOTAL} s)"
exit 0
