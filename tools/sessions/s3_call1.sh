#!/usr/bin/env bash
# Session 3, device call 1 (2×H200): issue 5 (kill and stall with the launch pacer) and issue 3 (where the CUDA-graph
# replay stalls; how busy rank 0's GPU is eagerly). Logs go to $OUT.
source tools/gpu_env.sh || exit 1
source tools/hang_probe.sh
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
probe kill 170 -- comfy_xdit_patch.evidence kill --steps 12
probe stall 150 -- comfy_xdit_patch.evidence stall --steps 8
probe graphs-noreg 200 NCCL_GRAPH_REGISTER=0 NCCL_DEBUG=WARN -- comfy_xdit_patch.bench --gpus 2 --res 1024 \
    --steps 8 --warmup 3 --parallelism ulysses --cuda-graphs both --gpu-busy
for f in "$OUT"/*.log; do echo "=== $f"; grep -v "^\[xdit rank 1\] INFO\|^INFO Requested\|^INFO loaded" "$f" | tail -25; done
