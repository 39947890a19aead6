#!/usr/bin/env bash
# Session 5, call 2 (2×H200, ~9 min): the symmetric-memory Ulysses exchange (parallel/symmetric.py,
# COMFY_XDIT_EXCHANGE=symmetric). Prediction from call 1a's figures: the block's exchange falls from ≈287 µs (pack,
# NCCL all-to-all, unpack) to ≈110–130 µs (one pass each way at ≈300 GB/s over the link, two barriers), i.e. −9 to
# −10 ms a step at 1024² (112 → ≈102 ms, ≈1.75×) and −25 to −30 ms at 2048² (567 → ≈540 ms, ≈1.89×); error
# unchanged (the same elements move). The probe checks it bit-exact against NCCL's and frees a stuck barrier.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
timeout -s KILL 150 python3 tools/symm_exchange_probe.py --res 1024,2048 --only floor,nccl,product,nccl-only,product-only \
    >"$OUT/symm-probe3.log" 2>&1; echo "=== exit $?" >>"$OUT/symm-probe3.log"
probe bench-exchange 370 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --parallelism ulysses --exchange nccl,symmetric --e2e-steps 28
grep -v "^\s*$\|FutureWarning\|enable_symm_mem_for_group(\|bandwidth" "$OUT/symm-probe3.log" | tail -30
for f in "$OUT"/bench-exchange.log; do echo "=== $f"; grep "^|\|^end-to-end\|HUNG\|=== exit\|ERROR\|Traceback\|Error\|symmetric" "$f" | tail -24; done
