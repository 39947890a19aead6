#!/usr/bin/env bash
# Session 5, call 4 (2×H200, ~6 min; call 3 found the next group's rendezvous hung on reused group names, fixed): the symmetric exchange through the failure path (a helper SIGKILLed mid-prompt
# under CUDA graphs: abort() must free rank 0's barrier, the image must still come from one GPU), and issue 8's
# sharded weights with it: the blocks' gathers keep NCCL to themselves now that the attention exchange left it, so
# the +26% at 1024² should mostly go (prediction: sharded ≈ replicated + 3–6%).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe kill-symmetric 110 COMFY_XDIT_EXCHANGE=symmetric -- comfy_xdit_patch.evidence kill --steps 12
probe bench-shard-symmetric 260 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --parallelism ulysses --exchange symmetric --shard-weights both
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|^end-to-end\|HUNG\|=== exit\|ERROR\|abort\|released\|Traceback\|Error" "$f" | tail -16; done
