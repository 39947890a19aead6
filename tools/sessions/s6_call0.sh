#!/usr/bin/env bash
# Next device session, call 0 (2×H200, ~5 min): re-check the symmetric exchange as shipped after the fifth session's
# review — the barrier's abort flag now in pinned host memory (the probe's lone-barrier release, the product's kill),
# the one-group rule (after the kill the next prompt must run parallel again, on NCCL's exchange, with a warning),
# and the speed unchanged (prediction ≈104 ms at 1024², ≈535 ms at 2048²). The probe also times a candidate: the
# local part of each exchange on a side stream beside the remote ones (prediction −20 to −35 µs a block at 1024²).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
timeout -s KILL 150 python3 tools/symm_exchange_probe.py --res 1024 --only floor,nccl,product,nccl-only,product-only,product-overlap,product-overlap-only \
    >"$OUT/symm-probe.log" 2>&1; echo "=== exit $?" >>"$OUT/symm-probe.log"
probe kill-symmetric 150 COMFY_XDIT_EXCHANGE=symmetric -- comfy_xdit_patch.evidence kill --steps 12
probe bench-symmetric 200 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --parallelism ulysses --exchange symmetric
grep "^|\|release\|exit" "$OUT/symm-probe.log" | tail -12
for f in "$OUT"/kill-symmetric.log "$OUT"/bench-symmetric.log; do echo "=== $f"
  grep "^|\|HUNG\|=== exit\|ERROR\|WARNING Enable\|released\|aborted\|Traceback\|Error" "$f" | tail -16; done
