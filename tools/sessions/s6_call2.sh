#!/usr/bin/env bash
# Next device session, call 2 (2×H200, ≤9 min): issue 8's speed cost with the gathers on their own communicator
# (prediction ≈120 ms at 1024² against 140.7 shared) and its failure path with two stuck communicators; then the
# symmetric exchange with sharded weights, each in a process of its own (one symmetric group per process until the
# design-next fix is built; prediction: sharded ≈ replicated + 3–6% at 1024², since the attention then leaves NCCL
# to the gathers).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-gathers 200 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --parallelism ulysses --shard-weights on --shard-gathers shared,own
probe kill-own-gathers 110 COMFY_XDIT_SHARD_GATHERS=own -- comfy_xdit_patch.evidence kill --steps 12 --shard-weights
probe bench-symmetric-sharded 150 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --parallelism ulysses --exchange symmetric --shard-weights on
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|HUNG\|=== exit\|ERROR\|aborted\|Traceback\|Error" "$f" | tail -14; done
