"""1 device vs N devices on a ComfyUI model, through the Enable Multi-GPU patch: speed-up and equivalence.

    python -m comfy_xdit_patch.bench                      # every visible GPU, FLUX.1-dev size, random bf16 weights
    python -m comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10
    python -m comfy_xdit_patch.bench --model sdxl         # SDXL's UNet at cfg 4 (cond and uncond in one call)
    python -m comfy_xdit_patch.bench --model wan-14b --res 832x480,1280x720 --frames 33   # Wan video, 5-D latents
    python -m comfy_xdit_patch.bench --model qwen-image --res 1024,1328   # also z-image, krea2
    python -m comfy_xdit_patch.bench --passthrough        # one GPU: what the node costs when it passes through
    python -m comfy_xdit_patch.bench --cpu                # no GPU: CPU ranks over gloo and a tiny FLUX

The model (``--model``, bench_models.py) has random weights named as its family's checkpoints, loaded by ComfyUI's own
diffusion-model loader. Each resolution is sampled with ComfyUI's real sampler (``comfy.sample.sample``,
euler/simple) on the unpatched model and on the patched clone, in the same process, with the same seed. Per-step
times come from the sampler callback after a CUDA synchronise; the table reports medians after warm-up, the first
timed sampling run, the relative L2 error of the final latent against 1 device, peak memory per device and the
helpers' start, in the columns that have a figure in this run; a whole warm prompt (``--e2e-steps``: 28 steps on
GPUs, 4 on CPU) follows it. On CPU ranks the error is the result: the ranks share the machine's cores, so their times
measure the plumbing, not a speed-up. With ``--kernel-baseline`` the 1-device run is repeated with the kernel that
ring attention uses, so that a kernel choice is never reported as parallel speed-up.

``--passthrough`` times, on one device and interleaved, the unpatched model, the node with gpus=1 and the node's
clone with all its hooks whose every call runs on one device: what the node costs where it does not parallelise.
"""
import argparse
import contextlib
import logging
import os
import shlex
import statistics
import sys
import time

from .bench_models import MODELS
# The FLUX builder's names, imported from here by evidence.py and the tests.
from .bench_models import FLUX_DEV, TINY, bfl_name, random_flux_state_dict, weight_shapes  # noqa: F401
from .bench_models import flux_conditioning as conditioning  # noqa: F401


def _find_comfy():
    """COMFYUI_PATH, else the ComfyUI this plugin sits in (ComfyUI/custom_nodes/<plugin>), also through a symlink."""
    if os.environ.get("COMFYUI_PATH"):
        return os.environ["COMFYUI_PATH"]
    starts = [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PWD", os.getcwd())]
    for start in starts:
        path = start
        while path != os.path.dirname(path):
            if os.path.isfile(os.path.join(path, "comfy", "model_patcher.py")):
                return path
            path = os.path.dirname(path)
    return starts[0]


def _load_aimdo_library():
    """comfy-aimdo's library, loaded as ComfyUI's main.py does: before any ComfyUI module is imported, because
    comfy_aimdo.host_buffer and its siblings copy ``control.lib`` when they are imported (loaded afterwards, the
    library is None in HostBuffer)."""
    import comfy.cli_args
    import comfy_aimdo.control   # ComfyUI 0.33 pins comfy-aimdo 0.4.13: its protocol only
    return comfy_aimdo.control.init(simple_vram_headroom=None,
                                    nvml_pressure=not comfy.cli_args.args.disable_nvml_pressure)


def enable_dynamic_vram():
    """ComfyUI's dynamic VRAM (comfy-aimdo; ModelPatcherDynamic for every model loaded after this), switched on the
    way ComfyUI's main.py does on NVIDIA, after ``setup_comfy(..., dynamic_vram=True)`` loaded the library. Returns
    whether it is on; never on the CPU."""
    import comfy.memory_management
    import comfy.model_management
    import comfy.model_patcher
    import comfy_aimdo.control
    if comfy.model_management.get_torch_device().type != "cuda" or comfy_aimdo.control.lib is None:
        return False
    ready = comfy_aimdo.control.init_devices((d.index, 0) for d in comfy.model_management.get_all_torch_devices())
    if ready:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    return bool(ready)


def setup_comfy(cpu, comfy_args="", dynamic_vram=False):
    """Import ComfyUI from COMFYUI_PATH with its command-line flags; ``dynamic_vram``: load comfy-aimdo's library
    first, so that ``enable_dynamic_vram`` can switch it on (GPU only)."""
    comfy_path = _find_comfy()
    if not os.path.isfile(os.path.join(comfy_path, "comfy", "model_patcher.py")):
        sys.exit(f"ComfyUI not found at '{comfy_path}': set COMFYUI_PATH to a ComfyUI 0.33 checkout.")
    sys.path.insert(0, comfy_path)
    import comfy.cli_args
    if comfy_args:   # ComfyUI's own command-line flags, as `python main.py ...` would take them
        given = vars(comfy.cli_args.parser.parse_args(shlex.split(comfy_args)))
        default = vars(comfy.cli_args.parser.parse_args([]))
        vars(comfy.cli_args.args).update({k: v for k, v in given.items() if v != default[k]})
    comfy.cli_args.args.cpu = cpu
    if dynamic_vram and not cpu and not _load_aimdo_library():
        logging.warning("comfy-aimdo's library did not load: dynamic VRAM stays off")
    import comfy.model_management  # noqa: F401


def load_random_model(spec, dtype, device, seed=0, from_host=False):
    """``spec``'s random model (a bench_models.BenchModel) loaded by ComfyUI's own diffusion-model loader, which
    detects the family from the weights' names and shapes. The weights are made on ``device`` (fast); ``from_host``:
    handed to the loader in host memory, as a file's weights are. Dynamic VRAM needs that: its layers stream a weight
    from the host and apply LoRA patches on the way (comfy/ops.py cast_bias_weight), but a weight already on the GPU
    takes the classic path, which leaves those patches out (ComfyUI's own 1-GPU result would then lack the patches
    that the helpers' weights have)."""
    return _load_state_dict(spec.state_dict(dtype, device, seed), dtype, from_host)


def load_random_flux(size, dtype, device, seed=0, from_host=False):
    """A random FLUX of ``size`` (FLUX_DEV, TINY), loaded as ``load_random_model`` loads one."""
    return _load_state_dict(random_flux_state_dict(size, dtype, device, seed), dtype, from_host)


def _load_state_dict(state, dtype, from_host):
    import comfy.sd
    if from_host:
        state = {key: value.cpu() for key, value in state.items()}
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": dtype})
    if model is None:
        raise ValueError("ComfyUI did not detect a model family in the benchmark's random weights")
    return model


def sync_device(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sampler(model, latent, positive, negative, steps, device, on_step=None, seed=7, cfg=1.0):
    """ComfyUI's sampler (euler) with a synchronised mark after every step; ``on_step(step)`` runs there too. At cfg 1
    ComfyUI leaves the negative out; above 1 it batches both into one model call where they fit.
    Returns (final latent, per-step seconds, total seconds)."""
    import comfy.sample
    latent = comfy.sample.fix_empty_latent_channels(model, latent)   # as KSampler does (Qwen-Image's is 5-D)
    noise = comfy.sample.prepare_noise(latent, seed)
    marks = []

    def callback(step, x0, x, total):
        sync_device(device)
        marks.append(time.perf_counter())
        if on_step:
            on_step(step)

    sync_device(device)
    start = time.perf_counter()
    out = comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                              callback=callback, disable_pbar=True, seed=seed)
    sync_device(device)
    return out, [b - a for a, b in zip(marks, marks[1:])], time.perf_counter() - start


def sample(model, latent_size, steps, text_tokens, device, seed=7, spec=None, cfg=None):
    """The benchmark's run: an empty latent of ``latent_size`` (its shape after batch and channels: height, width, or
    frames, height, width for video) and random conditioning of ``text_tokens``, both in the format of ``spec``'s
    family (a bench_models.BenchModel; FLUX if None), at ``cfg`` (``spec``'s if None). A latent of several streams
    (MiniMax H3's video and audio) comes back packed into one tensor, as the sampler ran it, so that a comparison
    covers every stream."""
    import comfy.utils
    spec = spec or MODELS["flux-dev"]
    image_hw = tuple(side * spec.latent_downscale for side in latent_size[-2:])
    out, step_times, total = run_sampler(
        model, spec.empty_latent(latent_size), spec.conditioning(text_tokens, 1, image_hw),
        spec.conditioning(text_tokens, 2, image_hw), steps, device, seed=seed, cfg=spec.cfg if cfg is None else cfg)
    if getattr(out, "is_nested", False):
        out = comfy.utils.pack_latents(out.unbind())[0]
    return out, step_times, total


def settle(model, resolutions, text_tokens, device, spec=None, cfg=None):
    """One step at each resolution, unmeasured. ComfyUI's first prompt in a process computes slightly differently
    from every later one (FLUX.1-dev size at 1024² on an H200: 6.93e-3 against the second prompt, which every later
    one equals bit for bit; docs/benchmarks.md, "Correctness"), so no figure may come from the first prompt: a 1-GPU
    reference taken there would count that difference as the parallel run's error."""
    for res in resolutions:
        sample(model, _latent_size(res, spec), 1, text_tokens, device, spec=spec, cfg=cfg)


def _latent_size(res, spec=None):
    return (spec or MODELS["flux-dev"]).latent_size(res)


def _peak(device):
    import torch
    if device.type != "cuda":
        return None
    from comfy_xdit_patch.parallel.peer_memory import memory_in_use
    torch.cuda.synchronize(device)
    _, peak = memory_in_use(device)
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def _kernel_baseline(model):
    """The unpatched model with the attention kernel of ring attention (aten flash with log-sum-exp)."""
    from comfy_xdit_patch.kernels import attention_with_lse
    clone = model.clone()

    def lse_kernel(func, q, k, v, heads, *args, **kwargs):
        out = attention_with_lse(q, k, v)[0]
        if kwargs.get("skip_output_reshape"):
            return out
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    clone.model_options["transformer_options"]["optimized_attention_override"] = lse_kernel
    return clone


def _graphed_one_device(model, device):
    """The unpatched model on one GPU, each step replayed as a CUDA graph by the same mechanism the parallel path
    uses (a DIFFUSION_MODEL wrapper), so that graphs are never sold as parallel speed-up."""
    import pickle
    import comfy.patcher_extension as ext
    from comfy_xdit_patch.runtime import transport
    from comfy_xdit_patch.runtime.step_graphs import EAGER, StepGraphs
    graphs, keys = StepGraphs(), {}

    def wrapper(executor, *args, **kwargs):
        # transformer_options holds no input of the graph. ComfyUI's forwards pass it last, or by name (Lumina 2's,
        # Z-Image's).
        by_name = "transformer_options" in kwargs
        if by_name:
            inputs, transformer_options = args, kwargs.pop("transformer_options")
        else:
            *inputs, transformer_options = args
        tensors = []
        skeleton = transport.extract_tensors((tuple(inputs), kwargs), tensors)
        key = keys.setdefault(pickle.dumps((skeleton, transport.layout(tensors))), len(keys))
        mode = graphs.choose(key)

        def forward(tensors_in):
            positional, named = transport.insert_tensors(skeleton, tensors_in)
            if by_name:
                return executor(*positional, transformer_options=transformer_options, **named)
            return executor(*positional, transformer_options, **named)

        if mode == EAGER:
            return graphs.run(key, mode, forward, tensors)
        return graphs.run(key, mode, forward, [t.to(device) for t in tensors]).clone()

    clone = model.clone()
    clone.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "bench_one_device_graph", wrapper)
    return clone


def _profile(model, latent_size, text_tokens, device, label, workload):
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sample(model, latent_size, 2, text_tokens, device, **workload)
    with profile(activities=activities) as prof:
        sample(model, latent_size, 3, text_tokens, device, **workload)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(f"\n## profile of rank 0, 3 steps, {label}")
    print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60))


def _gpu_busy(model, latent_size, text_tokens, device, tag, workload, steps=4):
    """Rank 0's GPU over ``steps`` steps (profiling.kernel_time), from CUDA activity only (no CPU-op tracing, so the
    host runs nearly as fast as unprofiled), unless COMFY_XDIT_TRACE_DIR asks for a trace of the host's CUDA calls."""
    from torch.profiler import profile
    from comfy_xdit_patch.profiling import export_trace, kernel_time, profiler_activities
    sample(model, latent_size, 2, text_tokens, device, **workload)
    with profile(activities=profiler_activities()) as prof:
        sample(model, latent_size, steps, text_tokens, device, **workload)
    export_trace(prof, 0, tag)
    return kernel_time(prof, steps)


def _prompt(model, latent_size, steps, text_tokens, device, label, workload, host_profile=False):
    """A whole warm prompt: (its seconds, the seconds outside its steps after the first, i.e. the first step, the
    sampler's set-up and wind-down and the node's work around the sampling run). With ``host_profile`` the prompt runs
    under cProfile and the host functions that took longest are printed."""
    profiler = None
    if host_profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    _, step_times, total = sample(model, latent_size, steps, text_tokens, device, **workload)
    if profiler is not None:
        import pstats
        profiler.disable()
        print(f"\n## host profile of a warm {steps}-step prompt on rank 0, {label}")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats("comfy_xdit_patch", 25)   # the node's own work
        stats.sort_stats("tottime").print_stats(15)                           # where the host thread sat
    return total, total - sum(step_times)


def _gpu_busy_or_none(*args):
    try:
        return _gpu_busy(*args)
    except Exception:  # a profiler problem must not cost the run its table
        logging.exception("could not measure how busy the GPU was")
        return None


def cpu_meaning():
    """What a CPU run's figures mean: its ranks share the machine's cores, so its times cannot show a speed-up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"# CPU ranks: the result is the rel. err against 1 device (float32: expect <= 1e-5) and that the helpers "
            f"ran; the time ratio measures the plumbing (process start, gloo transport) on {cores} CPU core(s) shared "
            f"by all ranks, not a GPU speed-up")


def table_columns(cpu, repeat):
    """(header, cell) of every column the table can have; a cell is None where the run has no such figure."""
    gib = lambda b: "-" if b is None else f"{b / 2**30:.1f}"
    gibs = lambda values: None if all(v is None for v in values) else " / ".join(gib(v) for v in values)
    times = lambda x: None if x is None else f"{x:.2f}x"
    spread = lambda r: "" if repeat == 1 else f" ({r['spread'][0]:.2f}-{r['spread'][1]:.2f})"
    return [
        ("config", lambda r: r["parallelism"]),
        ("layout", lambda r: r["layout"]),
        ("res", lambda r: str(r["res"])),
        ("tokens", lambda r: str(r["tokens"])),
        ("1-dev ms/step", lambda r: f"{r['step1'] * 1e3:.1f}"),
        ("N-dev ms/step", lambda r: f"{r['stepn'] * 1e3:.1f}"),
        ("time ratio" if cpu else "speed-up", lambda r: times(r["speedup"]) + spread(r)),
        ("vs same kernel", lambda r: times(r["kernel_speedup"])),
        ("vs 1-dev graphed", lambda r: times(r["graph_speedup"])),
        ("1-dev 1st run s", lambda r: f"{r['total1']:.2f}"),
        ("N-dev 1st run s", lambda r: f"{r['totaln']:.2f}"),
        ("rel. err vs 1-dev", lambda r: f"{r['err']:.2e}"),
        ("peak GiB 1-dev", lambda r: gibs([r["peak1"]])),
        ("peak GiB per rank", lambda r: gibs([r["peak0"]] + r["helper_peaks"])),
        ("weights GiB per helper", lambda r: gibs(r["helper_weights"])),
        ("helper start s", lambda r: None if r["start_s"] is None else f"{r['start_s']:.1f}"),
    ]


def print_table(rows, cpu, repeat):
    """The rows as a markdown table of the columns that have a figure in at least one row."""
    _print_markdown(table_columns(cpu, repeat), rows)
    print("1st run s: the first timed sampling run of that size; on N devices the configuration's first one includes "
          "the helpers' start and weight sync")


def _print_markdown(columns, rows):
    """``rows`` as a markdown table of those ``columns`` ((header, cell)) that have a figure in at least one row."""
    cells = [[cell(r) for _, cell in columns] for r in rows]
    kept = [i for i in range(len(columns)) if any(row[i] is not None for row in cells)]
    print("| " + " | ".join(columns[i][0] for i in kept) + " |")
    print("|" + "---|" * len(kept))
    for row in cells:
        print("| " + " | ".join("-" if row[i] is None else row[i] for i in kept) + " |")


def passthrough_variants(model):
    """(label, model) of what ``--passthrough`` times, the reference first: ComfyUI's model, the node with one GPU
    (which returns the model itself), and the node's clone for two GPUs with every hook installed while each of its
    calls passes through to this device (its helpers never start: see ``no_helpers``)."""
    from .config import MultiGPUOptions
    from .multigpu import enable_multigpu, hooked_clone, model_plan
    adapter, plan = model_plan(model, MultiGPUOptions(gpus=2), visible_cuda=2)
    return [("ComfyUI, unpatched", model), ("node, gpus=1", enable_multigpu(model, gpus=1)),
            ("node's hooks, calls on 1 device", hooked_clone(model, plan, adapter))]


@contextlib.contextmanager
def no_helpers():
    """While timing the pass-through: the node finds no helpers to start, so every call of its sampling runs takes
    its one-GPU path, through all of its hooks."""
    from .runtime import helper_group
    original = helper_group.ensure_group

    def refuse(plan):
        raise NotImplementedError("the benchmark times the pass-through")

    helper_group.ensure_group = refuse
    try:
        yield
    finally:
        helper_group.ensure_group = original


def passthrough(variants, res, steps, warmup, rounds, text_tokens, device, workload):
    """Each of ``variants`` sampled ``rounds`` times at ``res``, interleaved (A B C A B C ...) so that drift in clocks
    and temperature falls on all alike. Per variant: its median step after ``warmup`` over all rounds, the median and
    range of its rounds' ratios to the first variant's in the same round, its final latents' largest difference from
    the first variant's first one, whether all of them equal it bit for bit, and its peak memory."""
    import torch
    size = _latent_size(res, workload["spec"])
    for _, model in variants:   # a variant's first sampling run loads and sets up: unmeasured
        sample(model, size, 1, text_tokens, device, **workload)
    runs = {label: [] for label, _ in variants}
    for _ in range(rounds):
        for label, model in variants:
            _peak(device)
            out, step_times, _ = sample(model, size, steps, text_tokens, device, **workload)
            runs[label].append((out, step_times[warmup:] or step_times, _peak(device)))
    reference_runs = runs[variants[0][0]]
    reference = reference_runs[0][0]
    reference_each = [statistics.median(times) for _, times, _ in reference_runs]
    rows = []
    for label, _ in variants:
        step = statistics.median(t for _, times, _ in runs[label] for t in times)
        ratios = [statistics.median(times) / ref for (_, times, _), ref in zip(runs[label], reference_each)]
        peaks = [peak for _, _, peak in runs[label] if peak is not None]
        rows.append(dict(
            variant=label, res=res, tokens=workload["spec"].tokens(res, text_tokens), step=step,
            ratio=statistics.median(ratios), spread=(min(ratios), max(ratios)),
            max_diff=max((out.float() - reference.float()).abs().max().item() for out, _, _ in runs[label]),
            identical=all(torch.equal(out, reference) for out, _, _ in runs[label]),
            peak=max(peaks) if peaks else None))
    return rows


def print_passthrough_table(rows):
    """``--passthrough``'s rows as a markdown table (no memory column on the CPU)."""
    _print_markdown([
        ("variant", lambda r: r["variant"]),
        ("res", lambda r: str(r["res"])),
        ("tokens", lambda r: str(r["tokens"])),
        ("ms/step", lambda r: f"{r['step'] * 1e3:.2f}"),
        ("vs unpatched", lambda r: f"{r['ratio']:.3f}x ({r['spread'][0]:.3f}-{r['spread'][1]:.3f})"),
        ("max abs diff", lambda r: f"{r['max_diff']:.2e}"),
        ("bit-identical", lambda r: "yes" if r["identical"] else "no"),
        ("peak GiB", lambda r: None if r["peak"] is None else f"{r['peak'] / 2**30:.2f}"),
    ], rows)
    print("vs unpatched: median and range of each round's median step over the unpatched model's in that round; "
          "max abs diff and bit-identical: every round's final latent against the unpatched model's first (its own "
          "row: run to run)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=0, help="devices for the parallel run (0 = all; CPU: 2)")
    parser.add_argument("--cpu", action="store_true", help="CPU ranks over gloo and a tiny FLUX (default without CUDA)")
    parser.add_argument("--model", choices=tuple(MODELS), default=None, help="the random-weight model to time "
                        "(bench_models.py; GPU default flux-dev, CPU tiny)")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance (default the model's: FLUX "
                        "and Z-Image 1, SD3.5, SDXL, Qwen-Image and Krea 2 4, Wan 5, MiniMax H3 8); above 1 ComfyUI "
                        "batches cond and uncond into one model call")
    parser.add_argument("--passthrough", action="store_true", help="one device only: time the unpatched model, the "
                        "node with gpus=1 and the node's hooked clone passing every call through, interleaved")
    parser.add_argument("--res", default=None, help="image sides, or WIDTHxHEIGHT for video models, comma separated "
                        "(GPU default the model's: FLUX 1024,2048, Wan 832x480, wan-5b 1280x704, the others 1024; "
                        "CPU 256, video 256x256)")
    parser.add_argument("--frames", type=int, default=None, help="video models: the clip's length in pixel frames "
                        "(default 33); the latent has (frames - 1) // 4 + 1 frames (MiniMax H3: snapped up to 17k + 5 "
                        "frames, 5k + 2 latent frames)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per run (GPU default 10; CPU 4)")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the per-step median")
    parser.add_argument("--text-tokens", type=int, default=None, help="text length (GPU default the model's: FLUX "
                        "and Wan 512, Qwen-Image and Krea 2 256, SD3.5 154, Z-Image 128, SDXL 77; CPU 77)")
    parser.add_argument("--parallelism", default="auto", help="auto, ulysses, ring, usp or a comma list of them")
    parser.add_argument("--kernel-baseline", action="store_true", help="also time 1 device with the ring kernel")
    parser.add_argument("--repeat", type=int, default=None, help="sample each configuration this many times (1 "
                        "device and N devices alike) and report the median of the runs' medians, with the min-max "
                        "speed-up (default 1; --passthrough: rounds of its interleaved variants, default 5)")
    parser.add_argument("--graph-baseline", action="store_true", help="also time 1 GPU with its step replayed as a "
                        "CUDA graph (the fair baseline for the graphed N-GPU step)")
    parser.add_argument("--cuda-graphs", choices=("on", "off", "both"), default="on",
                        help="CUDA-graph replay of the parallel step (the node's cuda_graphs; on by default)")
    parser.add_argument("--shard-weights", choices=("on", "off", "both"), default="off",
                        help="each GPU holds 1/N of the blocks' weights (the node's shard_weights); 'both' times "
                             "replicated and sharded")
    parser.add_argument("--shard-gathers", default=None, help="comma list of the node's shard_gathers settings to "
                        "time with sharded weights, e.g. pull,all-gather (copies from the peers' pieces, or NCCL's all-gather)")
    parser.add_argument("--exchange", default=None, help="comma list of the node's exchange settings to time, e.g. "
                        "nccl,symmetric,copy-engine (the Ulysses all-to-all over NCCL, or through peer memory by "
                        "kernels or by the copy engines; copy-engine:P in P head parts; default auto); GPU only")
    parser.add_argument("--torch-compile", default=None, metavar="BACKEND", help="apply ComfyUI's TorchCompileModel "
                        "(this torch.compile backend, e.g. inductor) to the model on both sides: 1 device and N devices")
    parser.add_argument("--dynamic-vram", action="store_true", help="ComfyUI's dynamic VRAM (its default on NVIDIA; "
                        "ModelPatcherDynamic), with the model loaded from host memory as from a file; GPU only")
    parser.add_argument("--comfy-args", default="", help="ComfyUI command-line flags for this run, e.g. "
                        "--comfy-args='--disable-dynamic-vram' (note the '=')")
    parser.add_argument("--profile", action="store_true", help="print rank 0's top CUDA kernels for 3 steps at the "
                        "first resolution, 1 device and N devices (torch.profiler)")
    parser.add_argument("--gpu-busy", action="store_true", help="print how long rank 0's GPU ran kernels per step "
                        "against the step's span, 1 device and N devices, at the first resolution")
    parser.add_argument("--e2e-steps", type=int, default=None, help="also time a whole warm prompt of this many "
                        "steps at the first resolution, 1 device vs N, excluding model load and helper start "
                        "(GPU default 28; CPU 4; 0 = none)")
    parser.add_argument("--host-profile", action="store_true", help="run the --e2e-steps prompts under cProfile and "
                        "print the host functions that took longest")
    args = parser.parse_args(argv)
    # Checked before the minutes of 1-device baselines, not when the first parallel run makes its plan.
    from comfy_xdit_patch.config import EXCHANGES, SHARD_GATHERS
    if args.shard_gathers and (args.shard_weights == "off" or
                               not set(args.shard_gathers.split(",")) <= set(SHARD_GATHERS)):
        parser.error(f"--shard-gathers takes {', '.join(SHARD_GATHERS)}, and needs --shard-weights on or both")
    if args.exchange and not {x.partition(":")[0] for x in args.exchange.split(",")} <= set(EXCHANGES):
        parser.error(f"--exchange takes {', '.join(EXCHANGES)} (copy-engine:P for P head parts)")
    if args.dynamic_vram and args.graph_baseline:
        parser.error("--dynamic-vram: no graph baseline (a graphed step needs weights that stay put, which dynamic "
                     "VRAM does not promise); leave out --graph-baseline")

    import torch
    cpu = args.cpu or not torch.cuda.is_available()
    spec = MODELS[args.model or ("tiny" if cpu else "flux-dev")]
    if args.frames is not None and not spec.frames:
        parser.error(f"--frames: {args.model or 'the default model'} makes images; --frames is for the video models "
                     f"({', '.join(name for name, model in MODELS.items() if model.frames)})")
    if args.frames is not None and args.frames < 1:
        parser.error("--frames: a clip has 1 frame or more")
    try:
        resolutions = [spec.resolution(r, args.frames) for r in args.res.split(",")] if args.res else \
            [spec.resolution("256x256" if spec.frames else 256, args.frames)] if cpu else \
            [spec.resolution(r, args.frames) for r in spec.resolutions]
    except ValueError:
        parser.error(f"--res {args.res}: {'WIDTHxHEIGHT in pixels' if spec.frames else 'image sides in pixels'}, "
                     "comma separated")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    setup_comfy(cpu, args.comfy_args, dynamic_vram=args.dynamic_vram)
    if args.dynamic_vram and not enable_dynamic_vram():
        sys.exit("--dynamic-vram: comfy-aimdo could not switch dynamic VRAM on here (it needs an NVIDIA GPU)")
    import comfy.model_management
    from comfy_xdit_patch.multigpu import enable_multigpu
    from comfy_xdit_patch.profiling import describe
    from comfy_xdit_patch.runtime import helper_group

    device = comfy.model_management.get_torch_device()
    cfg = spec.cfg if args.cfg is None else args.cfg
    workload = dict(spec=spec, cfg=cfg)
    dtype = torch.float32 if cpu else torch.bfloat16
    steps = args.steps or (4 if cpu else 10)
    text_tokens = args.text_tokens or (77 if cpu else spec.text_tokens)
    repeat = args.repeat or (5 if args.passthrough else 1)
    e2e_steps = (4 if cpu else 28) if args.e2e_steps is None else args.e2e_steps
    if cpu:
        torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))

    t0 = time.perf_counter()
    model = load_random_model(spec, dtype, device, from_host=args.dynamic_vram)
    logging.info("random %s (%s) ready in %.1f s; ComfyUI %s, patcher: %s", spec.description, dtype,
                 time.perf_counter() - t0, type(model.model).__name__, type(model).__name__)
    if args.torch_compile:
        from comfy_api.torch_helpers import set_torch_compile_wrapper
        model = model.clone()
        set_torch_compile_wrapper(model, backend=args.torch_compile)

    settle(model, resolutions, text_tokens, device, **workload)
    title = (f"# {'CPU' if cpu else torch.cuda.get_device_name(device)}, ComfyUI {type(model).__name__}"
             f"{' ' + args.comfy_args if args.comfy_args else ''}"
             f"{', TorchCompileModel ' + args.torch_compile if args.torch_compile else ''}, random {spec.description}, "
             f"cfg {cfg:g}, {steps} euler steps, median of steps after {args.warmup} warm-up, text {text_tokens} "
             f"tokens, {dtype}")
    if args.passthrough:
        variants = passthrough_variants(model)
        with no_helpers():
            rows = [row for res in resolutions for row in passthrough(variants, res, steps, args.warmup, repeat,
                                                                      text_tokens, device, workload)]
        print()
        print(f"{title}, {repeat} interleaved rounds")
        print_passthrough_table(rows)
        sys.stdout.flush()
        return rows
    rows = []
    baselines = {}
    median = lambda times: statistics.median(times[args.warmup:] or times)
    for res in resolutions:
        size = _latent_size(res, spec)
        _peak(device)
        repeats1 = [sample(model, size, steps, text_tokens, device, **workload) for _ in range(repeat)]
        out1, steps1, total1 = repeats1[0]
        baselines[res] = dict(out=out1, step=statistics.median(median(r[1]) for r in repeats1),
                              each=[median(r[1]) for r in repeats1], total=total1, peak=_peak(device))
        if args.kernel_baseline:
            baselines[res]["kernel_step"] = median(sample(_kernel_baseline(model), size, steps, text_tokens, device,
                                                          **workload)[1])
        if args.graph_baseline and not cpu:
            baselines[res]["graph_step"] = median(sample(_graphed_one_device(model, device), size, steps, text_tokens,
                                                         device, **workload)[1])
    e2e, busy = {}, {}
    first_size = _latent_size(resolutions[0], spec)
    if e2e_steps:
        e2e["1 device"] = _prompt(model, first_size, e2e_steps, text_tokens, device, "1 device", workload,
                                  args.host_profile)

    graph_settings = {"on": [True], "off": [False], "both": [False, True]}[args.cuda_graphs]
    shard_settings = {"on": [True], "off": [False], "both": [False, True]}[args.shard_weights]
    gather_settings = (args.shard_gathers or "auto").split(",")
    # Gather settings only change sharded runs.
    exchange_settings = (args.exchange or "auto").split(",")
    configurations = [(p, s, a, x, g) for p in args.parallelism.split(",") for s in shard_settings
                      for a in (gather_settings if s else ["auto"]) for x in exchange_settings
                      for g in graph_settings]
    for parallelism, shard_weights, gathers, exchange, graphs in configurations:
        exchange, _, parts = exchange.partition(":")
        patched = enable_multigpu(model, gpus=args.gpus, parallelism=parallelism, shard_weights=shard_weights,
                                  shard_gathers=gathers, exchange=exchange, exchange_parts=int(parts or 2),
                                  cuda_graphs=graphs)
        configured = parallelism + (" +sharded" if shard_weights else "") + \
            (" (all-gathered)" if shard_weights and gathers == "all-gather" else "")
        for res in resolutions:
            size = _latent_size(res, spec)
            _peak(device)
            repeatsn = [sample(patched, size, steps, text_tokens, device, **workload) for _ in range(repeat)]
            outn, stepsn, totaln = repeatsn[0]
            group = helper_group.current_group()
            # What the node did, not what was asked: it replays graphs only where that is safe (not under dynamic
            # VRAM or lowvram loading, say).
            label = configured + (f" ({group.plan.ulysses_exchange} exchange)" if group is not None and
                                  group.plan.ulysses_exchange != "nccl" else "") + \
                (" +graphs" if group is not None and group.graphs.entries else "")
            helper_peaks = group.helper_stats() if group is not None else {}
            base = baselines[res]
            eachn = [median(r[1]) for r in repeatsn]
            stepn = statistics.median(eachn)
            ratios = [b / n for b, n in zip(base["each"], eachn)]
            rows.append(dict(
                parallelism=label, layout=group.plan.describe() if group else "1 device (fallback)",
                res=res, tokens=spec.tokens(res, text_tokens), step1=base["step"], stepn=stepn,
                speedup=base["step"] / stepn, spread=(min(ratios), max(ratios)),
                kernel_speedup=base["kernel_step"] / stepn if "kernel_step" in base else None,
                graph_speedup=base["graph_step"] / stepn if "graph_step" in base else None,
                total1=base["total"], totaln=totaln,
                err=((outn.float() - base["out"].float()).norm() / base["out"].float().norm()).item(),
                peak1=base["peak"], peak0=_peak(device),
                helper_peaks=[s.get("peak_allocated") for s in helper_peaks.values()],
                helper_weights=[s.get("weight_bytes") for s in helper_peaks.values()],
                start_s=group.started_s if group else None))
        if e2e_steps:
            e2e[label] = _prompt(patched, first_size, e2e_steps, text_tokens, device, label, workload,
                                 args.host_profile)
        if args.profile:
            _profile(patched, first_size, text_tokens, device, f"{label}, N devices", workload)
        if args.gpu_busy and not cpu:
            busy[label] = _gpu_busy_or_none(patched, first_size, text_tokens, device, "", workload)
    if args.profile:
        _profile(model, first_size, text_tokens, device, "1 device", workload)
    if args.gpu_busy and not cpu:
        busy["1 device"] = _gpu_busy_or_none(model, first_size, text_tokens, device, "-1device", workload)

    print()
    print(title)
    if cpu:
        print(cpu_meaning())
    print_table(rows, cpu, repeat)
    print()
    for name, (busy_ms, span_ms, families) in ((n, b) for n, b in busy.items() if b):
        print(f"rank 0's GPU at {resolutions[0]}, {name}: {describe(busy_ms, span_ms, families)}")
    one_device, one_device_rest = e2e.get("1 device", (None, None))
    for name, (seconds, rest) in e2e.items():
        if name != "1 device":
            print(f"end-to-end {e2e_steps}-step prompt at {resolutions[0]}: 1 device {one_device:.2f} s, "
                  f"{name} {seconds:.2f} s, {'time ratio' if cpu else 'speed-up'} {one_device / seconds:.2f}x "
                  f"(warm: no model load, no helper "
                  f"start); outside the steps after the first: {one_device_rest * 1e3:.0f} ms (1 device), "
                  f"{rest * 1e3:.0f} ms ({name})")
    sys.stdout.flush()   # the figures are out before the helpers are ended
    helper_group.shutdown_group()
    return rows


if __name__ == "__main__":
    main()
