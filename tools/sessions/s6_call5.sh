#!/usr/bin/env bash
# Sixth session, call 5 (2×H200, ≤5 min): sharded weights under dynamic VRAM (ComfyUI's default on NVIDIA) against
# replicated weights in the same process, with the default exchange (auto: symmetric) and pulls started with the
# running block again (4e90aa1). Predictions (written before the run): replicated ≈115 ms a 1024² step (eager), sharded
# ≈119 ms (+3%); warm 28-step prompts ≈3.35 s and ≈3.45 s (no reload: dynamic VRAM streams weights on use).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-dynamic-sharded 290 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --dynamic-vram --shard-weights both --e2e-steps 28
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|end-to-end\|HUNG\|=== exit\|ERROR\|WARNING Enable\|Traceback\|Error" "$f" | tail -14; done
