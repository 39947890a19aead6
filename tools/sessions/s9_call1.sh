#!/usr/bin/env bash
# Next 2-GPU session, call 1 (2×H200, ≤8 min; written in the eighth session, lent one GPU only): sharded weights with
# CLASSIC loading, now that ComfyUI's copy of the blocks leaves rank 0's GPU once and stays off
# (runtime/offloaded_blocks.py; on one H200: `evidence offload`, docs/runs/2026-12-01-s8-call1g-*).
# Predictions (written before the run): replicated ≈101–102 ms graphed; sharded now graphed too, 104–108 ms (within
# 10% of replicated, issue 8's goal; 122.7–127.4 eager before); the warm 28-step 1024² prompt sharded ≈3.0–3.3 s
# (21.5–22.5 s before, 2.98 s replicated); rank 0's peak in the warm prompts ≈12.6 GiB (33.9 before; the first prompt
# still holds the whole model until the blocks leave); error 5.47e-3. The kill: prompt finished on one GPU after
# the blocks came back ("blocks is back" in the log), the next prompt parallel and graphed again.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-sharded-classic 240 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --shard-weights both --e2e-steps 28
probe kill-sharded-classic 200 -- comfy_xdit_patch.evidence kill --steps 12 --shard-weights
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|end-to-end\|HUNG\|=== exit\|ERROR\|WARNING\|Traceback\|Error\|captured\|cannot be captured\|moved\|back on" "$f" | tail -20; done
