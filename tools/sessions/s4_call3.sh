#!/usr/bin/env bash
# Next device session, call 3 (2×H200, ~9 min): issue 4's fp8 error (fp8 weights with fp8 vs bf16 matmuls, which
# separates the activation quantization's share), then issue 3's compile criterion: ComfyUI's TorchCompileModel
# (inductor) on both sides, 1 GPU vs 2 GPUs (the helpers compile with rank 0's settings), graphs on.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe formats 150 -- comfy_xdit_patch.evidence formats
probe bench-compile 400 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 12 --warmup 4 --parallelism ulysses \
    --torch-compile inductor --cuda-graphs both
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|HUNG\|=== exit\|ERROR\|Traceback\|cannot be captured" "$f" | tail -20; done
