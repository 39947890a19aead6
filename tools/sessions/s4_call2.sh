#!/usr/bin/env bash
# Next device session, call 2 (2×H200, ~8 min): issue 5 with CUDA graphs on (the default since session 3; the
# session-3 kill run was eager) under Ulysses and ring (point-to-point on the one communicator),
# issue 4 (LoRA + ControlNet + Kontext with graphs; dynamic VRAM), issue 6 (groups after the size-free gather).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe kill 110 -- comfy_xdit_patch.evidence kill --steps 12
probe kill-ring 110 -- comfy_xdit_patch.evidence kill --steps 12 --parallelism ring
probe spotcheck 120 -- comfy_xdit_patch.evidence spotcheck
probe groups 120 -- comfy_xdit_patch.evidence groups
probe dynamic 90 -- comfy_xdit_patch.evidence dynamic
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|HUNG\|=== exit\|ERROR\|aborted\|dynamic VRAM\|Traceback" "$f" | tail -20; done
