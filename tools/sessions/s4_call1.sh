#!/usr/bin/env bash
# Next device session, call 1 (2×H200, ~8 min): issue 3 (768² / 1024² / 2048² with graphs, head chunks 1 vs 2,
# against ComfyUI's graphed step) and issue 8 (shard_weights: speed cost, memory per GPU). Logs go to $OUT.
# (As run in session 4. --ulysses-chunks was removed afterwards: head chunks paid nowhere, docs/benchmarks.md.)
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-speed 330 -- comfy_xdit_patch.bench --gpus 2 --res 768,1024,2048 --steps 10 --warmup 3 --repeat 3 \
    --parallelism ulysses,ring --ulysses-chunks 1,2 --graph-baseline --e2e-steps 28
probe bench-sharded 200 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --parallelism ulysses --shard-weights both
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|^end-to-end\|HUNG\|=== exit\|ERROR\|Traceback" "$f" | tail -24; done
