"""GPU evidence runs beyond raw speed, each 1 device vs N devices in one process (see docs/benchmarks.md):

    python -m comfy_xdit_patch.evidence spotcheck   # LoRA patches + FLUX ControlNet + Kontext reference, error vs 1
    python -m comfy_xdit_patch.evidence kill        # a helper SIGKILLed mid-sampling: the image still arrives
    python -m comfy_xdit_patch.evidence groups      # batch 4: one sequence-parallel group vs two groups

Without CUDA they run on CPU ranks with the tiny FLUX (``--cpu``), which is how the tests keep them working.
"""
import argparse
import logging
import os
import signal
import statistics
import time

from .bench import FLUX_DEV, TINY, load_random_flux, setup_comfy, sync_device, bfl_name


def _conds(tokens, seed):
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=generator),
             {"pooled_output": torch.randn(1, 768, generator=generator), "guidance": 3.5}]]


def run(model, latent, positive, negative, steps, device, on_step=None, seed=7):
    """ComfyUI's sampler; returns (latent, per-step seconds, total seconds)."""
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


def _err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _median_ms(times):
    return statistics.median(times[2:] or times) * 1e3


def _random_controlnet(size, dtype, device, depth=2, single=1):
    import torch
    import comfy.controlnet
    import comfy.ops
    from comfy.ldm.flux.controlnet import ControlNetFlux
    with torch.device("meta"):
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
    from .multigpu import enable_multigpu
    patched = model.clone()
    generator = torch.Generator().manual_seed(5)
    state = model.model.state_dict()
    keys = [k for k in state if k.endswith(".weight") and state[k].ndim == 2][:8]
    patched.add_patches({k: ((torch.randn(state[k].shape, generator=generator) * 0.01).to(state[k].dtype),)
                         for k in keys}, 1.0)
    hint = torch.rand(1, res, res, 3, generator=generator)
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        _conds(tokens, 1), _conds(tokens, 2), _random_controlnet(size, dtype, device), hint, 0.8, 0.0, 1.0)
    reference = {"samples": torch.randn(1, 16, res // 8, res // 8, generator=generator)}
    positive = ReferenceLatent.execute(positive, reference).result[0]
    latent = torch.zeros(1, 16, res // 8, res // 8)
    one, t1, _ = run(patched, latent, positive, negative, args.steps, device)
    many, tn, _ = run(enable_multigpu(patched, gpus=args.gpus, parallelism=args.parallelism), latent, positive,
                      negative, args.steps, device)
    return [("LoRA patches + ControlNet + Kontext", res, _median_ms(t1), _median_ms(tn), _err(many, one))]


def kill(args, model, device, size, dtype, res, tokens):
    import torch
    from .multigpu import enable_multigpu
    from .runtime import group as helpers
    latent = torch.zeros(1, 16, res // 8, res // 8)
    positive, negative = _conds(tokens, 1), _conds(tokens, 2)
    one, t1, total1 = run(model, latent, positive, negative, args.steps, device)
    parallel = enable_multigpu(model, gpus=args.gpus, parallelism=args.parallelism)
    run(parallel, latent, positive, negative, 2, device)                       # helpers up and warm
    at = max(1, args.steps // 3)

    def kill_helper(step):
        if step == at:
            os.kill(next(iter(helpers.current_group().processes.values())).pid, signal.SIGKILL)

    got, tn, totaln = run(parallel, latent, positive, negative, args.steps, device, on_step=kill_helper)
    recovery = tn[at] - statistics.median(t1) if len(tn) > at else float("nan")
    return [(f"helper SIGKILLed after step {at + 1}/{args.steps}: rest on 1 device", res, total1 * 1e3,
             totaln * 1e3, _err(got, one), f"recovery (failed step minus a 1-device step): {recovery * 1e3:.0f} ms")]


def groups(args, model, device, size, dtype, res, tokens):
    import torch
    from .multigpu import enable_multigpu
    latent = torch.randn(4, 16, res // 8, res // 8, generator=torch.Generator().manual_seed(4))
    positive, negative = _conds(tokens, 1), _conds(tokens, 2)
    rows = []
    one, t1, _ = run(model, latent, positive, negative, args.steps, device)
    for label, degree in (("batch 4, one group", 0), ("batch 4, groups of 1 (round_robin)", 1)):
        got, tn, _ = run(enable_multigpu(model, gpus=args.gpus, parallelism=args.parallelism,
                                         sequence_degree=degree), latent, positive, negative, args.steps, device)
        rows.append((label, res, _median_ms(t1), _median_ms(tn), _err(got, one)))
    return rows


SCENARIOS = {"spotcheck": spotcheck, "kill": kill, "groups": groups}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--res", type=int, default=None, help="image size (GPU default 1024; CPU 128)")
    parser.add_argument("--steps", type=int, default=None, help="GPU default 10 (kill: 28); CPU 4")
    parser.add_argument("--parallelism", default="auto")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    import torch
    cpu = args.cpu or not torch.cuda.is_available()
    setup_comfy(cpu)
    import comfy.model_management
    from .runtime import group as helpers
    device = comfy.model_management.get_torch_device()
    size, dtype = (TINY, torch.float32) if cpu else (FLUX_DEV, torch.bfloat16)
    if cpu:
        torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))
    res = args.res or (128 if cpu else 1024)
    args.steps = args.steps or (4 if cpu else (28 if args.scenario == "kill" else 10))
    tokens = 77 if cpu else 512
    model = load_random_flux(size, dtype, device)
    try:
        rows = SCENARIOS[args.scenario](args, model, device, size, dtype, res, tokens)
    finally:
        helpers.shutdown_group()
    print(f"\n# {args.scenario}: {'CPU' if cpu else torch.cuda.get_device_name(device)}, {args.gpus} devices, "
          f"{args.steps} steps, {dtype}")
    print("| case | res | 1-dev ms | N-dev ms | rel. err vs 1 dev | note |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        note = row[5] if len(row) > 5 else ""
        print(f"| {row[0]} | {row[1]} | {row[2]:.1f} | {row[3]:.1f} | {row[4]:.2e} | {note} |")
    return rows


if __name__ == "__main__":
    main()
