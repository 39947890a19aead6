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


def tiny_scaled_fp8_flux_state_dict(base=None, input_scale=0.05):
    """The tiny FLUX as a "scaled fp8" checkpoint in ComfyUI's format (the builder the GPU evidence uses): a
    'scaled_fp8' marker tensor (its dtype names the fp8 format), every Linear weight of the double and single blocks
    stored as float8_e4m3fn divided by a per-layer fp32 '<layer>.scale_weight', and a '<layer>.scale_input' beside
    it. The embedders and the final layer stay bf16, so one file mixes both kinds. ComfyUI turns it into per-layer
    quantization metadata on load (comfy.utils.convert_old_quants) and builds the model with its mixed-precision
    operations."""
    import torch
    from comfy_xdit_patch.evidence import scaled_fp8_state_dict
    return scaled_fp8_state_dict(tiny_flux_state_dict() if base is None else base, input_scale=input_scale,
                                 rest_dtype=torch.bfloat16)


def tiny_lora_state_dict(base_state, layers, rank=4, seed=10, scale=0.05):
    """A LoRA in the kohya naming ComfyUI maps to FLUX keys ('lora_unet_<key with _>.lora_up/.lora_down/.alpha')."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for layer in layers:
        out_features, in_features = base_state[layer + ".weight"].shape
        name = "lora_unet_" + layer.replace(".", "_")
        lora[name + ".lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * scale
        lora[name + ".lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * scale
        lora[name + ".alpha"] = torch.tensor(float(rank))
    return lora


def tiny_flux_controlnet_state_dict(hidden=512, heads=4, depth=2, depth_single=1, seed=20, context_dim=4096):
    """An XLabs-format FLUX ControlNet (ComfyUI detects it by 'controlnet_blocks.0.weight' and the double blocks),
    random weights, sized like the tiny FLUX."""
    import torch
    import comfy.ops
    from comfy.ldm.flux.controlnet import ControlNetFlux
    with torch.device("meta"):
        shapes = ControlNetFlux(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="meta",
                                in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=context_dim,
                                hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth,
                                depth_single_blocks=depth_single, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                                qkv_bias=True, guidance_embed=True, txt_ids_dims=[]).state_dict()
    from comfy_xdit_patch.bench import bfl_name
    generator = torch.Generator().manual_seed(seed)
    return {bfl_name(k): torch.randn(v.shape, generator=generator) * (0.05 if v.ndim > 1 else 0.01)
            for k, v in shapes.items()}


def tiny_vae_state_dict(seed=30):
    """A FLUX-style VAE with a narrow decoder (the evidence scripts' builder)."""
    from comfy_xdit_patch.evidence import random_vae_state_dict
    return random_vae_state_dict(seed)


def tiny_clip_l_state_dict(seed=40):
    """CLIP-L at its real size with random weights (the evidence scripts' builder)."""
    from comfy_xdit_patch.evidence import random_clip_l_state_dict
    return random_clip_l_state_dict(seed)


def tiny_redux_state_dict(seed=50):
    """FLUX Redux (ComfyUI's ReduxImageEncoder, fixed 1152 -> 12288 -> 4096 sizes) with random weights."""
    import torch
    from comfy.ldm.flux.redux import ReduxImageEncoder
    with torch.device("meta"):
        shapes = ReduxImageEncoder().state_dict()
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * 0.01 for k, v in shapes.items()}


def write_model_files(root):
    """Writes the tiny models into ComfyUI's folder layout under ``root`` and registers the folders."""
    import folder_paths
    import safetensors.torch
    base = tiny_flux_state_dict()
    layers_a = ["double_blocks.0.img_attn.qkv", "double_blocks.1.txt_mlp.0", "single_blocks.0.linear1"]
    layers_b = ["double_blocks.0.img_mlp.2", "single_blocks.1.linear2", "img_in"]
    files = {
        ("diffusion_models", "tiny_flux.safetensors"): base,
        ("diffusion_models", "tiny_flux_scaled_fp8.safetensors"): tiny_scaled_fp8_flux_state_dict(base),
        ("loras", "tiny_lora_a.safetensors"): tiny_lora_state_dict(base, layers_a, seed=11),
        ("loras", "tiny_lora_b.safetensors"): tiny_lora_state_dict(base, layers_b, seed=12),
        ("controlnet", "tiny_flux_controlnet.safetensors"): tiny_flux_controlnet_state_dict(),
        ("vae", "tiny_vae.safetensors"): tiny_vae_state_dict(),
        ("style_models", "tiny_redux.safetensors"): tiny_redux_state_dict(),
        ("text_encoders", "tiny_clip_l.safetensors"): tiny_clip_l_state_dict(),
        ("checkpoints", "tiny_flux_checkpoint.safetensors"): {"model.diffusion_model." + k: v for k, v in base.items()},
    }
    for (folder, name), state in files.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        safetensors.torch.save_file(state, os.path.join(root, folder, name))
    for folder in {folder for folder, _ in files}:
        folder_paths.add_model_folder_path(folder, os.path.join(root, folder), is_default=True)


def tiny_flux2_state_dict(seed=60):
    """A Flux.2-shaped model (global modulation, SiLU-gated MLP, no biases, 128 latent channels, patch 1, text
    positions in id dim 3) with 4 heads and random weights; ComfyUI detects it as Flux2."""
    import torch
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    from comfy_xdit_patch.bench import bfl_name
    with torch.device("meta"):
        shapes = Flux(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="meta", in_channels=128,
                      out_channels=128, vec_in_dim=None, context_in_dim=256, hidden_size=512, mlp_ratio=3.0,
                      num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[32, 32, 32, 32], theta=2000,
                      patch_size=1, qkv_bias=False, guidance_embed=True, txt_ids_dims=[3], global_modulation=True,
                      mlp_silu_act=True, ops_bias=False).state_dict()
    generator = torch.Generator().manual_seed(seed)
    return {bfl_name(k): torch.randn(v.shape, generator=generator) * (0.02 if v.ndim > 1 else 0.01)
            for k, v in shapes.items()}


def load_tiny_flux(**kwargs):
    import torch
    import comfy.sd
    return comfy.sd.load_diffusion_model_state_dict(tiny_flux_state_dict(**kwargs),
                                                    model_options={"dtype": torch.float32})


def load_tiny_chroma(seed=70):
    """A 4-head Chroma (ComfyUI's own Chroma model classes, random weights) as a ModelPatcher.

    ComfyUI's checkpoint detection fixes Chroma's modulation network at full size (3072 wide, 5 layers of 5120), far
    too big for CPU tests, so the tiny model goes through the rest of the loader by hand: ComfyUI's Chroma model
    config, its ``get_model`` and ``load_model_weights``, and a ModelPatcher, as ``load_diffusion_model_state_dict``
    does after detection."""
    import torch
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    unet_config = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=4096, hidden_size=512,
                       mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[16, 56, 56],
                       theta=10000, patch_size=2, qkv_bias=True, in_dim=64, out_dim=512, hidden_dim=256, n_layers=2,
                       txt_ids_dims=[], vec_in_dim=None)
    model_config = comfy.supported_models.Chroma(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    generator = torch.Generator().manual_seed(seed)
    state = {"model.diffusion_model." + k: torch.randn(v.shape, generator=generator) * (0.02 if v.ndim > 1 else 0.1)
             for k, v in model.diffusion_model.state_dict().items()}
    model.load_model_weights(state, "model.diffusion_model.")
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


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


def ksample(model, latent_hw=(18, 14), steps=2, cfg=1.0, text_tokens=77):
    """ComfyUI's KSampler node (euler, simple, seed 42) on an empty latent with the two test conditionings."""
    import nodes
    positive, negative = flux_conditioning(text_tokens, seed=1), flux_conditioning(text_tokens, seed=2)
    return nodes.KSampler().sample(model, 42, steps, cfg, "euler", "simple", positive, negative,
                                   empty_latent(*latent_hw))[0]["samples"]


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def attention_inputs(seq_lens, batch, heads, dim, seed=0):
    """q, k, v of every member's tokens as ComfyUI's FLUX blocks hand them to the attention: q token-major (a single
    block's permuted view), k contiguous, v a view into a packed qkv tensor (the last dimension contiguous in every
    case)."""
    import torch
    torch.manual_seed(seed)
    inputs = []
    for length in seq_lens:
        q = torch.randn(batch, length, heads, dim).transpose(1, 2)
        k = torch.randn(batch, heads, length, dim)
        v = torch.randn(batch, length, 3, heads, dim)[:, :, 2].transpose(1, 2)
        inputs.append((q, k, v))
    return inputs


def plan_for(gpus, parallelism, heads, main_device, visible_cuda, **options):
    """The plan the node makes for these inputs (``options``: the node's other inputs by name)."""
    from comfy_xdit_patch.config import MultiGPUOptions, resolve_plan
    return resolve_plan(MultiGPUOptions(gpus=gpus, parallelism=parallelism, **options), heads, main_device,
                        visible_cuda)


class FakeServer:
    """What ComfyUI's PromptExecutor reports to (the web server's send_sync), kept as a list."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass
