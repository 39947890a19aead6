#!/usr/bin/env bash
# Seventh session, call 1 (2×H200, ≤10 min): where the graphed step's time goes; the symmetric exchange's head parts
# pipelined against the attention (COMFY_XDIT_EXCHANGE_CHUNKS, new); TorchCompileModel after the fix of call 0's
# 0.44× (rank 0's dispatch was traced and recompiled at every step).
# Predictions (written before the run):
#  - rank 0's kernel families at 1024², 2 GPUs, one part: GEMMs ≈60 ms, attention ≈13–14 ms, exchange ≈3 ms,
#    barriers ≈2–5 ms (waiting for the peer), busy ≥95% of the span;
#  - 2 head parts at 1024²: 101 → 97–99 ms (1.77–1.80×), error unchanged (5.47e-3); 3 parts no better than 2
#    (the attention of 4 heads leaves most SMs idle in its last wave);
#  - 2048², 2 parts: 534 → ≈515–520 ms (1.94–1.96×): the attention (≈2.8 ms a block) hides nearly all of the exchange;
#  - a warm 28-step prompt spends ≈150–180 ms outside its steps with helpers against ≈40 ms on one GPU (the host
#    profile says where);
#  - TorchCompileModel (inductor) on both sides: ≈95–100 ms against ≈157 (≥1.6×), as the fourth session's 99.9 ms.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-chunks-1024 240 COMFY_XDIT_HOST_PROFILE=1 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 \
    --warmup 3 --exchange-chunks 1,2,3 --gpu-busy --e2e-steps 28
probe bench-chunks-2048 150 -- comfy_xdit_patch.bench --gpus 2 --res 2048 --steps 8 --warmup 3 --exchange-chunks 1,2
probe bench-compile 200 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 --torch-compile inductor
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|end-to-end\|rank 0's GPU\|HUNG\|=== exit\|ERROR\|WARNING Enable\|Traceback\|Error\|recompile_limit" "$f" | tail -16; done
