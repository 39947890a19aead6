#!/usr/bin/env bash
# Sixth session, call 4 (2×H200, ≤9 min): pulled block copies started after the running block's attention, and the
# symmetric exchange as the default (COMFY_XDIT_EXCHANGE=auto) for 2-GPU Ulysses groups.
# Predictions (written before the run):
#  - sharded + symmetric: 1024² 127.4 -> ≈106–112 ms (replicated 102.4), 2048² ≈535–545 ms;
#    sharded + NCCL: 1024² 122.7 -> ≈115–118 ms;
#  - the README's main job with no options (auto: Ulysses 2, symmetric): ≈1.70× a 1024² step, a warm 28-step
#    prompt ≈3.05 s (≈1.63×);
#  - dynamic VRAM (eager steps): replicated ≈105–110 ms (NCCL measured 117–119), sharded ≈ +5%.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-sharded-after-attention 230 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --parallelism ulysses --exchange auto,nccl --shard-weights on
probe bench-default 130 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 --e2e-steps 28
probe bench-dynamic-default 150 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --dynamic-vram --shard-weights both
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|HUNG\|=== exit\|ERROR\|WARNING Enable\|Traceback\|Error" "$f" | tail -14; done
