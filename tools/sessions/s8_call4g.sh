#!/usr/bin/env bash
# Eighth session, call 4 (ONE H200, ≤5 min).
# 1. tools/repeat_probe.py --locate: where does the process's first prompt compute differently (call 3: 6.93e-3
#    against every later prompt, which are bit-equal)? Prediction (written before the run): the first differing
#    module output is an attention projection's (`*.img_attn.proj` / `*.linear2` take the attention's output), i.e.
#    the first attention call picks another kernel; nothing before the first block's attention differs.
# 2. `evidence offload` with the settling step now in front: prediction: the restored row's error 0.00 (bit-equal to
#    the reference, which is no longer the process's first prompt), the rows on offloaded blocks ≤1e-3, the rest as
#    in call 2.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
( timeout 200 python3 tools/repeat_probe.py --res 1024 --steps 4 --repeats 2 --locate >"$OUT/locate.log" 2>&1; echo "=== exit $?" >>"$OUT/locate.log" )
probe offload 300 -- comfy_xdit_patch.evidence offload --steps 6
grep -v "it/s\]" "$OUT/locate.log" | tail -16
grep "^|\|HUNG\|=== exit\|Traceback\|Error" "$OUT/offload.log" | tail -8
