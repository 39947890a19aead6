#!/usr/bin/env bash
# Next device session, call 1 (2×H200, ≤6 min): the sixth session's review fixes that no GPU has run yet — weight
# pieces scattered through torch's memory then copied into peer memory, the publish barrier on rank 0's device, the
# exchange kernels' test-build at node time, start_call waiting for queued copies.
# Predictions (written before the run): sharded under dynamic VRAM ≈133 ms at 1024² (call 5: 133.5), both GPUs
# 12.5–12.6 GiB; a killed helper with sharded pieces: the prompt finishes on one GPU and the next is parallel
# (symmetric exchange, pulled pieces) again; no hang.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-sharded-dynamic 150 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --dynamic-vram --shard-weights both
probe kill-sharded 120 -- comfy_xdit_patch.evidence kill --steps 12 --shard-weights
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|HUNG\|=== exit\|ERROR\|WARNING Enable\|released\|aborted\|Traceback\|Error" "$f" | tail -16; done
