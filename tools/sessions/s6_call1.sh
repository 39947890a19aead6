#!/usr/bin/env bash
# Next device session, call 1 (2×H200, ≤9 min): issue 4's last run — dynamic VRAM with a strength change between
# two prompts on the same helpers (prediction: both errors ≈5e-3–8e-3, weight syncs 1 -> 2) — and issue 8 under
# dynamic VRAM (rank 0 at its share with sharded weights: ComfyUI streams weights on use and never loads the blocks
# whole; prediction ≈12–14 GiB on both ranks at 1024²).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe dynamic 150 -- comfy_xdit_patch.evidence dynamic
probe bench-dynamic 330 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --parallelism ulysses --dynamic-vram --shard-weights both
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|HUNG\|=== exit\|ERROR\|Traceback\|Error" "$f" | tail -14; done
