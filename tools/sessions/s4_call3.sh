#!/usr/bin/env bash
# Next device session, call 3 (2×H200, ~8 min): issue 3's compile criterion: ComfyUI's TorchCompileModel (inductor)
# on both sides, 1 GPU vs 2 GPUs (the helpers compile with rank 0's settings), graphs on.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-compile 480 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 12 --warmup 4 --parallelism ulysses \
    --torch-compile inductor --cuda-graphs both
grep "^|\|HUNG\|=== exit\|ERROR\|Traceback\|graph break\|cannot be captured" "$OUT/bench-compile.log" | tail -24
