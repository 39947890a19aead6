#!/usr/bin/env bash
# Eighth session, call 6 (ONE H200, ≤4 min): the copy-engine exchange built into the package
# (parallel/copy_engine.py, opt-in COMFY_XDIT_EXCHANGE=copy-engine), checked the way call 5 checked the probe's own
# version: tools/ce_exchange_probe.py --same-gpu, both ranks on GPU 0 over gloo.
# Prediction (written before the run): every ce-P row bit-equal to the symmetric exchange, eager and graphed (the
# package version makes v head-major first: the same values); the times mean nothing.
source tools/gpu_env.sh || exit 1
( timeout 300 python3 tools/ce_exchange_probe.py --same-gpu --res 1024,2048 --blocks 2 --replays 3 --parts 1,2,3 \
    >"$OUT/ce-same-gpu.log" 2>&1; echo "=== exit $?" >>"$OUT/ce-same-gpu.log" )
tail -30 "$OUT/ce-same-gpu.log"
