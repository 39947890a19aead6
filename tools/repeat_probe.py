"""Measuring tool (not product code), one GPU: is ComfyUI's own 1-GPU FLUX result the same from one prompt to the next
in one process? (`evidence offload`, eighth session: every row differed from the first prompt by the same 6.77e-3.)

    python3 tools/repeat_probe.py [--res 1024] [--steps 6] [--repeats 3]

Samples the same prompt ``--repeats`` times on one model and prints every run's relative error against the first and
against the previous run, plainly and with the bench's 8 LoRA-style weight patches.
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
    for name, patcher in (("plain", model), ("8 weight patches", _with_weight_patches(model))):
        outs = []
        for run in range(args.repeats):
            out, _, _ = sample(patcher, (args.res // 8, args.res // 8), args.steps, 512, device)
            outs.append(out)
            against = "" if run == 0 else (f": vs first {_err(out, outs[0]):.2e}, vs previous "
                                           f"{_err(out, outs[-2]):.2e}")
            print(f"{name}, run {run + 1}{against}", flush=True)


if __name__ == "__main__":
    main()
