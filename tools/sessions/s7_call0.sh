#!/usr/bin/env bash
# Next device session, call 0 (2×H200, ≤9 min): the default path after the sixth session (symmetric exchange by
# default, one kernel per direction, peer memory), which call 6 timed only at 1024² without a failure.
# Predictions (written before the run):
#  - `evidence kill` with no settings: barriers released, prompt finished on one GPU, next prompt parallel with the
#    symmetric exchange (≈102 ms);
#  - the README's main job at 1024,2048 with a 28-step prompt: ≈1.73× / ≈1.90–1.93×, prompt ≈1.64×;
#  - TorchCompileModel on both sides (inductor): compiles (our attention hook is a graph break per block, as with
#    NCCL's exchange), ≥1.6× at 1024².
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe kill-default 120 -- comfy_xdit_patch.evidence kill --steps 12
probe bench-default 200 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 --e2e-steps 28
probe bench-compile 200 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 --torch-compile inductor
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|end-to-end\|HUNG\|=== exit\|ERROR\|WARNING Enable\|released\|aborted\|Traceback\|Error" "$f" | tail -16; done
