"""Measuring tool (not product code), one GPU: how much of a FLUX step is neither kernels nor anything N GPUs divide.

    python3 tools/step_gap_probe.py [--res 1024] [--steps 8]

ComfyUI's own sampler (euler, the bench's synchronised mark after every step) on a random FLUX.1-dev-size model:
- between calls: host time from one diffusion-model call's end (synchronised) to the next call's start — the
  sampler, ComfyUI's per-step conditioning work and the step's mark, all while the GPU has nothing queued;
- an eager call: the kernels' union against the call's span (the GPU waiting for launches);
- the same call captured as a CUDA graph and replayed: its span, its kernels' union and their count. What a replay
  spends outside kernels is the gap between dependent kernels, per kernel; a parallel rank launches as many kernels
  as one GPU (each with half the work), so that time does not halve (docs/benchmarks.md, eighth session).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--res", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    from comfy_xdit_patch.bench import FLUX_DEV, load_random_flux, sample, setup_comfy
    setup_comfy(False)
    import torch
    import comfy.model_management
    import comfy.patcher_extension as ext
    from torch.profiler import ProfilerActivity, profile
    from torch.autograd import DeviceType
    from comfy_xdit_patch.profiling import describe, kernel_time
    device = comfy.model_management.get_torch_device()
    model = load_random_flux(FLUX_DEV, torch.bfloat16, device).clone()
    marks, found = [], {}

    def wrapper(executor, *a, **k):
        marks.append(("in", time.perf_counter()))
        calls = sum(1 for kind, _ in marks if kind == "in")
        if calls == 3:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                out = executor(*a, **k)
                torch.cuda.synchronize(device)
            found["eager"] = kernel_time(prof, 1)
        elif calls == 4:
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                executor(*a, **k)   # warm-up on the capture stream
            torch.cuda.current_stream(device).wait_stream(stream)
            with torch.cuda.graph(graph):
                out = executor(*a, **k)
            times = []
            for _ in range(10):
                torch.cuda.synchronize(device)
                start = time.perf_counter()
                graph.replay()
                torch.cuda.synchronize(device)
                times.append((time.perf_counter() - start) * 1e3)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    graph.replay()
                torch.cuda.synchronize(device)
            kernels = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA) / 3
            found["graph"] = (statistics.median(times), kernel_time(prof, 3), kernels)
            out = out.clone()
            del graph
        else:
            out = executor(*a, **k)
        torch.cuda.synchronize(device)
        marks.append(("out", time.perf_counter()))
        return out

    model.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "probe", wrapper)
    _, step_times, _ = sample(model, (args.res // 8, args.res // 8), args.steps, 512, device)
    between = [b[1] - a[1] for a, b in zip(marks, marks[1:]) if a[0] == "out" and b[0] == "in"]
    inside = [b[1] - a[1] for a, b in zip(marks, marks[1:]) if a[0] == "in" and b[0] == "out"]
    print(f"FLUX.1-dev size, {args.res}², 512 text tokens, bf16, {torch.cuda.get_device_name(device)}")
    print(f"sampler step (synchronised marks), median: {statistics.median(step_times[2:]) * 1e3:.1f} ms")
    print(f"diffusion-model call, median of eager calls: "
          f"{statistics.median([t for i, t in enumerate(inside) if i not in (2, 3)]) * 1e3:.1f} ms")
    print(f"between calls (host only, GPU idle), median: {statistics.median(between) * 1e3:.2f} ms")
    print("eager call: " + describe(*found["eager"]))
    replay_ms, traced, kernels = found["graph"]
    busy_ms = traced[0]
    print(f"graphed call: replay {replay_ms:.1f} ms (median of 10), {kernels:.0f} kernels; " + describe(*traced))
    print(f"outside kernels in a replay: {replay_ms - busy_ms:.1f} ms, {(replay_ms - busy_ms) / kernels * 1e3:.2f} µs "
          "a kernel")


if __name__ == "__main__":
    main()
