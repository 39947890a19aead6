#!/usr/bin/env bash
# Device session 4, call 5 (2×H200, ~5 min): issue 5 with CUDA graphs on after the failure path destroys the graphs
# beside the abort (the ring kill of call 2 hung destroying them first): ring and Ulysses kill, a stalled helper;
# issue 4's dynamic VRAM with comfy-aimdo loaded before ComfyUI, as main.py does.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe kill-ring 100 -- comfy_xdit_patch.evidence kill --steps 12 --parallelism ring
probe kill 100 -- comfy_xdit_patch.evidence kill --steps 12
probe dynamic 80 -- comfy_xdit_patch.evidence dynamic
probe stall 75 COMFY_XDIT_COLLECTIVE_TIMEOUT=10 -- comfy_xdit_patch.evidence stall --steps 8
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|HUNG\|=== exit\|ERROR\|WARNING\|aborted\|dynamic VRAM\|Traceback\|Error" "$f" | grep -v "^\[xdit rank 1\] INFO" | tail -12; done
