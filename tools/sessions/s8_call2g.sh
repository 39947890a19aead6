#!/usr/bin/env bash
# Eighth session, call 2 (ONE H200, ≤4 min): `evidence offload` again. In call 1 its third prompt ran the evidence's
# own offloading callback again after the restore (the table's third row was offloaded steps again: 500 ms); the
# scenario now stops offloading once it restores, and checks the restored step.
# Predictions (written before the run): rows 1–2 as in call 1 (22.2 -> 0.15 GiB, ≈17 s to move; 0 loads, 0.40 GiB);
# restore ≈4 s to 22.4 GiB, then ComfyUI's step ≈176 ms like the reference, error ≤1e-3 (the same weights, patched).
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe offload 300 -- comfy_xdit_patch.evidence offload --steps 6
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|HUNG\|=== exit\|ERROR\|WARNING\|Traceback\|Error\|moved\|back on" "$f" | tail -24; done
