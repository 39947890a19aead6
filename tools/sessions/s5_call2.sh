#!/usr/bin/env bash
# Next device session, call 2 (2×H200, ~8 min): issue 8's speed cost with the blocks' gathers on a communicator of
# their own (COMFY_XDIT_SHARD_GATHERS=own, opt-in) against the shared one, then the failure path with two stuck
# communicators (the case that hung in session 3), and issue 3's warm 28-step prompt at 1024² (graphs kept across
# prompts since session 3; session 4 timed it at 768² only).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-gathers 260 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --parallelism ulysses --shard-weights on --shard-gathers shared,own
probe kill-own-gathers 110 COMFY_XDIT_SHARD_GATHERS=own -- comfy_xdit_patch.evidence kill --steps 12 --shard-weights
probe e2e-1024 150 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 --parallelism ulysses,ring \
    --e2e-steps 28
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|^end-to-end\|HUNG\|=== exit\|ERROR\|aborted\|Traceback" "$f" | tail -14; done
