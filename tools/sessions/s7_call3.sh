#!/usr/bin/env bash
# Seventh session, call 3 (2×H200, ≤7 min): issue 3's 768² floor with today's default (symmetric exchange, graphs),
# and call 2's kill with sharded weights given the time it needs (classic loading moves ComfyUI's 22 GiB copy off
# the GPU again in the next prompt, which outran call 2's 120 s probe).
# Predictions (written before the run): 768² ≈62–66 ms against ≈105 (≥1.6×), error ≈5.5e-3; the kill: prompt
# finished on one GPU, the next prompt parallel with sharded weights (≈125 ms, eager under classic loading).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-768 150 -- comfy_xdit_patch.bench --gpus 2 --res 768 --steps 10 --warmup 3 --e2e-steps 28
probe kill-sharded 330 -- comfy_xdit_patch.evidence kill --steps 12 --shard-weights
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|end-to-end\|HUNG\|=== exit\|ERROR\|WARNING Enable\|Traceback\|Error\|released\|aborted" "$f" | tail -16; done
