#!/usr/bin/env bash
# Eighth session, call 10 (ONE H200, ≤3 min): the package's copy-engine exchange after call 9 (making a single
# block's v head-major cost 67 µs a block at 2048²): token-major q, k, v now travel as rows of a token's heads into a
# token-major slot that the attention reads in place. The same check as call 6: tools/ce_exchange_probe.py
# --same-gpu (its v is token-major, its q and k head-major, so both paths run).
# Prediction (written before the run): every ce-P row bit-equal to the symmetric exchange, eager and graphed.
source tools/gpu_env.sh || exit 1
( timeout 300 python3 tools/ce_exchange_probe.py --same-gpu --res 1024,2048 --blocks 2 --replays 3 --parts 1,2,3 \
    >"$OUT/ce-same-gpu.log" 2>&1; echo "=== exit $?" >>"$OUT/ce-same-gpu.log" )
tail -30 "$OUT/ce-same-gpu.log"
