#!/usr/bin/env bash
# Sixth session, call 6 (2×H200, ≤4 min): the symmetric exchange as one kernel per direction for all members and
# q, k, v (4 Triton launches a block instead of 10), eager and graphed, against NCCL's exchange in the same process.
# Predictions (written before the run): graphed ≈101–103 ms at 1024² (102.4 with a kernel per destination and the
# local part on a side stream); eager, the symmetric exchange ≥5 ms faster than NCCL's (6 fewer launches a block at
# ≈20 µs of host time each, ≈7 ms a step where the host sets the pace).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-fused 200 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 --parallelism ulysses \
    --exchange symmetric,nccl --cuda-graphs both
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|HUNG\|=== exit\|ERROR\|WARNING Enable\|Traceback\|Error" "$f" | tail -14; done
