#!/usr/bin/env bash
# Session 5, call 0 (2×H200, ~5 min): issue 3's next lever, measured before it is built — the Ulysses exchange over
# symmetric memory (copy-engine pulls from the peer's buffer) against NCCL's all-to-all, per block, in CUDA graphs,
# and whether a rank left waiting by a dead peer can be freed from the host (tools/symm_exchange_probe.py). Then
# issue 4's dynamic-VRAM evidence (moved here from s5_call1.sh so that each call stays under its 10-minute limit).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
timeout -s KILL 170 python3 tools/symm_exchange_probe.py --res 1024,2048 >"$OUT/symm-probe.log" 2>&1
echo "=== exit $?" >>"$OUT/symm-probe.log"
probe dynamic 120 -- comfy_xdit_patch.evidence dynamic
cat "$OUT/symm-probe.log" | grep -v "^\s*$" | tail -40
for f in "$OUT"/dynamic.log; do echo "=== $f"; grep "^|\|HUNG\|=== exit\|ERROR\|dynamic VRAM\|Traceback\|Error" "$f" | tail -14; done
