#!/usr/bin/env bash
# Eighth session, call 7 (ONE H200, ≤2 min): does torch 2.11's trace export hold what profiling.step_starts reads
# (cudaGraphLaunch on the host, kernels on the GPU, baseTimeNanoseconds)? A small graph of 20 matmuls replayed 4
# times under the profiler with CPU and CUDA activity, as COMFY_XDIT_TRACE_DIR asks the ranks to.
# Prediction (written before the run): 4 steps, each launch before its first kernel by ≈5–30 µs, each step ≈20
# kernels long; timestamps near the host's clock (time.time_ns() / 1e3 within a minute).
source tools/gpu_env.sh || exit 1
python3 - <<'PY' 2>&1 | tee "$OUT/trace-format.log"
import os, time, torch
from torch.profiler import profile
os.environ["COMFY_XDIT_TRACE_DIR"] = os.environ["OUT"]
from comfy_xdit_patch.profiling import export_trace, profiler_activities, step_starts
a = torch.randn(2048, 2048, device="cuda")
g = torch.cuda.CUDAGraph()
s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    b = a
    for _ in range(20): b = b @ a
torch.cuda.current_stream().wait_stream(s)
with torch.cuda.graph(g):
    b = a
    for _ in range(20): b = b @ a
torch.cuda.synchronize()
with profile(activities=profiler_activities()) as prof:
    for _ in range(4):
        g.replay(); torch.cuda.synchronize(); time.sleep(0.002)
path = export_trace(prof, 0)
steps = step_starts(path)
now = time.time_ns() / 1e3
print("activities", profiler_activities(), "file", os.path.getsize(path), "bytes")
for launch, first, end in steps:
    print(f"launch {launch:.0f} (host clock now - {now - launch:.0f} µs), first kernel +{first - launch:.1f} µs, end +{end - launch:.1f} µs")
print("steps", len(steps))
PY
