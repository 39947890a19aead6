#!/usr/bin/env bash
# Session 5, call 1a (2×H200, ~3 min): call 0 found the exchange transfer-bound (NCCL and one copy engine alike at
# ≈135 GB/s for a block's 28 MB). Is that the link, or one engine / too few NCCL channels? Link rate by size, copy
# engines on 4 streams, NCCL with more point-to-point channels; and the host-side release with the whole pad written.
source tools/gpu_env.sh || exit 1
p=tools/symm_exchange_probe.py
timeout -s KILL 120 python3 $p --res 1024,2048 >"$OUT/symm-probe2.log" 2>&1; echo "=== exit $?" >>"$OUT/symm-probe2.log"
for e in NCCL_MIN_P2P_NCHANNELS=32 NCCL_MIN_NCHANNELS=32 NCCL_P2P_NVL_CHUNKSIZE=2097152 NCCL_P2P_USE_CUDA_MEMCPY=1; do
  echo "##### $e" >>"$OUT/symm-nccl-env.log"
  env $e timeout -s KILL 60 python3 $p --res 1024,2048 --only nccl,nccl-only --skip-release >>"$OUT/symm-nccl-env.log" 2>&1
  echo "=== exit $?" >>"$OUT/symm-nccl-env.log"
done
grep -v "^\s*$\|FutureWarning\|enable_symm_mem_for_group(" "$OUT/symm-probe2.log" | tail -40
grep "#####\||\|exit\|Error" "$OUT/symm-nccl-env.log" | tail -60
