#!/usr/bin/env bash
# Next 2-GPU session, call 3 (2×H200, ≤5 min; written in the eighth session): where the graphed 1024² step's time
# goes between the kernels. Both ranks trace their host's CUDA calls and their GPU (COMFY_XDIT_TRACE_DIR; the format
# checked on one GPU in the eighth session, call 7), then tools/trace_lag.py pairs their steps on the machine's clock.
# Predictions (written before the run; the eighth session's model): rank 0's host time between steps ≈5–6 ms (ComfyUI
# ≈3.6 + ours ≈1.7, including the bench's mark); launch to first kernel ≤0.1 ms on both; the helper launches
# ≈0.1–0.3 ms after rank 0 and its first kernel follows rank 0's by ≈0.1–1 ms (rank 0's longest barrier wait a step
# was ≈1.0 ms in the seventh session).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-traced 240 COMFY_XDIT_TRACE_DIR="$OUT" COMFY_XDIT_PROFILE_HELPER=5,4 -- comfy_xdit_patch.bench --gpus 2 \
    --res 1024 --steps 10 --warmup 3 --gpu-busy
python3 tools/trace_lag.py "$OUT" 2>&1 | tee "$OUT/trace-lag.log"
grep "^|\|busy\|HUNG\|=== exit\|Traceback\|Error" "$OUT/bench-traced.log" | tail -12
