"""GPU evidence runs beyond raw speed, each 1 device vs N devices in one process (see docs/benchmarks.md):

    python -m comfy_xdit_patch.evidence spotcheck   # LoRA patches + FLUX ControlNet + Kontext reference, error vs 1
    python -m comfy_xdit_patch.evidence kill        # a helper SIGKILLed mid-sampling: the image still arrives
    python -m comfy_xdit_patch.evidence stall       # a helper stuck in a collective: timeout, then the image arrives
    python -m comfy_xdit_patch.evidence groups      # batch 4: one sequence-parallel group vs two groups
    python -m comfy_xdit_patch.evidence formats     # scaled-fp8 checkpoint (+ weight patches), fp8_e4m3fn_fast
    python -m comfy_xdit_patch.evidence dynamic     # weight patches on a model loaded under ComfyUI's dynamic VRAM
    python -m comfy_xdit_patch.evidence devices     # drop-in VAE / CLIP loaders on another GPU vs the native ones
    python -m comfy_xdit_patch.evidence offload     # one GPU: classic loading keeps ComfyUI's copy of the blocks off

Without CUDA they run on CPU ranks with the tiny FLUX (``--cpu``), which is how the tests keep them working.
"""
import argparse
import logging
import os
import sys
import signal
import statistics
import time

from .bench import (FLUX_DEV, TINY, bfl_name, conditioning, enable_dynamic_vram, load_random_flux,
                    random_flux_state_dict, run_sampler, settle, setup_comfy, sync_device, weight_shapes)


def _parallel(args, model, **options):
    """``model`` through Enable Multi-GPU with the command line's devices, layout and weight sharding."""
    from .multigpu import enable_multigpu
    return enable_multigpu(model, gpus=args.gpus, parallelism=args.parallelism, shard_weights=args.shard_weights,
                           shard_gathers=args.shard_gathers, exchange=args.exchange, **options)


def _one_vs_many(args, model, latent, positive, negative, device, outputs=None):
    """The same sampling on one device and through Enable Multi-GPU: (1-device ms/step, N-device ms/step, rel. err).
    ``outputs``: a list that receives the two final latents."""
    one, t1, _ = run_sampler(model, latent, positive, negative, args.steps, device)
    many, tn, _ = run_sampler(_parallel(args, model), latent, positive, negative, args.steps, device)
    if outputs is not None:
        outputs.extend((one, many))
    return _median_ms(t1), _median_ms(tn), _err(many, one)


def _prompt(res, tokens, batch=1):
    """An empty latent of ``res``² (or random rows, for a batch) and the two random conditionings every scenario
    samples with."""
    import torch
    shape = (batch, 16, res // 8, res // 8)
    latent = torch.zeros(shape) if batch == 1 else torch.randn(shape, generator=torch.Generator().manual_seed(4))
    return latent, conditioning(tokens, 1), conditioning(tokens, 2)


def _err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _median_ms(times):
    return statistics.median(times[2:] or times) * 1e3


def _random_controlnet(size, dtype, device, depth=2, single=1):
    import torch
    import comfy.controlnet
    import comfy.ops
    from comfy.ldm.flux.controlnet import ControlNetFlux
    with weight_shapes():
        shapes = ControlNetFlux(operations=comfy.ops.disable_weight_init, dtype=dtype, device="meta", in_channels=16,
                                out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=size["hidden"],
                                mlp_ratio=4.0, num_heads=size["heads"], depth=depth, depth_single_blocks=single,
                                axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
                                txt_ids_dims=[]).state_dict()
    generator = torch.Generator(device=device).manual_seed(21)
    state = {bfl_name(k): (torch.randn(v.shape, generator=generator, device=device) * 0.02).to(dtype)
             for k, v in shapes.items()}
    return comfy.controlnet.load_controlnet_state_dict(state)


def spotcheck(args, model, device, size, dtype, res, tokens):
    import torch
    import nodes
    from comfy_extras.nodes_edit_model import ReferenceLatent
    patched = _with_weight_patches(model)
    generator = torch.Generator().manual_seed(5)
    hint = torch.rand(1, res, res, 3, generator=generator)
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        conditioning(tokens, 1), conditioning(tokens, 2), _random_controlnet(size, dtype, device), hint, 0.8, 0.0, 1.0)
    reference = {"samples": torch.randn(1, 16, res // 8, res // 8, generator=generator)}
    positive = ReferenceLatent.execute(positive, reference).result[0]
    latent = torch.zeros(1, 16, res // 8, res // 8)
    return [("LoRA patches + ControlNet + Kontext", res,
             *_one_vs_many(args, patched, latent, positive, negative, device))]


def kill(args, model, device, size, dtype, res, tokens):
    from .runtime import helper_group
    latent, positive, negative = _prompt(res, tokens)
    one, t1, total1 = run_sampler(model, latent, positive, negative, args.steps, device)
    parallel = _parallel(args, model)
    run_sampler(parallel, latent, positive, negative, 2, device)                       # helpers up and warm
    at = max(1, args.steps // 3)

    def kill_helper(step):
        if step == at:
            group = helper_group.current_group()
            if group is None or not group.processes:
                raise RuntimeError("kill: the helpers are not running (they did not start: see the log above), so "
                                   "there is no helper to kill")
            os.kill(next(iter(group.processes.values())).pid, signal.SIGKILL)

    got, tn, totaln = run_sampler(parallel, latent, positive, negative, args.steps, device, on_step=kill_helper)
    recovery = tn[at] - statistics.median(t1) if len(tn) > at else float("nan")
    # The next prompt starts fresh helpers and runs in parallel again.
    again, t_again, _ = run_sampler(parallel, latent, positive, negative, args.steps, device)
    fresh = helper_group.current_group()
    return [(f"helper SIGKILLed after step {at + 1}/{args.steps}: rest on 1 device", res, total1 * 1e3,
             totaln * 1e3, _err(got, one), f"recovery (failed step minus a 1-device step): {recovery * 1e3:.0f} ms"),
            ("next prompt, fresh helpers", res, _median_ms(t1), _median_ms(t_again), _err(again, one),
             f"helpers running: {fresh is not None and fresh.alive()}")]


def stall(args, model, device, size, dtype, res, tokens):
    """A helper that stops answering inside a collective (test hook: it sleeps before its 3rd call's tensors) while
    staying alive: rank 0 gives up after COMFY_XDIT_COLLECTIVE_TIMEOUT (10 s here, 4 s on CPU ranks) and finishes on
    one device."""
    latent, positive, negative = _prompt(res, tokens)
    one, t1, total1 = run_sampler(model, latent, positive, negative, args.steps, device)
    # The helpers start through the tests' fault-injecting entry point (the product has no test hooks).
    from comfy_xdit_patch.runtime import launchers
    hooks = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "helper_hooks.py")
    command = launchers.HELPER
    launchers.HELPER = [sys.executable, hooks]
    # 10 s on GPUs (what docs/benchmarks.md records); 4 s on CPU ranks, whose steps take milliseconds.
    os.environ.update(COMFY_XDIT_TEST_STALL_AT_FORWARD="3",
                      COMFY_XDIT_COLLECTIVE_TIMEOUT="4" if device.type == "cpu" else "10")
    try:
        got, tn, totaln = run_sampler(_parallel(args, model), latent, positive, negative, args.steps, device)
    finally:
        launchers.HELPER = command
        for name in ("COMFY_XDIT_TEST_STALL_AT_FORWARD", "COMFY_XDIT_COLLECTIVE_TIMEOUT"):
            os.environ.pop(name)
    stalled = max(tn)
    return [(f"helper stalled at its 3rd call of {args.steps}: rest on 1 device", res, total1 * 1e3, totaln * 1e3,
             _err(got, one), f"slowest step (the stalled one): {stalled:.1f} s")]


def groups(args, model, device, size, dtype, res, tokens):
    latent, positive, negative = _prompt(res, tokens, batch=4)
    rows = []
    one, t1, _ = run_sampler(model, latent, positive, negative, args.steps, device)
    for label, degree in (("batch 4, one group", 0), ("batch 4, groups of 1 (round_robin)", 1)):
        got, tn, _ = run_sampler(_parallel(args, model, sequence_degree=degree), latent, positive, negative, args.steps,
                                 device)
        rows.append((label, res, _median_ms(t1), _median_ms(tn), _err(got, one)))
    return rows


def _with_weight_patches(model, seed=5, count=8, strength=1.0):
    """A clone with LoRA-style weight patches on the first ``count`` 2-D weights (what a LoRA loader adds), at
    ``strength``."""
    import torch
    patched = model.clone()
    generator = torch.Generator().manual_seed(seed)
    state = model.model.diffusion_model.state_dict()
    keys = [k for k in state if k.endswith(".weight") and state[k].ndim == 2 and state[k].is_floating_point()][:count]
    patched.add_patches({"diffusion_model." + k: ((torch.randn(state[k].shape, generator=generator) * 0.01).to(
        torch.float32),) for k in keys}, strength)
    return patched


def scaled_fp8_state_dict(state, input_scale=None, rest_dtype=None, blocks=("double_blocks.", "single_blocks.")):
    """``state`` as a ComfyUI "scaled fp8" checkpoint: Linear weights under ``blocks`` (FLUX's by default) in
    float8_e4m3fn with a per-layer fp32 'scale_weight' (and a fixed 'scale_input' when ``input_scale`` is given;
    without one ComfyUI scales activations by their own amax), a 'scaled_fp8' marker; everything else unchanged, or
    cast to ``rest_dtype``."""
    import torch
    fp8 = torch.float8_e4m3fn
    out = {"scaled_fp8": torch.empty(0, dtype=fp8)}
    for key, value in state.items():
        if key.startswith(tuple(blocks)) and key.endswith(".weight") and value.ndim == 2:
            layer = key[:-len(".weight")]
            scale = (value.float().abs().amax() / torch.finfo(fp8).max).clamp(min=1e-12)
            out[key] = (value.float() / scale).to(fp8)
            out[layer + ".scale_weight"] = scale.reshape(())
            if input_scale is not None:
                out[layer + ".scale_input"] = torch.tensor(input_scale, dtype=torch.float32)
        else:
            out[key] = value if rest_dtype is None else value.to(rest_dtype)
    return out


def formats(args, model, device, size, dtype, res, tokens):
    """Quantized checkpoints on N devices against the same checkpoint on one."""
    import torch
    import comfy.model_management
    import comfy.sd
    latent, positive, negative = _prompt(res, tokens)
    rows = []

    def scaled_fp8():
        state = scaled_fp8_state_dict(random_flux_state_dict(size, dtype, device))
        return _with_weight_patches(comfy.sd.load_diffusion_model_state_dict(state))

    def fp8(fast):
        return lambda: comfy.sd.load_diffusion_model_state_dict(
            random_flux_state_dict(size, dtype, device),
            model_options={"dtype": torch.float8_e4m3fn, "fp8_optimizations": fast})

    # fp8_e4m3fn without _fast keeps the same fp8 weights but computes in bf16. Its 1-device result is the reference
    # for the _fast row: both of _fast's results are compared with it, so the table shows whether N devices stray
    # from the unquantized-activation result further than one device's fp8 activations already do. (Rounding each
    # activation to 3 mantissa bits turns the bf16-level differences of another attention split into whole fp8 steps
    # for the values near a rounding boundary; the question is whether that moves the image further than fp8 does.)
    reference = None
    for label, load in (("UNETLoader fp8_e4m3fn (fp8 weights, bf16 matmuls)", fp8(False)),
                        ("UNETLoader fp8_e4m3fn_fast (fp8 matmuls)", fp8(True)),
                        ("scaled-fp8 checkpoint + 8 weight patches", scaled_fp8)):
        case, outputs = load(), []
        row = _one_vs_many(args, case, latent, positive, negative, device, outputs)
        note = type(case).__name__
        if reference is None:
            reference = outputs[0]
        elif "_fast" in label:
            note += (f"; vs the bf16-matmul 1-device result: 1 dev {_err(outputs[0], reference):.2e}, "
                     f"N dev {_err(outputs[1], reference):.2e}")
        rows.append((label, res, *row, note))
        del case, outputs
        comfy.model_management.unload_all_models()
    return rows


def dynamic(args, model, device, size, dtype, res, tokens):
    """Weight patches under ComfyUI's dynamic VRAM (``main`` loads the model after switching it on): the helpers must
    receive the patched weights although ModelPatcherDynamic never patches them in place."""
    from .runtime import helper_group
    latent, positive, negative = _prompt(res, tokens)
    rows = [("8 weight patches, dynamic VRAM", res,
             *_one_vs_many(args, _with_weight_patches(model), latent, positive, negative, device),
             f"patcher: {type(model).__name__}")]
    # A strength change between two prompts: the running helpers must take the new weights (an error near the first
    # row's says they did; stale weights would be off by the whole patch).
    first = helper_group.current_group()
    syncs = first.weight_syncs if first is not None else 0
    second = _one_vs_many(args, _with_weight_patches(model, strength=0.3), latent, positive, negative, device)
    group = helper_group.current_group()
    note = "helpers not running" if group is None else (
        f"{'same' if group is first else 'new'} helpers, weight syncs {syncs} -> {group.weight_syncs}")
    rows.append(("next prompt, the patches at strength 0.3", res, *second, note))
    return rows


def random_vae_state_dict(seed=30):
    """A FLUX-style VAE (16 latent channels) with a narrow decoder (ComfyUI reads its width from decoder.conv_in);
    decoder weights only: it is used to decode."""
    import torch
    from comfy.ldm.modules.diffusionmodules.model import Decoder
    with weight_shapes():
        decoder = Decoder(ch=32, out_ch=3, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0,
                          in_channels=3, resolution=256, z_channels=16)
    generator = torch.Generator().manual_seed(seed)
    return {"decoder." + k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in decoder.state_dict().items()}


def random_clip_l_state_dict(seed=40):
    """CLIP-L at its real size (123 M parameters; ComfyUI's config is fixed) with random weights."""
    import torch
    import comfy.sd1_clip
    with weight_shapes():
        shapes = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32).state_dict()
    generator = torch.Generator().manual_seed(seed)
    return {k[len("transformer."):] if k.startswith("transformer.") else k: torch.randn(v.shape, generator=generator)
            * 0.02 for k, v in shapes.items() if v.dtype.is_floating_point}


def _timed(fn, device):
    sync_device(device)
    start = time.perf_counter()
    out = fn()
    sync_device(device)
    return out, (time.perf_counter() - start) * 1e3


def devices(args, model, device, size, dtype, res, tokens):
    """The drop-in XDiTVAELoader / XDiTCLIPLoader put their model on the chosen device (the last GPU; on the CPU,
    'cpu' for CLIP), and it computes what the native loader's model computes on the default device."""
    import tempfile
    import safetensors.torch
    import torch
    import folder_paths
    import nodes
    from .dropin import XDiTCLIPLoader, XDiTVAELoader
    root = tempfile.mkdtemp(prefix="xdit-evidence-")
    for folder, name, state in (("vae", "random_vae.safetensors", random_vae_state_dict()),
                                ("text_encoders", "random_clip_l.safetensors", random_clip_l_state_dict())):
        os.makedirs(os.path.join(root, folder))
        safetensors.torch.save_file(state, os.path.join(root, folder, name))
        folder_paths.add_model_folder_path(folder, os.path.join(root, folder))
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    rows = []
    latent = {"samples": torch.randn(1, 16, res // 8, res // 8, generator=torch.Generator().manual_seed(2))}
    native_vae = nodes.VAELoader().load_vae("random_vae.safetensors")[0]
    expected, native_ms = _timed(lambda: nodes.VAEDecode().decode(native_vae, latent)[0], device)
    if gpus > 1:
        choice = f"gpu:{gpus - 1}"
        vae = XDiTVAELoader.execute(vae_name="random_vae.safetensors", device=choice).result[0]
        got, ours_ms = _timed(lambda: nodes.VAEDecode().decode(vae, latent)[0], device)
        rows.append((f"XDiTVAELoader device={choice}: VAE decode", res, native_ms, ours_ms, _err(got, expected),
                     f"VAE on {vae.device}, native on {native_vae.device}"))
    clip_choice = f"gpu:{gpus - 1}" if gpus > 1 else "cpu"

    def encode(clip):
        return nodes.CLIPTextEncode().encode(clip, "a photo of a cat on a red sofa")[0][0][0]

    native_clip = nodes.CLIPLoader().load_clip("random_clip_l.safetensors", "stable_diffusion")[0]
    expected, native_ms = _timed(lambda: encode(native_clip), device)
    clip = XDiTCLIPLoader.execute(clip_name="random_clip_l.safetensors", type="stable_diffusion",
                                  device=clip_choice).result[0]
    got, ours_ms = _timed(lambda: encode(clip), device)
    rows.append((f"XDiTCLIPLoader device={clip_choice}: text encode", res, native_ms, ours_ms, _err(got, expected),
                 f"CLIP on {clip.patcher.load_device}, native on {native_clip.patcher.load_device}"))
    return rows


def offload(args, model, device, size, dtype, res, tokens):
    """One GPU, no helpers: what shard_weights does to ComfyUI's own copy of the model under classic loading
    (runtime/offloaded_blocks.py), with 8 weight patches. After ComfyUI's first load the blocks leave the GPU and
    only the rest stays; a warm prompt's loader moves nothing; ComfyUI's own step on the offloaded blocks (what a
    fallback would run before ``restore``) and after ``restore`` computes what the plain model does. Raises where
    one of these does not hold."""
    import torch
    import comfy.model_patcher
    import comfy.patcher_extension as ext
    from .runtime.offloaded_blocks import OffloadedBlocks, resident_outside_blocks
    if device.type != "cuda":
        raise SystemExit("offload: needs a GPU (the CPU path is tests/test_offloaded_blocks.py)")
    latent, positive, negative = _prompt(res, tokens)
    patched = _with_weight_patches(model)
    reference, ref_times, _ = run_sampler(patched, latent, positive, negative, args.steps, device)
    ours = patched.clone()
    kept = OffloadedBlocks()
    seen = {"offloading": True}

    def on_pre_run(model_patcher):   # as the node's, until the run that goes to one GPU
        if not seen["offloading"]:
            return
        sync_device(device)
        seen["before"] = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        seen["moved"] = kept.offload(model_patcher)
        sync_device(device)
        seen["offload_s"], seen["after"] = time.perf_counter() - start, torch.cuda.memory_allocated(device)

    ours.add_callback_with_key(ext.CallbacksMP.ON_PRE_RUN, "evidence", on_pre_run)
    ours.add_wrapper_with_key(ext.WrappersMP.PREPARE_SAMPLING, "evidence", kept.prepare_sampling_wrapper)
    loads = []
    original_load = comfy.model_patcher.ModelPatcher.load

    def counted_load(self, *a, **k):
        loads.append(type(self).__name__)
        return original_load(self, *a, **k)

    comfy.model_patcher.ModelPatcher.load = counted_load
    try:
        first, first_times, first_s = run_sampler(ours, latent, positive, negative, args.steps, device)
        first_seen, resident = dict(seen), resident_outside_blocks(ours)
        loads.clear()
        warm, warm_times, warm_s = run_sampler(ours, latent, positive, negative, args.steps, device)
        warm_loads, warm_seen = list(loads), dict(seen)
    finally:
        comfy.model_patcher.ModelPatcher.load = original_load
    seen["offloading"] = False
    sync_device(device)
    start = time.perf_counter()
    kept.restore(ours)
    sync_device(device)
    restore_s, restored_bytes = time.perf_counter() - start, torch.cuda.memory_allocated(device)
    plain, plain_times, _ = run_sampler(ours, latent, positive, negative, args.steps, device)
    gib = 2 ** 30
    rows = [
        ("first prompt: ComfyUI loads, then its copy of the blocks leaves the GPU", res, _median_ms(ref_times),
         _median_ms(first_times), _err(first, reference),
         f"allocated {first_seen['before'] / gib:.1f} -> {first_seen['after'] / gib:.2f} GiB, "
         f"{first_seen['moved'] / gib:.1f} GiB moved in {first_seen['offload_s']:.1f} s; the rest resident: "
         f"{resident}; prompt {first_s:.1f} s; ComfyUI's step casts the blocks from host RAM"),
        ("warm prompt", res, _median_ms(ref_times), _median_ms(warm_times), _err(warm, reference),
         f"ModelPatcher.load calls: {len(warm_loads)}; allocated at the run's start {warm_seen['before'] / gib:.2f} "
         f"GiB; prompt {warm_s:.1f} s"),
        ("restore (a run that goes to one GPU), then a prompt", res, _median_ms(ref_times),
         _median_ms(plain_times), _err(plain, reference),
         f"restored in {restore_s:.1f} s, allocated {restored_bytes / gib:.1f} GiB"),
    ]
    problems = [problem for problem, failed in (
        ("the blocks did not leave the GPU", first_seen["after"] > first_seen["before"] / 4),
        ("weights outside the blocks left the GPU", not resident),
        ("ComfyUI loaded the model again for the warm prompt", warm_loads),
        ("the warm prompt started with the blocks on the GPU", warm_seen["before"] > first_seen["before"] / 4),
        ("a result differs from the plain model's", max(row[4] for row in rows) > 2e-2),
        ("the restored blocks are not back on the GPU", restored_bytes < first_seen["before"] * 0.9),
        ("the step after the restore still casts the blocks", _median_ms(plain_times) > 1.3 * _median_ms(ref_times)))
        if failed]
    if problems:
        raise AssertionError("offload: " + "; ".join(problems) + f" ({rows})")
    return rows


SCENARIOS = {"spotcheck": spotcheck, "kill": kill, "stall": stall, "groups": groups, "formats": formats, "dynamic": dynamic,
             "devices": devices, "offload": offload}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="+", choices=sorted(SCENARIOS),
                        help="one or more, run one after another in this process (one ComfyUI start, one model)")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--res", type=int, default=None, help="image size (GPU default 1024; CPU 128)")
    parser.add_argument("--steps", type=int, default=None, help="GPU default 10 (kill: 28); CPU 4")
    parser.add_argument("--parallelism", default="auto")
    parser.add_argument("--shard-weights", action="store_true", help="the node's shard_weights")
    parser.add_argument("--shard-gathers", default="auto", help="the node's shard_gathers: auto, pull or all-gather")
    parser.add_argument("--exchange", default="auto", help="the node's exchange: auto, nccl, symmetric or copy-engine")
    parser.add_argument("--dynamic-vram", action="store_true", help="ComfyUI's dynamic VRAM for the model (always on "
                        "for the 'dynamic' scenario); GPU only")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    import torch
    cpu = args.cpu or not torch.cuda.is_available()
    dynamic_vram = "dynamic" in args.scenario or args.dynamic_vram
    setup_comfy(cpu, dynamic_vram=dynamic_vram)
    if dynamic_vram:
        logging.info("dynamic VRAM: %s", "on" if enable_dynamic_vram() else "not available (classic ModelPatcher)")
    import comfy.model_management
    from .runtime import helper_group
    device = comfy.model_management.get_torch_device()
    size, dtype = (TINY, torch.float32) if cpu else (FLUX_DEV, torch.bfloat16)
    if cpu:
        torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))
    res = args.res or (128 if cpu else 1024)
    tokens = 77 if cpu else 512
    # formats and devices load their own models: no FLUX.1-dev-size model beside them
    model = None
    if set(args.scenario) - {"formats", "devices"}:
        model = load_random_flux(size, dtype, device, from_host=dynamic_vram)
        settle(model, [res], tokens, device)   # no figure from the process's first prompt (bench.settle)
    rows = {}
    for scenario in args.scenario:
        scenario_args = argparse.Namespace(**vars(args))
        scenario_args.steps = args.steps or (4 if cpu else (28 if scenario == "kill" else 10))
        try:
            rows[scenario] = SCENARIOS[scenario](scenario_args, model if scenario not in ("formats", "devices")
                                                 else None, device, size, dtype, res, tokens)
        finally:
            helper_group.shutdown_group()
        print(f"\n# {scenario}: {'CPU' if cpu else torch.cuda.get_device_name(device)}, {args.gpus} devices, "
              f"{scenario_args.steps} steps, {dtype}")
        print("| case | res | 1-dev ms | N-dev ms | rel. err vs 1 dev | note |")
        print("|---|---|---|---|---|---|")
        for row in rows[scenario]:
            note = row[5] if len(row) > 5 else ""
            print(f"| {row[0]} | {row[1]} | {row[2]:.1f} | {row[3]:.1f} | {row[4]:.2e} | {note} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
