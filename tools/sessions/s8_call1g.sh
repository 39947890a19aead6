#!/usr/bin/env bash
# Eighth session, call 1 (ONE H200: the 2-GPU kinds were withheld all session; ≤7 min).
# 1. `evidence offload`: classic loading with shard_weights keeps ComfyUI's copy of the blocks off rank 0's GPU
#    (runtime/offloaded_blocks.py), checked on ComfyUI's real loader at FLUX.1-dev size, no helpers.
#    Predictions (written before the run): allocated ≈22.2 GiB after ComfyUI's load -> ≈0.3 GiB after the offload,
#    ≈22 GiB moved in 3–8 s; ComfyUI's own step on the offloaded blocks (cast from host RAM each step) 0.6–0.9 s, error
#    ≤1e-2 against the plain model (LoRA-style patches applied on the way instead of baked in); the warm prompt: 0
#    ModelPatcher.load calls and ≈0.3 GiB at its start; restore ≈22 GiB back in 2–5 s, then ≈175 ms steps, error ≈0.
# 2. tools/step_gap_probe.py: what of a 1024² step neither kernels nor N GPUs divide.
#    Predictions: between calls (host only) 1.5–3 ms; an eager call ≈167.5 ms of kernels in ≈176 ms; a graphed call
#    ≈170 ms with 2500–3500 kernels, 2–4 ms of it outside kernels (≈1 µs a kernel).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe offload 300 -- comfy_xdit_patch.evidence offload --steps 6
( timeout 200 python3 tools/step_gap_probe.py --res 1024 --steps 8 >"$OUT/step-gap-1024.log" 2>&1; echo "=== exit $?" >>"$OUT/step-gap-1024.log" )
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|HUNG\|=== exit\|ERROR\|WARNING\|Traceback\|Error\|moved\|back on\|sampler step\|call\|between\|outside" "$f" | tail -24; done
