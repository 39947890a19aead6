#!/usr/bin/env bash
# Next 2-GPU session, call 2 (2×H200, ≤8 min; written in the eighth session): does the copy engine hide a block's
# exchange behind the attention? tools/ce_exchange_probe.py times the package's parallel/copy_engine.py per block
# (checked for output and capture on one GPU in the eighth session, calls 5–6), then the bench times whole steps. The fifth session's probe: floor 231–235 / 2792–2842 µs a block, the product's exchange with the
# attention 354 / 3244 µs (1024² / 2048²).
# Predictions (written before the run): ce-1 (copies, no overlap) ≈300–320 / ≈3150; ce-2 ≈290–310 / ≈3000–3050;
# ce-3 worse at 1024² (its attention alone costs +51% on one GPU, eighth session call 9), ≈2950–3050 at 2048²;
# every ce row bit-equal to the symmetric exchange. A 2048² gain of
# ≥200 µs a block (≈11 ms a step, 534 → ≈523 ms) would make it worth the default. Steps (bench, same errors as
# symmetric): 1024² ≈98–100 ms with 2 parts (101.4 symmetric), 2048² ≈518–525 ms (534.1).
source tools/gpu_env.sh || exit 1
( timeout 220 python3 tools/ce_exchange_probe.py --res 1024,2048 --parts 1,2,3 >"$OUT/ce-exchange.log" 2>&1
  echo "=== exit $?" >>"$OUT/ce-exchange.log" )
tail -24 "$OUT/ce-exchange.log"
source tools/hang_probe.sh
probe bench-copy-engine 260 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --exchange symmetric,copy-engine:1,copy-engine:2,copy-engine:3
grep "^|\|HUNG\|=== exit\|ERROR\|Traceback\|Error" "$OUT/bench-copy-engine.log" | tail -16
