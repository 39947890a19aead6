"""Measuring tool: where a graphed parallel step's time goes between the kernels, from the ranks' traces.

    COMFY_XDIT_TRACE_DIR=DIR COMFY_XDIT_PROFILE_HELPER=5,4 python -m comfy_xdit_patch.bench --gpus 2 --res 1024 \\
        --gpu-busy --e2e-steps 0
    python3 tools/trace_lag.py DIR

Reads rank0.json.gz (rank 0's profiled steps) and rank<N>.json.gz (each helper's; comfy_xdit_patch/profiling.py) and
pairs their graphed steps by launch time. Per step and rank: the host's graph launch, its GPU's first kernel and last
kernel's end, on the one clock a machine's processes share. Prints, as medians over the paired steps:
- rank 0's host time between steps (its GPU's end of step n to its launch of step n + 1: the sampler, ComfyUI's
  per-step work, our dispatch);
- each rank's launch-to-first-kernel delay;
- each helper's launch and first kernel after rank 0's (how late a helper starts: rank 0 waits that out in the
  step's first barrier);
- each rank's GPU idle between steps.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from comfy_xdit_patch.profiling import step_starts  # noqa: E402


def paired(reference, other, within_us=20_000):
    """Each step of ``reference`` with the step of ``other`` launched nearest to it (within ``within_us``)."""
    pairs = []
    for step in reference:
        nearest = min(other, key=lambda s: abs(s[0] - step[0]), default=None)
        if nearest is not None and abs(nearest[0] - step[0]) <= within_us:
            pairs.append((step, nearest))
    return pairs


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("COMFY_XDIT_TRACE_DIR", ".")
    rank0 = step_starts(os.path.join(folder, "rank0.json.gz"))
    helpers = sorted(name for name in os.listdir(folder) if name.startswith("rank") and name.endswith(".json.gz")
                     and name not in ("rank0.json.gz", "rank0-1device.json.gz"))
    print(f"rank 0: {len(rank0)} graphed steps traced")
    host_gaps = [b[0] - a[2] for a, b in zip(rank0, rank0[1:])]
    print(f"rank 0, its GPU's end of a step to its launch of the next (host only): {median(host_gaps) / 1e3:.2f} ms")
    print(f"rank 0, launch to first kernel: {median([s[1] - s[0] for s in rank0]) / 1e3:.3f} ms")
    print(f"rank 0, GPU idle between steps: {median([b[1] - a[2] for a, b in zip(rank0, rank0[1:])]) / 1e3:.2f} ms")
    for name in helpers:
        steps = step_starts(os.path.join(folder, name))
        pairs = paired(rank0, steps)
        print(f"{name[:-8]}: {len(steps)} graphed steps traced, {len(pairs)} paired with rank 0's")
        if not pairs:
            continue
        print(f"  launch after rank 0's: {median([h[0] - r[0] for r, h in pairs]) / 1e3:.3f} ms; first kernel after "
              f"rank 0's: {median([h[1] - r[1] for r, h in pairs]) / 1e3:.3f} ms; GPU end after rank 0's: "
              f"{median([h[2] - r[2] for r, h in pairs]) / 1e3:.3f} ms")
        print(f"  launch to first kernel: {median([h[1] - h[0] for _, h in pairs]) / 1e3:.3f} ms; GPU idle between "
              f"steps: {median([b[1] - a[2] for a, b in zip(steps, steps[1:])]) / 1e3:.2f} ms")


if __name__ == "__main__":
    main()
