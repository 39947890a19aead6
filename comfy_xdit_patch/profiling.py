"""Where a step's GPU time goes, from a torch.profiler trace of CUDA activity: the bench's ``--gpu-busy`` on rank 0,
and a helper's own figures with ``COMFY_XDIT_PROFILE_HELPER`` (runtime/helper_process.py). With ``COMFY_XDIT_TRACE_DIR`` both
also record the host's CUDA calls and write their traces there (``rank<N>.json.gz``, torch's chrome format), for
``step_starts``: when each rank launched each graphed step and when its GPU started and ended it, on the one clock
the processes of a machine share."""
import gzip
import json
import os
import statistics

# Kernel families of a FLUX step, by name (first match wins).
_FAMILIES = (("exchange", ("scatter_qkv", "gather_out")), ("barrier", ("barrier",)),
             ("attention", ("flash", "fmha", "attention", "sdpa")), ("nccl", ("nccl",)),
             ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas")), ("copy", ("memcpy", "memset")))


def kernel_family(name):
    name = name.lower()
    return next((family for family, marks in _FAMILIES if any(mark in name for mark in marks)), "other")


def kernel_time(prof, steps):
    """(busy ms, span ms, {family: ms}) per step: the time any kernel ran (their union) against the trace's span, and
    each family's summed kernel time (kernels on two streams both count). Busy well under the span means the GPU
    waited for the host. Barrier time is the wait for the peers and their transfers: the longest barrier of each
    step (where one rank started late) is reported apart from the median of the others."""
    from torch.autograd import DeviceType
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start]
    spans = sorted((e.time_range.start, e.time_range.end) for e in events)
    busy, reach = 0.0, float("-inf")   # the union of the kernels' intervals, in start order
    for start, end in spans:
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    span = spans[-1][1] - spans[0][0] if spans else 0.0
    families, barriers = {}, []
    for e in events:
        family = kernel_family(e.name)
        duration = (e.time_range.end - e.time_range.start) / 1e3
        families[family] = families.get(family, 0.0) + duration / steps
        if family == "barrier":
            barriers.append(duration)
    if barriers:
        barriers.sort(reverse=True)
        families["barrier: longest a step"] = sum(barriers[:steps]) / steps
        families["barrier: median µs"] = statistics.median(barriers[steps:] or barriers) * 1e3
    return busy / 1e3 / steps, span / 1e3 / steps, families


def describe(busy_ms, span_ms, families):
    if not span_ms:
        return "no kernel was traced"
    by_time = sorted(families.items(), key=lambda item: -item[1])
    return (f"kernels ran {busy_ms:.1f} ms of each {span_ms:.1f} ms step ({100 * busy_ms / span_ms:.0f}% busy); by "
            "family, ms a step: " + ", ".join(f"{family} {ms:.2f}" for family, ms in by_time))


def trace_dir():
    """COMFY_XDIT_TRACE_DIR: where profiled ranks write their traces, or None (off)."""
    from . import envs
    return envs.COMFY_XDIT_TRACE_DIR or None


def profiler_activities():
    from torch.profiler import ProfilerActivity
    return [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if trace_dir() else [])


def export_trace(prof, rank, tag=""):
    """Writes ``prof``'s trace as rank<rank><tag>.json.gz into the trace directory, if one is set; returns its
    path."""
    if not trace_dir():
        return None
    os.makedirs(trace_dir(), exist_ok=True)
    path = os.path.join(trace_dir(), f"rank{rank}{tag}.json.gz")
    prof.export_chrome_trace(path)
    return path


def step_starts(path):
    """From a trace of ``export_trace``: per graphed step (one ``cudaGraphLaunch``), (launch µs, first kernel µs,
    last kernel end µs), all on the machine's clock (the trace's base time added)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    base = trace.get("baseTimeNanoseconds", 0) / 1e3
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    launches = sorted(base + e["ts"] for e in events if e.get("name") == "cudaGraphLaunch")
    kernels = sorted((base + e["ts"], base + e["ts"] + e.get("dur", 0)) for e in events if e.get("cat") == "kernel")
    steps = []
    for index, launch in enumerate(launches):
        until = launches[index + 1] if index + 1 < len(launches) else float("inf")
        inside = [k for k in kernels if launch <= k[0] < until]
        if inside:
            steps.append((launch, inside[0][0], max(end for _, end in inside)))
    return steps


class HelperProfile:
    """``COMFY_XDIT_PROFILE_HELPER=first,count``: a helper profiles its model calls ``first`` .. ``first + count - 1``
    (counted from 1) and logs where their GPU time went, to set beside rank 0's ``bench --gpu-busy``. Off by
    default; GPUs only. A profiler problem is logged, never raised: the helper's step matters more."""

    def __init__(self, setting, log):
        self.first = self.count = 0
        self.profiler = None
        if setting:
            try:
                self.first, self.count = (int(x) for x in setting.split(","))
            except ValueError:
                log.warning("COMFY_XDIT_PROFILE_HELPER=%r is not 'first,count' (e.g. 5,4): no profile", setting)

    def before(self, call, device, log):
        if self.count and call == self.first and device.type == "cuda":
            try:
                from torch.profiler import profile
                self.profiler = profile(activities=profiler_activities())
                self.profiler.__enter__()
            except Exception:
                log.warning("could not start the helper's profiler", exc_info=True)
                self.profiler = None

    def after(self, call, rank, log):
        """After the call's work is synchronised."""
        if self.profiler is not None and call == self.first + self.count - 1:
            try:
                self.profiler.__exit__(None, None, None)
                log.info("helper rank %d's GPU over calls %d-%d: %s", rank, self.first, call,
                         describe(*kernel_time(self.profiler, self.count)))
                export_trace(self.profiler, rank)
            except Exception:
                log.warning("could not read the helper's profile", exc_info=True)
            self.profiler = None
