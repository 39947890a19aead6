"""Measuring tool (not product code), one GPU: is ComfyUI's own 1-GPU FLUX result the same from one prompt to the next
in one process? (`evidence offload`, eighth session: every row differed from the first prompt by the same 6.77e-3.)

    python3 tools/repeat_probe.py [--res 1024] [--steps 6] [--repeats 3] [--locate]

Samples the same prompt ``--repeats`` times on one model and prints every run's relative error against the first and
against the previous run, plainly and with the bench's 8 LoRA-style weight patches. ``--locate``: in the first model
call of the first two prompts, every module's output is summed; the first modules whose sums differ say where the
first prompt computes differently.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--res", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--locate", action="store_true")
    args = parser.parse_args()
    from comfy_xdit_patch.bench import FLUX_DEV, load_random_flux, sample, setup_comfy
    setup_comfy(False)
    import torch
    import comfy.model_management
    from comfy_xdit_patch.evidence import _err, _with_weight_patches
    device = comfy.model_management.get_torch_device()
    model = load_random_flux(FLUX_DEV, torch.bfloat16, device)
    print(f"torch {torch.__version__}, cudnn.benchmark {torch.backends.cudnn.benchmark}, "
          f"deterministic {torch.are_deterministic_algorithms_enabled()}")
    if args.locate:
        locate(model, args, device, sample)
    for name, patcher in (("plain", model), ("8 weight patches", _with_weight_patches(model))):
        outs = []
        for run in range(args.repeats):
            out, _, _ = sample(patcher, (args.res // 8, args.res // 8), args.steps, 512, device)
            outs.append(out)
            against = "" if run == 0 else (f": vs first {_err(out, outs[0]):.2e}, vs previous "
                                           f"{_err(out, outs[-2]):.2e}")
            print(f"{name}, run {run + 1}{against}", flush=True)


def locate(model, args, device, sample):
    """Module output sums of the first model call of two fresh prompts (the process's first and second)."""
    import torch
    import comfy.patcher_extension as ext
    diffusion_model = model.model.diffusion_model
    names = {module: name for name, module in diffusion_model.named_modules()}
    prompts, recording = [], {"on": False}

    def hook(module, inputs, output):
        if recording["on"] and isinstance(output, torch.Tensor):
            prompts[-1].append((names[module], output.double().sum().item(), output.double().abs().sum().item()))

    def first_call_only(executor, *a, **k):
        recording["on"] = not prompts[-1]
        try:
            return executor(*a, **k)
        finally:
            recording["on"] = False

    handles = [m.register_forward_hook(hook) for m in diffusion_model.modules()]
    clone = model.clone()
    clone.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "locate", first_call_only)
    try:
        for _ in range(2):
            prompts.append([])
            sample(clone, (args.res // 8, args.res // 8), 1, 512, device)
    finally:
        for handle in handles:
            handle.remove()
    first, second = prompts
    differing = [(a[0], a[1], b[1]) for a, b in zip(first, second) if a[1:] != b[1:]]
    print(f"locate: {len(first)} module outputs in the first call; {len(differing)} differ between the process's "
          "first and second prompt; the first ones:")
    for name, a, b in differing[:8]:
        print(f"  {name}: sum {a:.6e} vs {b:.6e}")


if __name__ == "__main__":
    main()
