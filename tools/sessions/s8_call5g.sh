#!/usr/bin/env bash
# Eighth session, call 5 (ONE H200, ≤5 min): tools/ce_exchange_probe.py --same-gpu — both ranks on GPU 0 (over gloo),
# to check the copy-engine exchange's 2-D copies, their capture into a CUDA graph next to the product's barrier, and
# its output against the product's exchange before the next 2-GPU session times it (tools/sessions/s9_call2.sh).
# Prediction (written before the run): every ce-P row bit-equal to the product (eager and graphed); the times mean
# nothing (two processes time-share one GPU).
source tools/gpu_env.sh || exit 1
( timeout 300 python3 tools/ce_exchange_probe.py --same-gpu --res 1024,2048 --blocks 2 --replays 3 --parts 1,2,3 \
    >"$OUT/ce-same-gpu.log" 2>&1; echo "=== exit $?" >>"$OUT/ce-same-gpu.log" )
tail -30 "$OUT/ce-same-gpu.log"
