#!/usr/bin/env bash
# Sixth session, call 3 (2×H200, ≤9.5 min): peer memory of our own (CUDA IPC, parallel/peer_memory.py) in place of
# torch's symmetric memory, and sharded weights pulled by the copy engine from it instead of NCCL's all-gather.
# Predictions (written before the run):
#  - every group of a process maps its exchange: the bench's later configurations say "symmetric exchange" too;
#  - symmetric 1024² ≈102 ms (103.1 before; −19 µs a block from the local copy on a side stream), 2048² ≈537 ms;
#  - sharded + pulls ≈ replicated + 3–8% at 1024² (the gathers take no SMs; 11.1 GB a step on the link beside the
#    exchange), ≈ +1% at 2048²; helper peak ≈12.5 GiB counted with its peer memory;
#  - kill with the symmetric exchange and pulled shards: the prompt finishes on one GPU, and the next prompt is
#    parallel with the symmetric exchange again; no hang.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
probe bench-peer 330 -- comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10 --warmup 3 \
    --parallelism ulysses --exchange symmetric,nccl --shard-weights both --e2e-steps 28
probe kill-peer 110 COMFY_XDIT_EXCHANGE=symmetric -- comfy_xdit_patch.evidence kill --steps 12 --shard-weights
probe bench-peer-dynamic 110 -- comfy_xdit_patch.bench --gpus 2 --res 1024 --steps 10 --warmup 3 \
    --parallelism ulysses --exchange symmetric --shard-weights on --dynamic-vram
for f in "$OUT"/*.log; do echo "=== $f"
  grep "^|\|HUNG\|=== exit\|ERROR\|WARNING Enable\|started\|aborted\|released\|Traceback\|Error" "$f" | tail -18; done
