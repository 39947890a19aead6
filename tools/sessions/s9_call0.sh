#!/usr/bin/env bash
# Next 2-GPU session, call 0 (2×H200, ≤6 min; written in the seventh session as s8_call0, whose 2-GPU machine was
# withdrawn; the eighth session was lent one GPU only, so it is still unrun):
# sharded weights under dynamic VRAM replayed as step graphs (the blocks left out of the residency check: their
# weights come from our gather buffers), and a helper killed while rank 0 replays graphs under dynamic VRAM.
# Predictions (written before the run): replicated ≈102 ms graphed; sharded graphed ≈104–108 ms (within 10% of
# replicated, issue 8's goal; 116.0 eager in call 2), both at 12.5–12.6 GiB sharded, error 5.47e-3; the kill: prompt
# finished on one GPU, the next prompt graphed again.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-sharded-dynamic-graphs 170 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --dynamic-vram --shard-weights both
probe kill-dynamic 170 -- comfy_xdit_patch.evidence kill --steps 12 --dynamic-vram
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|HUNG\|=== exit\|ERROR\|WARNING\|Traceback\|Error\|released\|aborted\|captured\|cannot be captured" "$f" | tail -20; done
