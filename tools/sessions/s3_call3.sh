#!/usr/bin/env bash
# Session 3, device call 3 (2×H200): issue 5 again (one communicator when a group spans every rank), issue 4 formats
# (comfy_quant on the host, noise floors), issue 3 (graphs on the single communicator). Logs go to $OUT.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe kill 110 -- comfy_xdit_patch.evidence kill --steps 12
probe stall 100 -- comfy_xdit_patch.evidence stall --steps 8
probe bench-graphs 170 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 --repeat 3 \
    --parallelism ulysses,ring --cuda-graphs both --e2e-steps 28
probe formats 150 -- comfy_xdit_patch.evidence formats
for f in "$OUT"/*.log; do echo "=== $f"; grep "^|\|^end-to-end\|HUNG\|=== exit\|Error\|ERROR\|aborted\|Traceback" "$f" | tail -22; done
