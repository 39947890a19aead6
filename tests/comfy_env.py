"""Imports the real ComfyUI from COMFYUI_PATH on the CPU, and builds the tiny random-weight models the tests use."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "/opt/ComfyUI")


def setup_comfy():
    """Idempotent. Fails loudly when ComfyUI is missing: a test that cannot see the host application never passes."""
    if not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_patcher.py")):
        raise RuntimeError(f"ComfyUI not found at COMFYUI_PATH='{COMFYUI_PATH}'. Point COMFYUI_PATH at a ComfyUI "
                           "0.33 checkout (README: 'Tests').")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for path in (COMFYUI_PATH, REPO):
        if path not in sys.path:
            sys.path.insert(0, path)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_dynamic_vram = True
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import comfy.model_management  # noqa: F401


def tiny_flux_state_dict(hidden=512, heads=4, depth=2, depth_single=2, guidance=True, seed=0, context_dim=4096,
                         in_channels=16):
    """A 4-head FLUX.1-dev-shaped state dict with random weights (the benchmark's builder, on the CPU, fp32)."""
    import torch
    from comfy_xdit_patch.bench import random_flux_state_dict
    size = dict(hidden=hidden, heads=heads, depth=depth, depth_single=depth_single)
    return random_flux_state_dict(size, torch.float32, "cpu", seed, guidance, context_dim, in_channels)


def load_tiny_flux(**kwargs):
    import torch
    import comfy.sd
    return comfy.sd.load_diffusion_model_state_dict(tiny_flux_state_dict(**kwargs),
                                                    model_options={"dtype": torch.float32})


def flux_conditioning(text_tokens=77, seed=1, guidance=3.5, context_dim=4096):
    import torch
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, text_tokens, context_dim, generator=generator)
    pooled = torch.randn(1, 768, generator=generator)
    return [[cond, {"pooled_output": pooled, "guidance": guidance}]]


def empty_latent(height, width, batch=1):
    """A latent of height x width latent pixels (FLUX: 16 channels)."""
    import torch
    return {"samples": torch.zeros(batch, 16, height, width)}


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()
