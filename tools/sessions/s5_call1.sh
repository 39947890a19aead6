#!/usr/bin/env bash
# Next device session, call 1 (2×H200, ~6 min; the dynamic-VRAM evidence moved to s5_call0.sh): dynamic VRAM — ComfyUI's default on NVIDIA — which no GPU run has
# yet measured correctly (session 4's run made its weights on the GPU; the harness now loads them from host memory):
# weight patches against 1 GPU (issue 4), the default user's speed (steps run eagerly under dynamic VRAM), and
# shard_weights, where rank 0 should stay at its share because ComfyUI never loads the blocks whole (issue 8).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-dynamic 330 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --parallelism ulysses --dynamic-vram --shard-weights both
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|HUNG\|=== exit\|ERROR\|dynamic VRAM\|shard_weights\|Traceback\|Error" "$f" | tail -14; done
