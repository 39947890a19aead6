#!/usr/bin/env bash
# Eighth session, call 3 (ONE H200, ≤3 min): in calls 1–2 every row of `evidence offload` differed from its reference
# prompt by exactly 6.77e-3, also the plain step after the restore. Is ComfyUI's own 1-GPU result repeatable from one
# prompt to the next in one process? Prediction (written before the run): the first prompt of the process differs
# from the later ones by ≈5–7e-3 (something ComfyUI or torch settles during the first prompt), later prompts
# agree with each other to ≤1e-6.
source tools/gpu_env.sh || exit 1
( timeout 240 python3 tools/repeat_probe.py --res 1024 --steps 6 --repeats 3 >"$OUT/repeat.log" 2>&1; echo "=== exit $?" >>"$OUT/repeat.log" )
grep -v "it/s\]" "$OUT/repeat.log" | tail -20
