#!/usr/bin/env bash
# Seventh session, call 2 (2×H200, ≤8 min): (1) both ranks' GPU time by kernel family in the default graphed step,
# to tell whether the ≈6.4 ms of barrier waiting on rank 0 (call 1) is one late start per step or a per-block skew;
# (2) the sixth session's review fixes of sharded weights that no GPU has run yet (pieces scattered through torch's
# memory then copied into peer memory, the publish barrier on rank 0's device, start_call waiting for queued copies).
# Predictions (written before the run):
#  - rank 0: the longest barrier of a step 1–3 ms (the helper starting late), the others ≈20–40 µs each; rank 1:
#    barrier time well under rank 0's;
#  - sharded under dynamic VRAM ≈133 ms at 1024² (call 5: 133.5), both GPUs 12.5–12.6 GiB;
#  - a killed helper with sharded pieces: the prompt finishes on one GPU, the next is parallel again; no hang.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-both-ranks 150 COMFY_XDIT_PROFILE_HELPER=5,4 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 \
    --warmup 3 --gpu-busy
probe bench-sharded-dynamic 150 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --dynamic-vram --shard-weights both
probe kill-sharded 120 -- comfy_xdit_patch.evidence kill --steps 12 --shard-weights
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|rank 0's GPU\|GPU over calls\|HUNG\|=== exit\|ERROR\|WARNING Enable\|Traceback\|Error\|released\|aborted" "$f" | tail -16; done
