"""1 device vs N devices on ComfyUI's own FLUX, through the Enable Multi-GPU patch: speed-up and equivalence.

    python -m comfy_xdit_patch.bench                      # every visible GPU, FLUX.1-dev size, random bf16 weights
    python -m comfy_xdit_patch.bench --gpus 2 --res 1024,2048 --steps 10
    python -m comfy_xdit_patch.bench --cpu                # no GPU: CPU ranks over gloo and a tiny FLUX

Each resolution is sampled with ComfyUI's real sampler (``comfy.sample.sample``, euler/simple) on the unpatched
model and on the patched clone, in the same process, with the same seed. Per-step times come from the sampler
callback after a CUDA synchronise; the table reports medians after warm-up, the first timed sampling run, the
relative L2 error of the final latent against 1 device, peak memory per device and the helpers' start, in the columns
that have a figure in this run; a whole warm prompt (``--e2e-steps``: 28 steps on GPUs, 4 on CPU) follows it. On CPU
ranks the error is the result: the ranks share the machine's cores, so their times measure the plumbing, not a
speed-up. With ``--kernel-baseline`` the 1-device run is repeated with the kernel that ring attention uses, so that a
kernel choice is never reported as parallel speed-up.
"""
import argparse
import contextlib
import logging
import os
import shlex
import statistics
import sys
import time

FLUX_DEV = dict(hidden=3072, heads=24, depth=19, depth_single=38)
TINY = dict(hidden=512, heads=4, depth=2, depth_single=2)


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


@contextlib.contextmanager
def weight_shapes():
    """Build a model on meta to read its state dict's shapes. Under dynamic VRAM ComfyUI's layers create no weight
    until one is loaded (comfy/ops.py), so their state dict would be nearly empty; the build runs with that off."""
    import torch
    import comfy.memory_management
    lazy = comfy.memory_management.aimdo_enabled
    comfy.memory_management.aimdo_enabled = False
    try:
        with torch.device("meta"):
            yield
    finally:
        comfy.memory_management.aimdo_enabled = lazy


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


def random_flux_state_dict(size, dtype, device, seed=0, guidance=True, context_dim=4096, in_channels=16):
    """BFL-named FLUX weights with random values, created on ``device``. ComfyUI's model detection reads the sizes
    back from the shapes; it hard-codes axes_dim [16, 56, 56], so ``hidden`` must be 128 x ``heads``."""
    import torch
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    with weight_shapes():
        shapes = Flux(operations=comfy.ops.disable_weight_init, dtype=dtype, device="meta", in_channels=in_channels,
                      out_channels=16, vec_in_dim=768, context_in_dim=context_dim, hidden_size=size["hidden"],
                      mlp_ratio=4.0, num_heads=size["heads"], depth=size["depth"],
                      depth_single_blocks=size["depth_single"], axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                      qkv_bias=True, guidance_embed=guidance, txt_ids_dims=[]).state_dict()
    generator = torch.Generator(device=device).manual_seed(seed)
    return {bfl_name(k): (torch.randn(v.shape, generator=generator, device=device, dtype=torch.float32) *
                          (0.02 if v.ndim > 1 else 0.01)).to(dtype) for k, v in shapes.items()}


def bfl_name(key):
    """BFL checkpoints name the q/k RMSNorm weights '.scale'; ComfyUI renames them to '.weight' on load."""
    return key[:-len(".weight")] + ".scale" if key.endswith(("query_norm.weight", "key_norm.weight")) else key


def load_random_flux(size, dtype, device, seed=0, from_host=False):
    """A random FLUX loaded by ComfyUI's own diffusion-model loader. The weights are made on ``device`` (fast);
    ``from_host``: handed to the loader in host memory, as a file's weights are. Dynamic VRAM needs that: its layers
    stream a weight from the host and apply LoRA patches on the way (comfy/ops.py cast_bias_weight), but a weight
    already on the GPU takes the classic path, which leaves those patches out (ComfyUI's own 1-GPU result would then
    lack the patches that the helpers' weights have)."""
    import comfy.sd
    state = random_flux_state_dict(size, dtype, device, seed)
    if from_host:
        state = {key: value.cpu() for key, value in state.items()}
    return comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": dtype})


def conditioning(tokens, seed):
    """Random FLUX conditioning (T5 tokens, CLIP pooled output, guidance) in ComfyUI's format."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=generator), {
        "pooled_output": torch.randn(1, 768, generator=generator), "guidance": 3.5}]]


def sync_device(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sampler(model, latent, positive, negative, steps, device, on_step=None, seed=7):
    """ComfyUI's sampler (euler, cfg 1) with a synchronised mark after every step; ``on_step(step)`` runs there too.
    Returns (final latent, per-step seconds, total seconds)."""
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent, seed)
    marks = []

    def callback(step, x0, x, total):
        sync_device(device)
        marks.append(time.perf_counter())
        if on_step:
            on_step(step)

    sync_device(device)
    start = time.perf_counter()
    out = comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", positive, negative, latent,
                              callback=callback, disable_pbar=True, seed=seed)
    sync_device(device)
    return out, [b - a for a, b in zip(marks, marks[1:])], time.perf_counter() - start


def sample(model, latent_hw, steps, text_tokens, device, seed=7):
    """The benchmark's run: an empty latent of ``latent_hw`` and random conditioning of ``text_tokens``."""
    import torch
    return run_sampler(model, torch.zeros(1, 16, *latent_hw), conditioning(text_tokens, 1),
                       conditioning(text_tokens, 2), steps, device, seed=seed)


def settle(model, resolutions, text_tokens, device):
    """One step at each resolution, unmeasured. ComfyUI's first prompt in a process computes slightly differently
    from every later one (FLUX.1-dev size at 1024² on an H200: 6.93e-3 against the second prompt, which every later
    one equals bit for bit; docs/benchmarks.md, "Correctness"), so no figure may come from the first prompt: a 1-GPU
    reference taken there would count that difference as the parallel run's error."""
    for res in resolutions:
        sample(model, (res // 8, res // 8), 1, text_tokens, device)


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

    def wrapper(executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs):
        tensors = []
        skeleton = transport.extract_tensors(dict(kwargs, x=x, timestep=timestep, context=context, y=y,
                                                  guidance=guidance, ref_latents=ref_latents, control=control), tensors)
        key = keys.setdefault(pickle.dumps((skeleton, transport.layout(tensors))), len(keys))
        mode = graphs.choose(key)

        def forward(inputs):
            a = transport.insert_tensors(skeleton, inputs)
            return executor(a.pop("x"), a.pop("timestep"), a.pop("context"), a.pop("y"), a.pop("guidance"),
                            a.pop("ref_latents"), a.pop("control"), transformer_options, **a)

        if mode == EAGER:
            return graphs.run(key, mode, forward, tensors)
        return graphs.run(key, mode, forward, [t.to(device) for t in tensors]).clone()

    clone = model.clone()
    clone.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "bench_one_device_graph", wrapper)
    return clone


def _profile(model, latent_hw, text_tokens, device, label):
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sample(model, latent_hw, 2, text_tokens, device)
    with profile(activities=activities) as prof:
        sample(model, latent_hw, 3, text_tokens, device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(f"\n## profile of rank 0, 3 steps, {label}")
    print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60))


def _gpu_busy(model, latent_hw, text_tokens, device, tag, steps=4):
    """Rank 0's GPU over ``steps`` steps (profiling.kernel_time), from CUDA activity only (no CPU-op tracing, so the
    host runs nearly as fast as unprofiled), unless COMFY_XDIT_TRACE_DIR asks for a trace of the host's CUDA calls."""
    from torch.profiler import profile
    from comfy_xdit_patch.profiling import export_trace, kernel_time, profiler_activities
    sample(model, latent_hw, 2, text_tokens, device)
    with profile(activities=profiler_activities()) as prof:
        sample(model, latent_hw, steps, text_tokens, device)
    export_trace(prof, 0, tag)
    return kernel_time(prof, steps)


def _prompt(model, latent_hw, steps, text_tokens, device, label, host_profile=False):
    """A whole warm prompt: (its seconds, the seconds outside its steps after the first, i.e. the first step, the
    sampler's set-up and wind-down and the node's work around the sampling run). With ``host_profile`` the prompt runs
    under cProfile and the host functions that took longest are printed."""
    profiler = None
    if host_profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    _, step_times, total = sample(model, latent_hw, steps, text_tokens, device)
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
    columns = table_columns(cpu, repeat)
    cells = [[cell(r) for _, cell in columns] for r in rows]
    kept = [i for i in range(len(columns)) if any(row[i] is not None for row in cells)]
    print("| " + " | ".join(columns[i][0] for i in kept) + " |")
    print("|" + "---|" * len(kept))
    for row in cells:
        print("| " + " | ".join("-" if row[i] is None else row[i] for i in kept) + " |")
    print("1st run s: the first timed sampling run of that size; on N devices the configuration's first one includes "
          "the helpers' start and weight sync")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=0, help="devices for the parallel run (0 = all; CPU: 2)")
    parser.add_argument("--cpu", action="store_true", help="CPU ranks over gloo and a tiny FLUX (default without CUDA)")
    parser.add_argument("--res", default=None, help="image sizes, comma separated (GPU default 1024,2048; CPU 256)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per run (GPU default 10; CPU 4)")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the per-step median")
    parser.add_argument("--text-tokens", type=int, default=None, help="text length (GPU default 512; CPU 77)")
    parser.add_argument("--parallelism", default="auto", help="auto, ulysses, ring, usp or a comma list of them")
    parser.add_argument("--model", choices=("flux-dev", "tiny"), default=None)
    parser.add_argument("--kernel-baseline", action="store_true", help="also time 1 device with the ring kernel")
    parser.add_argument("--repeat", type=int, default=1, help="sample each configuration this many times (1 device "
                        "and N devices alike) and report the median of the runs' medians, with the min-max speed-up")
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

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    import torch
    cpu = args.cpu or not torch.cuda.is_available()
    setup_comfy(cpu, args.comfy_args, dynamic_vram=args.dynamic_vram)
    if args.dynamic_vram and not enable_dynamic_vram():
        sys.exit("--dynamic-vram: comfy-aimdo could not switch dynamic VRAM on here (it needs an NVIDIA GPU)")
    import comfy.model_management
    from comfy_xdit_patch.multigpu import enable_multigpu
    from comfy_xdit_patch.profiling import describe
    from comfy_xdit_patch.runtime import helper_group

    device = comfy.model_management.get_torch_device()
    size = TINY if (args.model == "tiny" or (args.model is None and cpu)) else FLUX_DEV
    dtype = torch.float32 if cpu else torch.bfloat16
    resolutions = [int(r) for r in (args.res or ("256" if cpu else "1024,2048")).split(",")]
    steps = args.steps or (4 if cpu else 10)
    text_tokens = args.text_tokens or (77 if cpu else 512)
    e2e_steps = (4 if cpu else 28) if args.e2e_steps is None else args.e2e_steps
    if cpu:
        torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))

    t0 = time.perf_counter()
    model = load_random_flux(size, dtype, device, from_host=args.dynamic_vram)
    logging.info("random %s FLUX (%s) ready in %.1f s; ComfyUI patcher: %s", "FLUX.1-dev-size" if size is FLUX_DEV
                 else "tiny", dtype, time.perf_counter() - t0, type(model).__name__)
    if args.torch_compile:
        from comfy_api.torch_helpers import set_torch_compile_wrapper
        model = model.clone()
        set_torch_compile_wrapper(model, backend=args.torch_compile)

    settle(model, resolutions, text_tokens, device)
    rows = []
    baselines = {}
    median = lambda times: statistics.median(times[args.warmup:] or times)
    for res in resolutions:
        hw = (res // 8, res // 8)
        _peak(device)
        repeats1 = [sample(model, hw, steps, text_tokens, device) for _ in range(args.repeat)]
        out1, steps1, total1 = repeats1[0]
        baselines[res] = dict(out=out1, step=statistics.median(median(r[1]) for r in repeats1),
                              each=[median(r[1]) for r in repeats1], total=total1, peak=_peak(device))
        if args.kernel_baseline:
            baselines[res]["kernel_step"] = median(sample(_kernel_baseline(model), hw, steps, text_tokens, device)[1])
        if args.graph_baseline and not cpu:
            baselines[res]["graph_step"] = median(sample(_graphed_one_device(model, device), hw, steps, text_tokens,
                                                         device)[1])
    e2e, busy = {}, {}
    if e2e_steps:
        e2e["1 device"] = _prompt(model, (resolutions[0] // 8,) * 2, e2e_steps, text_tokens, device, "1 device",
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
            hw = (res // 8, res // 8)
            _peak(device)
            repeatsn = [sample(patched, hw, steps, text_tokens, device) for _ in range(args.repeat)]
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
                res=res, tokens=(res // 16) ** 2 + text_tokens, step1=base["step"], stepn=stepn,
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
            e2e[label] = _prompt(patched, (resolutions[0] // 8,) * 2, e2e_steps, text_tokens, device,
                                 label, args.host_profile)
        if args.profile:
            _profile(patched, (resolutions[0] // 8,) * 2, text_tokens, device, f"{label}, N devices")
        if args.gpu_busy and not cpu:
            busy[label] = _gpu_busy_or_none(patched, (resolutions[0] // 8,) * 2, text_tokens, device, "")
    if args.profile:
        _profile(model, (resolutions[0] // 8,) * 2, text_tokens, device, "1 device")
    if args.gpu_busy and not cpu:
        busy["1 device"] = _gpu_busy_or_none(model, (resolutions[0] // 8,) * 2, text_tokens, device, "-1device")

    print()
    print(f"# {'CPU' if cpu else torch.cuda.get_device_name(device)}, ComfyUI {type(model).__name__}"
          f"{' ' + args.comfy_args if args.comfy_args else ''}"
          f"{', TorchCompileModel ' + args.torch_compile if args.torch_compile else ''}, {steps} euler steps, median of steps after "
          f"{args.warmup} warm-up, text {text_tokens} tokens, {dtype}")
    if cpu:
        print(cpu_meaning())
    print_table(rows, cpu, args.repeat)
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
