#!/usr/bin/env bash
# Session 5, call 5 (2×H200, ≤6 min): calls 3 and 4 found that a second group in one process could not map its
# symmetric memory (reused group names, then a name torch could not resolve); the exchange's groups are now gloo
# groups named past every earlier group of the process. The failure path with the next prompt's fresh helpers, and
# sharded vs replicated weights with the symmetric exchange at 1024² (two groups in one process again).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe kill-symmetric 110 COMFY_XDIT_EXCHANGE=symmetric -- comfy_xdit_patch.evidence kill --steps 12
probe bench-shard-symmetric 200 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --parallelism ulysses --exchange symmetric --shard-weights both
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|HUNG\|=== exit\|ERROR\|abort\|released\|Traceback\|Error" "$f" | tail -16; done
