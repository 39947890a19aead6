#!/usr/bin/env bash
# Seventh session, call 4 (2×H200, ≤6 min): step graphs under ComfyUI's dynamic VRAM (its default on NVIDIA), new:
# rank 0 checks before each capture and replay that its weights' vbar pages stayed resident
# (runtime/resident_weights.py), as ComfyUI's own block graphs do.
# Predictions (written before the run): `bench --dynamic-vram` at 1024² is graphed ("+graphs") and takes ≈101–105 ms
# (≈1.70×) against 113.7 eager in call 2, error 5.47e-3; `evidence dynamic` (8 weight patches, then strength 0.3):
# errors ≈7.0–7.6e-3 as in the sixth session, steps ≈103–106 ms against 115–117 eager.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-dynamic-graphs 170 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 --dynamic-vram \
    --e2e-steps 28
probe dynamic-graphs 170 -- comfy_xdit_patch.evidence dynamic
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|end-to-end\|HUNG\|=== exit\|ERROR\|WARNING Enable\|Traceback\|Error\|captured\|cannot be captured" "$f" | tail -16; done
