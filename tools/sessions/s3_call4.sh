#!/usr/bin/env bash
# Session 3, device call 4 (2×H200): issue 4 formats with CUDA graphs on (the new default) and the attention-kernel
# noise floor. Logs go to $OUT.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe formats 175 -- comfy_xdit_patch.evidence formats
grep "^|\|HUNG\|=== exit\|ERROR\|captured\|cannot be captured\|Traceback" "$OUT/formats.log" | tail -30
