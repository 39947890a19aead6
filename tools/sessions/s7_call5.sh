#!/usr/bin/env bash
# Seventh session, call 5 (2×H200, ≤4 min): a helper killed mid-prompt while rank 0 replays step graphs under
# dynamic VRAM with its weights' range pinned (new in call 4).
# Prediction (written before the run): barriers released, the prompt finishes on one GPU (error ≈5e-3), the pinned
# range is unpinned, and the next prompt is parallel and graphed again (≈102 ms).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe kill-dynamic 200 -- comfy_xdit_patch.evidence kill --steps 12 --dynamic-vram
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|HUNG\|=== exit\|ERROR\|WARNING\|Traceback\|Error\|released\|aborted\|captured" "$f" | tail -20; done
