#!/usr/bin/env bash
# The GPU path, measured in one prepared run (issue: scale). On a CUDA machine:
#   1. the library tests (make test-fast's set) with FEDLIB_DEVICE=cuda;
#   2. step_cost.py (one prompt-tuning step against the frozen model's floor and PEFT);
#   3. batched_clients.py at m = 10 (goal: the batched clients >= 4x the sequential loop);
#   4. batched_clients.py under bf16 autocast, if the GPU offers bf16;
#   5. a short slice of the cpu-medium protocol (SST-2, seed 0: the majority floor, FedAvg and FedPepTAO).
# Without CUDA the same steps run on the CPU and the CUDA-only ones (4) say "skipped".
# Every figure is printed and kept in $OUT/gpu_check.txt (default runs/gpu_check): commit those numbers.
#   bash benchmarks/gpu_check.sh               # the full check (~5-8 min on an H100; ~15 min on 2 CPU cores)
#   QUICK=1 bash benchmarks/gpu_check.sh       # smallest sizes: that the script works (the test suite runs this)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
SUMMARY="$OUT/gpu_check.txt"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg CI=${CI:-1}
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
BF16=$("$PY" -c "import torch; print(int(torch.cuda.is_available() and torch.cuda.is_bf16_supported()))")
DEVICE=$([ "$CUDA" = 1 ] && echo cuda || echo cpu)
QUICK=${QUICK:-0}
FAILED=0

{
  echo "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) device $DEVICE quick $QUICK"
  "$PY" -c "import torch, platform; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine(), '| threads', torch.get_num_threads())"
} | tee "$SUMMARY"

step() {  # step <name> <command...>: run it, keep its last line (the figure) in the summary
  local name=$1
  shift
  local log="$OUT/$name.log" t0=$SECONDS
  echo "== $name: $*" >&2
  if "$@" >"$log" 2>&1; then
    echo "$name ($((SECONDS - t0)) s): $(grep -v '^[[:space:]]*$' "$log" | tail -n 1)" | tee -a "$SUMMARY"
  else
    FAILED=1
    echo "$name ($((SECONDS - t0)) s): FAILED, see $log" | tee -a "$SUMMARY"
    tail -n 20 "$log" >&2
  fi
}

PROTOCOL=benchmarks/protocols/cpu-medium.yaml
if [ "$QUICK" = 1 ]; then
  step tests env FEDLIB_DEVICE=$DEVICE "$PY" -m pytest tests/test_train.py -k same_seed -q -p no:cacheprovider
  step step_cost "$PY" benchmarks/step_cost.py --batch 2 --prompt-len 2 --reps 1 --mem-reps 1 --device "$DEVICE"
  BATCHED=(--clients 2 --per-client 4 --batch 2 --reps 1 --device "$DEVICE")
  PROTOCOL=benchmarks/protocols/smoke.yaml  # cpu-medium's rows at the smallest sizes
  SLICE=(--strategies majority_local,fedavg)
else
  step tests env FEDLIB_DEVICE=$DEVICE "$PY" -m pytest tests -m "not slow" -q -p no:cacheprovider
  step step_cost "$PY" benchmarks/step_cost.py --device "$DEVICE"
  BATCHED=(--clients 10 --device "$DEVICE")
  SLICE=(--strategies majority_local,fedavg,fedpeptao)  # with the floor, as every results table
fi
step batched_clients "$PY" benchmarks/batched_clients.py "${BATCHED[@]}"
grep -h "^  \|^device" "$OUT/batched_clients.log" | tee -a "$SUMMARY"
if [ "$BF16" = 1 ]; then
  step batched_clients_bf16 "$PY" benchmarks/batched_clients.py "${BATCHED[@]}" --autocast bf16
else
  echo "batched_clients_bf16: skipped (needs CUDA with bf16; this machine: $DEVICE)" | tee -a "$SUMMARY"
fi
rm -rf "$OUT/slice"
step protocol_slice "$PY" -m fedlib.protocol "$PROTOCOL" --out "$OUT/slice" \
  --device "$DEVICE" --tasks sst2 --seeds 0 "${SLICE[@]}"
grep -h "s$" "$OUT/protocol_slice.log" | grep -E "^sst2/" | tee -a "$SUMMARY"
"$PY" - "$OUT/slice/results.csv" <<'EOF' | tee -a "$SUMMARY"
import sys, pandas as pd
t = pd.read_csv(sys.argv[1])
cols = [c for c in ("strategy", "seed", "global_metric", "personal_metric", "seconds_per_round", "wall_seconds") if c in t]
print(t[cols].to_string(index=False))
EOF
echo "gpu_check done: $([ $FAILED = 0 ] && echo ok || echo 'with failures') (summary: $SUMMARY)" | tee -a "$SUMMARY"
exit $FAILED
