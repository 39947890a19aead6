#!/usr/bin/env bash
# Session 3, device call 2 (2×H200): issue 3 (CUDA-graph replay without NCCL buffer registration, eager vs graphs,
# GPU busy time), issue 6 (drop-in VAE/CLIP on gpu:1), issue 4 (formats, dynamic VRAM). Logs go to $OUT.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-graphs 250 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 --repeat 3 \
    --parallelism ulysses --cuda-graphs both --graph-baseline --gpu-busy
probe devices 90 -- comfy_xdit_patch.evidence devices
probe formats 130 -- comfy_xdit_patch.evidence formats
probe dynamic 100 -- comfy_xdit_patch.evidence dynamic
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|^rank 0\|^end-to-end\|HUNG\|=== exit\|Error\|error" "$f" | tail -22; done
