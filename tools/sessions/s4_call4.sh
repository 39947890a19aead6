#!/usr/bin/env bash
# Device session 4, call 4 (2×H200, ~7 min): what frees rank 0 when a peer dies during a graph replay (the ring kill
# of call 2 hung in the graph's destructor) for all-to-all and point-to-point; shard_weights with the prefetch issued
# after the attention exchange (issue 8); fp8 error against the bf16-matmul reference and dynamic VRAM (issue 4).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
port=29610
for op in p2p a2a; do
  for order in clear-first abort-first abort-keep; do
    port=$((port + 1))
    echo "=== $op $order" >>"$OUT/graph-abort.log"
    timeout -s KILL 70 python3 tools/graph_abort_probe.py --op $op --order $order --limit 20 --port $port \
      >>"$OUT/graph-abort.log" 2>&1
    echo "=== exit $?" >>"$OUT/graph-abort.log"
    pkill -9 -f graph_abort_probe; sleep 1
  done
done
probe bench-sharded 150 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --parallelism ulysses --shard-weights both
probe formats 170 -- comfy_xdit_patch.evidence formats
probe dynamic 90 -- comfy_xdit_patch.evidence dynamic
grep -v "^  File\|^    \|^Thread\|^Current\|^$" "$OUT/graph-abort.log" | tail -60
for f in "$OUT"/bench-sharded.log "$OUT"/formats.log "$OUT"/dynamic.log; do echo "=== $f"; grep "^|\|HUNG\|=== exit\|ERROR\|dynamic VRAM\|shard_weights\|Traceback\|Error" "$f" | tail -14; done
