"""Imports the real ComfyUI from COMFYUI_PATH on the CPU, and builds the tiny random-weight models the tests use."""
import contextlib
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


def ksample_inputs(model, inputs, cfg=1.0, steps=2, seed=42):
    """ComfyUI's KSampler (euler, simple) on ``inputs`` = (positive, negative, latent); the sampled latent."""
    import nodes
    positive, negative, latent = inputs
    return nodes.KSampler().sample(model, seed, steps, cfg, "euler", "simple", positive, negative, latent)[0]["samples"]


def sampled_in_parallel(model, inputs, cfg, caplog, **options):
    """``ksample_inputs`` of ``model`` through the node with ``options``, checked to have run every call on
    ``options["gpus"]`` ranks (helpers running, no call on one GPU); (the latent, the helper group)."""
    import logging
    from comfy_xdit_patch.multigpu import enable_multigpu
    from comfy_xdit_patch.runtime import helper_group
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        got = ksample_inputs(enable_multigpu(model, **options), inputs, cfg)
    group = helper_group.current_group()
    assert group is not None and group.plan.world_size == options["gpus"], "the helpers did not run"
    assert not [r for r in caplog.records if "one GPU" in r.getMessage()], "a call ran on one GPU"
    return got, group


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


def _random_state(shapes, seed, prefix="", weight_scale=0.02, vector_scale=0.1, fan_in=False):
    """Random fp32 tensors of the given shapes, keys prefixed: matrices and kernels N(0, weight_scale), vectors
    N(0, vector_scale); with ``fan_in``, matrices and kernels N(0, 1 / fan-in) and norm scales 1 + N(0, 0.1), so that
    activations keep their size through the layers (a UNet's attention is otherwise lost under its residuals), and a
    stored position table ('pos_embed') N(0, 0.5), as large as the patch embeddings it is added to, so that a token
    given the wrong position changes the result."""
    import math
    import torch
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in shapes.items():
        noise = torch.randn(v.shape, generator=generator)
        if not fan_in:
            state[prefix + k] = noise * (weight_scale if v.ndim > 1 else vector_scale)
        elif k.split(".")[-1] == "pos_embed":
            state[prefix + k] = noise * 0.5
        elif v.ndim > 1:
            state[prefix + k] = noise / math.sqrt(math.prod(v.shape[1:]))
        elif k.endswith(".bias"):
            state[prefix + k] = noise * 0.02
        else:
            state[prefix + k] = 1.0 + noise * 0.1
    return state


def _tiny_model_patcher(model_config, seed, fan_in=False):
    """ComfyUI's model for ``model_config`` (fp32) with random weights (``_random_state``), as a ModelPatcher: what
    ``load_diffusion_model_state_dict`` does after detection."""
    import torch
    import comfy.model_management
    import comfy.model_patcher
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    model.load_model_weights(_random_state(model.diffusion_model.state_dict(), seed, "model.diffusion_model.",
                                           fan_in=fan_in), "model.diffusion_model.")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_sd3_unet_config(variant="sd35_large", blocks=3, context_dim=256, pooled_dim=128, pos_embed_max_size=32):
    """The unet_config ComfyUI's MMDiT takes (the keys comfy.model_detection finds in an SD3 checkpoint), tiny.

    ComfyUI's MMDiT ties its width to ``depth``: depth heads of 64 channels (hidden 64 * depth), and ``num_blocks``
    joint blocks (``depth`` unless given, as in every real checkpoint). The tiny models keep the heads that make the
    sequence-parallel tests meaningful and cut the blocks:
      "sd35_large":  6 heads (like the real 38: 2 divides it, 4 does not), RMS qk-norm, no x-block self-attention;
      "sd35_medium": 4 heads (like the real 24: 2 and 4 divide it), RMS qk-norm, the MMDiT-X second self-attention
                     (x_block attn2) on every block but the last (the real one: layers 0-12 of 24);
      "sd3_medium":  4 heads, no qk-norm, no x-block self-attention.
    Text width 4096 and pooled width 2048 become ``context_dim`` / ``pooled_dim``; ``pos_embed_max_size`` 32 takes
    latents up to 64x64 (patch 2); 16 latent channels; no registers."""
    shapes = {"sd35_large": (6, "rms", []),
              "sd35_medium": (4, "rms", list(range(blocks - 1))),
              "sd3_medium": (4, None, [])}
    if variant not in shapes:
        raise ValueError(f"unknown SD3 variant {variant!r}; one of {sorted(shapes)}")
    heads, qk_norm, self_attn_layers = shapes[variant]
    config = dict(in_channels=16, out_channels=16, patch_size=2, depth=heads, num_blocks=blocks, input_size=None,
                  adm_in_channels=pooled_dim, pos_embed_scaling_factor=None, pos_embed_max_size=pos_embed_max_size,
                  num_patches=pos_embed_max_size * pos_embed_max_size, x_block_self_attn_layers=self_attn_layers,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": context_dim, "out_features": 64 * heads}})
    if qk_norm is not None:
        config["qk_norm"] = qk_norm
    return config


def load_tiny_sd3(variant="sd35_large", seed=80, blocks=3, context_dim=256, pooled_dim=128):
    """A tiny SD3 / SD3.5 (ComfyUI's model_base.SD3 around its OpenAISignatureMMDITWrapper, random fp32 weights) as a
    ModelPatcher, through ComfyUI's SD3 model config (the one class it uses for SD3 and SD3.5): see
    ``tiny_sd3_unet_config`` for the variants' shapes. Condition it with ``sd3_conditioning`` (same widths)."""
    import comfy.supported_models
    config = tiny_sd3_unet_config(variant, blocks, context_dim, pooled_dim)
    return _tiny_model_patcher(comfy.supported_models.SD3(config), seed, fan_in=True)


def sd3_conditioning(text_tokens=77, seed=1, context_dim=256, pooled_dim=128):
    """Conditioning as ComfyUI's text encode node gives it to SD3: T5/CLIP tokens and the pooled CLIP vector."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, text_tokens, context_dim, generator=generator)
    pooled = torch.randn(1, pooled_dim, generator=generator)
    return [[cond, {"pooled_output": pooled}]]


def tiny_sd3_controlnet_state_dict(variant="sd35_large", blocks=2, seed=90, context_dim=256, pooled_dim=128):
    """An SD3 ControlNet in the diffusers format (InstantX-style: 'transformer_blocks.*', 'controlnet_blocks.*',
    'pos_embed_input.*'), random weights, sized like the tiny SD3 of the same variant, so that ComfyUI's own loader
    (load_controlnet_state_dict -> load_controlnet_mmdit) detects and builds it. The weights are made in ComfyUI's
    MMDiT naming (comfy.cldm.mmdit.ControlNet) and renamed with ComfyUI's own diffusers map (comfy.utils.
    mmdit_to_diffusers; q, k and v become slices of qkv). The controlnet blocks are random, not zero, so a control
    changes the result."""
    import torch
    import comfy.ops
    import comfy.utils
    from comfy.cldm.mmdit import ControlNet
    config = tiny_sd3_unet_config(variant, blocks, context_dim, pooled_dim)
    config.pop("out_channels")
    with torch.device("meta"):
        shapes = ControlNet(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="meta",
                            control_latent_channels=16, **config).state_dict()
    internal = _random_state(shapes, seed, fan_in=True)
    diffusers, renamed = {}, set()
    for name, target in comfy.utils.mmdit_to_diffusers({"depth": config["depth"], "num_blocks": blocks}).items():
        key = target if isinstance(target, str) else target[0]
        if key not in internal:
            continue
        renamed.add(key)
        if isinstance(target, str):
            diffusers[name] = internal[key]
        elif target[1] is not None:
            diffusers[name] = internal[key].narrow(*target[1]).clone()
        else:
            diffusers[name] = target[2](internal[key]) if len(target) > 2 else internal[key]
    diffusers.update({k: v for k, v in internal.items() if k not in renamed})  # controlnet_blocks, pos_embed_input
    return diffusers


def tiny_sd3_controlnet(variant="sd35_large", blocks=2, seed=90, context_dim=256, pooled_dim=128):
    """The tiny SD3 ControlNet loaded by ComfyUI's loader: a comfy.controlnet.ControlNet around comfy.cldm.mmdit.
    ControlNet, what ControlNetApplyAdvanced / ControlNetApplySD3 take (with a VAE: ``tiny_sd3_vae``)."""
    import torch
    import comfy.controlnet
    return comfy.controlnet.load_controlnet_state_dict(
        tiny_sd3_controlnet_state_dict(variant, blocks, seed, context_dim, pooled_dim),
        model_options={"dtype": torch.float32})


def tiny_sd3_vae(seed=95, latent_channels=16, width=32):
    """A 16-channel, 8x VAE (the SD3 / FLUX latent layout) with a narrow encoder and decoder, random weights, as a
    comfy.sd.VAE. ComfyUI's checkpoint detection builds the encoder at full width (128), so the tiny one is described
    by a config (ComfyUI's AutoencoderKL); SD3 ControlNets need it to encode their hint image."""
    import torch
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL
    ddconfig = {"double_z": True, "z_channels": latent_channels, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": width, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    params = {"ddconfig": ddconfig, "embed_dim": latent_channels}
    with torch.device("meta"):
        shapes = AutoencoderKL(**params).state_dict()
    vae = comfy.sd.VAE(sd=_random_state(shapes, seed, fan_in=True), config={"params": params},
                       dtype=torch.float32)
    vae.latent_channels = latent_channels
    return vae


def tiny_sdxl_unet_config(model_channels=32, context_dim=64, pooled_dim=64):
    """SDXL's UNet layout (ComfyUI's detected SDXL config: 3 levels, no attention at the first, linear proj in the
    transformers, class-embedding input 'sequential') at a tiny width: one transformer block per attention level
    instead of 2 and 10. The y input is what model_base.SDXL.encode_adm builds: the pooled text vector followed by 6
    size embeddings of 256 (height, width, crop_h, crop_w, target_height, target_width), so adm_in_channels is
    ``pooled_dim`` + 1536 (the real 2816 = 1280 + 1536)."""
    return dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=model_channels,
                use_spatial_transformer=True, legacy=False, num_classes="sequential",
                adm_in_channels=pooled_dim + 6 * 256, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1,
                transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1], use_linear_in_transformer=True,
                context_dim=context_dim, use_temporal_attention=False, use_temporal_resblock=False)


def load_tiny_sdxl(seed=100, model_channels=32, context_dim=64, pooled_dim=64, head_channels=16):
    """A tiny SDXL (ComfyUI's model_base.SDXL around its openaimodel UNetModel, random fp32 weights, eps prediction)
    as a ModelPatcher, through comfy.supported_models.SDXL. The SDXL class fixes 64 channels a head
    (unet_extra_config); the tiny model uses ``head_channels`` instead (set on the config before the model is built)
    so its attention levels (64 and 128 channels) have 4 and 8 heads, which 2 and 4 divide. Condition it with
    ``sdxl_conditioning`` (same widths)."""
    import comfy.supported_models
    model_config = comfy.supported_models.SDXL(tiny_sdxl_unet_config(model_channels, context_dim, pooled_dim))
    model_config.unet_config["num_head_channels"] = head_channels
    return _tiny_model_patcher(model_config, seed, fan_in=True)


def sdxl_conditioning(text_tokens=77, seed=1, context_dim=64, pooled_dim=64, width=1024, height=1024, crop_w=0,
                      crop_h=0, target_width=None, target_height=None):
    """Conditioning as CLIPTextEncodeSDXL outputs it: the tokens, the pooled CLIP-G vector and the size keys
    model_base.SDXL turns into its y input."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, text_tokens, context_dim, generator=generator)
    pooled = torch.randn(1, pooled_dim, generator=generator)
    return [[cond, {"pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h,
                    "target_width": width if target_width is None else target_width,
                    "target_height": height if target_height is None else target_height}]]


def tiny_sd15_unet_config(model_channels=32, context_dim=64, in_channels=4):
    """SD1.5's UNet layout (ComfyUI's detected SD15 config: 4 levels, attention at the first three, conv proj in the
    transformers, no y input) at a tiny width; ``in_channels`` 9 for the inpainting model."""
    return dict(use_checkpoint=False, image_size=32, in_channels=in_channels, out_channels=4,
                model_channels=model_channels,
                use_spatial_transformer=True, legacy=False, adm_in_channels=None, num_res_blocks=[2, 2, 2, 2],
                channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_linear_in_transformer=False,
                context_dim=context_dim, use_temporal_attention=False, use_temporal_resblock=False)


def load_tiny_sd15(seed=110, model_channels=32, context_dim=64, in_channels=4):
    """A tiny SD1.5 (ComfyUI's model_base.BaseModel around its UNetModel, random fp32 weights, eps prediction) as a
    ModelPatcher, through comfy.supported_models.SD15, whose 8 heads at every level (head width = channels / 8) it
    keeps. Latent sides should be multiples of 8 (three downsamplings)."""
    import comfy.supported_models
    config = comfy.supported_models.SD15(tiny_sd15_unet_config(model_channels, context_dim, in_channels))
    return _tiny_model_patcher(config, seed, fan_in=True)


def sd15_conditioning(text_tokens=77, seed=1, context_dim=64):
    """Conditioning as CLIPTextEncode outputs it for SD1.5 (the pooled vector rides along; SD1.5 ignores it)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, text_tokens, context_dim, generator=generator)
    pooled = torch.randn(1, context_dim, generator=generator)
    return [[cond, {"pooled_output": pooled}]]


def latent(channels, height, width, batch=1):
    """An empty latent of height x width latent pixels (SD3 / FLUX: 16 channels, SDXL / SD1.5: 4)."""
    import torch
    return {"samples": torch.zeros(batch, channels, height, width)}


def ksample_latent(model, positive, negative, latent_image, steps=2, cfg=1.0, seed=42, sampler="euler",
                   scheduler="simple"):
    """ComfyUI's KSampler node on any model, conditioning and latent; returns the sampled latent tensor."""
    import nodes
    return nodes.KSampler().sample(model, seed, steps, cfg, sampler, scheduler, positive, negative,
                                   latent_image)[0]["samples"]


def _default_lora_layers(keys):
    """The Linear layers a tiny LoRA patches: every attention projection and the first MLP layer of each block."""
    unet = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn1.to_out.0", ".attn2.to_q", ".attn2.to_k",
            ".attn2.to_v", ".ff.net.0.proj")
    mmdit = (".attn.qkv", ".attn.proj", ".attn2.qkv", ".mlp.fc1")
    return [k[:-len(".weight")] for k in keys if k.endswith(".weight") and k[:-len(".weight")].endswith(unet + mmdit)]


def tiny_unet_lora(model, layers=None, rank=4, seed=120, scale=0.05, style="kohya"):
    """A tiny LoRA (random up/down matrices, alpha = rank) for a tiny UNet (SDXL / SD1.5) or MMDiT (SD3), in a key
    naming ComfyUI's LoRA loader maps (comfy.lora.model_lora_keys_unet), so that
    ``comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)`` patches it.

    ``model``: the ModelPatcher, or a diffusion-model state dict (keys with or without 'diffusion_model.').
    ``layers``: diffusion-model keys without '.weight' (default: every attention projection and the first MLP layer).
    ``style``:
      "kohya":     'lora_unet_<ldm key, dots as _>.lora_up/.lora_down/.alpha' (SDXL kohya, or any model's own keys);
      "diffusers": needs the ModelPatcher; the diffusers module names ComfyUI maps back: for a UNet
                   'lora_unet_<diffusers unet name>' (SD1.5 kohya LoRAs), for MMDiT
                   'transformer.<diffusers name>.lora_A/.lora_B' (SD3 diffusers LoRAs), where ComfyUI patches q, k
                   and v as slices of the fused qkv weight."""
    import torch
    if hasattr(model, "model"):
        state = model.model.diffusion_model.state_dict()
    else:
        state = {k[len("diffusion_model."):] if k.startswith("diffusion_model.") else k: v for k, v in model.items()}
    if layers is None:
        layers = _default_lora_layers(state)
    generator = torch.Generator().manual_seed(seed)
    lora = {}

    def add(name, out_features, in_features, up="lora_up", down="lora_down", alpha=True):
        lora[f"{name}.{up}.weight"] = torch.randn(out_features, rank, generator=generator) * scale
        lora[f"{name}.{down}.weight"] = torch.randn(rank, in_features, generator=generator) * scale
        if alpha:
            lora[name + ".alpha"] = torch.tensor(float(rank))

    if style == "kohya":
        for layer in layers:
            out_features, in_features = state[layer + ".weight"].shape
            add("lora_unet_" + layer.replace(".", "_"), out_features, in_features)
        return lora
    if style != "diffusers":
        raise ValueError(f"unknown LoRA style {style!r}")
    if not hasattr(model, "model"):
        raise ValueError("the diffusers style needs the ModelPatcher (its unet_config names the modules)")
    import comfy.model_base
    import comfy.utils
    unet_config = model.model.model_config.unet_config
    wanted = {layer + ".weight" for layer in layers}
    if isinstance(model.model, comfy.model_base.SD3):
        for name, target in comfy.utils.mmdit_to_diffusers(unet_config).items():
            if not name.endswith(".weight"):
                continue
            key = target if isinstance(target, str) else target[0]
            if key not in wanted:
                continue
            out_features, in_features = state[key].shape
            if not isinstance(target, str) and target[1] is not None:
                out_features = target[1][2]
            add("transformer." + name[:-len(".weight")], out_features, in_features, "lora_B", "lora_A", alpha=False)
        return lora
    for name, key in comfy.utils.unet_to_diffusers(unet_config).items():
        if key in wanted:
            out_features, in_features = state[key].shape[:2]
            add("lora_unet_" + name[:-len(".weight")].replace(".", "_"), out_features, in_features)
    return lora


def tiny_wan_unet_config(variant="t2v", dim=None, num_heads=None, num_layers=2, ffn_dim=None, text_dim=64,
                         vace_layers=1):
    """The unet_config comfy.model_detection builds for a Wan checkpoint ('head.modulation' present), tiny, for
    ComfyUI's config class of the variant (``wan_config_class``):
      "t2v":  Wan 2.1 T2V (WAN21_T2V): 16 latent channels in and out, text cross-attention; 4 heads, dim 128;
      "i2v":  Wan 2.1 I2V (WAN21_I2V): in_dim 36 (noise 16 + concat mask 4 + concat image latent 16), the i2v
              cross-attention (k_img / v_img) over CLIP-vision tokens projected by img_emb (1280 wide, fixed in
              ComfyUI); 6 heads, dim 192 (6 is not divisible by 4);
      "ti2v": Wan 2.2 TI2V 5B (ComfyUI's WAN22_T2V, model_base.WAN22): 48 latent channels in and out (the Wan 2.2
              VAE, 16x spatial), one timestep per latent frame when the latent carries a noise mask; 8 heads,
              dim 256;
      "vace": Wan 2.1 VACE (WAN21_Vace, VaceWanModel): T2V plus ``vace_layers`` VACE blocks fed by a 96-channel
              control latent (32 + 64 mask channels); 4 heads, dim 128.
    Head width is dim / num_heads (32 by default; the real models use 128, which detection assumes: num_heads =
    dim // 128). Patch (1, 2, 2), freq_dim 256, qk-norm and cross-attention norm as in every real checkpoint; the
    umT5 width 4096 becomes ``text_dim``; ffn_dim defaults to 2 * dim."""
    shapes = {"t2v": (128, 4, "t2v", 16, 16), "i2v": (192, 6, "i2v", 36, 16), "ti2v": (256, 8, "t2v", 48, 48),
              "vace": (128, 4, "vace", 16, 16)}
    if variant not in shapes:
        raise ValueError(f"unknown Wan variant {variant!r}; one of {sorted(shapes)}")
    default_dim, default_heads, model_type, in_dim, out_dim = shapes[variant]
    dim = default_dim if dim is None else dim
    config = dict(image_model="wan2.1", model_type=model_type, dim=dim, out_dim=out_dim, in_dim=in_dim,
                  num_heads=default_heads if num_heads is None else num_heads,
                  ffn_dim=2 * dim if ffn_dim is None else ffn_dim, num_layers=num_layers, patch_size=(1, 2, 2),
                  freq_dim=256, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                  text_dim=text_dim)
    if variant == "vace":
        config.update(vace_in_dim=96, vace_layers=vace_layers)
    return config


def wan_config_class(variant):
    """ComfyUI's model config class (comfy.supported_models) for a tiny Wan variant."""
    import comfy.supported_models as models
    classes = {"t2v": models.WAN21_T2V, "i2v": models.WAN21_I2V, "ti2v": models.WAN22_T2V,
               "vace": models.WAN21_Vace}
    if variant not in classes:
        raise ValueError(f"unknown Wan variant {variant!r}; one of {sorted(classes)}")
    return classes[variant]


def load_tiny_wan(variant="t2v", seed=130, **config):
    """A tiny Wan video model (ComfyUI's model_base.WAN21 / WAN21_Vace / WAN22 around its WanModel / VaceWanModel,
    random fp32 weights with fan-in scales) as a ModelPatcher, through ComfyUI's own config class of the variant:
    see ``tiny_wan_unet_config`` (``config``: its size arguments). Condition it with ``wan_conditioning`` (same
    text_dim) and, for i2v / ti2v / vace, ``wan_inputs``; its latent: ``wan_latent``. ComfyUI's detection alone
    cannot rebuild it from a file (it assumes 128-wide heads): see ``wan_detection_metadata``."""
    model_config = wan_config_class(variant)(tiny_wan_unet_config(variant, **config))
    return _tiny_model_patcher(model_config, seed, fan_in=True)


def wan_detection_metadata(model):
    """The safetensors metadata with which ComfyUI's detection (comfy.model_detection, which reads a 'config' JSON's
    'transformer' entries over what it infers) rebuilds a tiny Wan from its state dict: without it, detection
    assumes 128-wide heads (num_heads = dim // 128) and the umT5 width 4096. Save
    ``model.model.diffusion_model.state_dict()`` with it and UNETLoader / comfy.sd.load_diffusion_model gives the
    same model."""
    import json
    config = model.model.model_config.unet_config
    return {"config": json.dumps({"transformer": {"num_heads": config["num_heads"], "text_dim": config["text_dim"]}})}


def wan_conditioning(text_tokens=24, seed=1, text_dim=64):
    """Conditioning as CLIPTextEncode outputs it for Wan (umT5-XXL, zero-padded to 512 tokens in the real encoder;
    ``text_tokens`` here): the token embeddings and a pooled output of None (umT5 has none)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, text_tokens, text_dim, generator=generator), {"pooled_output": None}]]


def wan_latent(frames, height, width, batch=1, channels=16):
    """An empty Wan video latent (B, C, T, H, W) of ``frames`` latent frames of height x width latent pixels, made
    by ComfyUI's own node: EmptyHunyuanLatentVideo for 16 channels (Wan 2.1: 4x temporal, 8x spatial; the node
    also records 'downscale_ratio_spacial': 8), Wan22ImageToVideoLatent without a start image for 48 (Wan 2.2 5B:
    16x spatial). The latent frames come from 4 * (frames - 1) + 1 video frames."""
    length = 4 * (frames - 1) + 1
    if channels == 16:
        from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo
        return EmptyHunyuanLatentVideo.execute(width * 8, height * 8, length, batch).result[0]
    if channels == 48:
        from comfy_extras.nodes_wan import Wan22ImageToVideoLatent
        out = Wan22ImageToVideoLatent.execute(None, width * 16, height * 16, length, batch).result[0]
        # The node ignores batch_size without a start image (its latent has batch 1).
        out["samples"] = out["samples"].repeat(batch, 1, 1, 1, 1)
        return out
    raise ValueError(f"Wan latents have 16 (Wan 2.1) or 48 (Wan 2.2 5B) channels, not {channels}")


def tiny_wan_vae(version="2.1", seed=140, dim=8):
    """A random-weight Wan VAE as a comfy.sd.VAE, built by ComfyUI's own VAE detection from the state dict:
      "2.1": ComfyUI's Wan 2.1 VAE (comfy.ldm.wan.vae.WanVAE: causal 3D convs, 16 channels, 4x temporal and 8x
             spatial) at base width ``dim`` instead of 96 (detection reads the width from 'decoder.head.0.gamma');
      "2.2": the Wan 2.2 VAE's tiny stand-in ComfyUI knows, TAEHV with 48 latent channels ('taew2_2': 4x temporal,
             16x spatial, fixed width 64); ComfyUI's full Wan 2.2 VAE has a hard-coded width of 160."""
    import torch
    import comfy.sd
    if version == "2.1":
        from comfy.ldm.wan.vae import WanVAE
        with torch.device("meta"):
            shapes = WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                            temperal_downsample=[False, True, True]).state_dict()
    elif version == "2.2":
        from comfy.taesd.taehv import TAEHV
        with torch.device("meta"):
            shapes = TAEHV(latent_channels=48).state_dict()
    else:
        raise ValueError(f"unknown Wan VAE version {version!r}; '2.1' or '2.2'")
    state = _random_state(shapes, seed, fan_in=True)
    generator = torch.Generator().manual_seed(seed + 1)
    for k in state:
        if k.endswith(".gamma"):  # RMS_norm scales, stored as (C, 1, 1[, 1]): 1 + N(0, 0.1), not fan-in matrices
            state[k] = 1.0 + 0.1 * torch.randn(state[k].shape, generator=generator)
    return comfy.sd.VAE(sd=state, dtype=torch.float32)


def tiny_clip_vision(seed=150, image_size=42, layers=2):
    """A random-weight CLIP vision encoder (ComfyUI's ClipVisionModel, the CLIP-H layout Wan I2V uses: width 1280,
    16 heads, patch 14) with ``layers`` layers, a narrow MLP and ``image_size`` pixels: (image_size / 14) ** 2 + 1
    tokens (10 by default; 257 in the real one). Encode with nodes.CLIPVisionEncode; its
    penultimate_hidden_states are what Wan's img_emb takes."""
    import torch
    import comfy.clip_vision
    config = {"hidden_size": 1280, "image_size": image_size, "intermediate_size": 256, "num_attention_heads": 16,
              "num_hidden_layers": layers, "patch_size": 14, "projection_dim": 64, "hidden_act": "gelu",
              "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_channels": 3}
    model = comfy.clip_vision.ClipVisionModel(config)
    shapes = {k: v for k, v in model.get_sd().items() if "position_ids" not in k}
    model.load_sd({k: v.to(torch.float32) for k, v in _random_state(shapes, seed, fan_in=True).items()})
    return model


def wan_image(frames, height, width, seed=160):
    """A random IMAGE batch (frames, height, width, 3) in [0, 1], ComfyUI's image layout."""
    import torch
    return torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))


def wan_inputs(variant, frames, height, width, batch=1, text_tokens=24, text_dim=64, seed=1):
    """(positive, negative, latent) for a tiny Wan variant, with ``frames`` latent frames of height x width latent
    pixels, made by ComfyUI's own Wan nodes from ``wan_conditioning`` (seeds ``seed`` and ``seed`` + 1):
      "t2v":  the text conditioning and ``wan_latent``;
      "i2v":  WanImageToVideo with a tiny Wan 2.1 VAE (``tiny_wan_vae``), a random start image and the output of
              the tiny CLIP vision (``tiny_clip_vision`` through CLIPVisionEncode): both conditionings gain
              concat_latent_image (1, 16, T, H, W), concat_mask (1, 1, T, H, W; 0 on the first latent frame) and
              clip_vision_output (penultimate_hidden_states (1, 10, 1280));
      "ti2v": the text conditioning and Wan22ImageToVideoLatent with the tiny taew2.2 and a random start image:
              the latent's first frame is the encoded image and it carries a noise_mask (0 there), which makes
              model_base.WAN22 give each latent frame its own timestep;
      "vace": WanVaceToVideo (strength 1) with the tiny Wan 2.1 VAE and a random control video: both
              conditionings gain vace_frames [(1, 32, T, H, W)], vace_mask [(1, 64, T, H, W)], vace_strength [1.0]."""
    positive = wan_conditioning(text_tokens, seed, text_dim)
    negative = wan_conditioning(text_tokens, seed + 1, text_dim)
    length = 4 * (frames - 1) + 1
    if variant == "t2v":
        return positive, negative, wan_latent(frames, height, width, batch)
    if variant == "i2v":
        import nodes
        from comfy_extras.nodes_wan import WanImageToVideo
        clip_vision_output = nodes.CLIPVisionEncode().encode(tiny_clip_vision(), wan_image(1, 64, 64, seed + 2),
                                                             "center")[0]
        return WanImageToVideo.execute(positive, negative, tiny_wan_vae("2.1"), width * 8, height * 8, length,
                                       batch, start_image=wan_image(1, height * 8, width * 8, seed + 3),
                                       clip_vision_output=clip_vision_output).result
    if variant == "ti2v":
        from comfy_extras.nodes_wan import Wan22ImageToVideoLatent
        latent = Wan22ImageToVideoLatent.execute(tiny_wan_vae("2.2"), width * 16, height * 16, length, batch,
                                                 start_image=wan_image(1, height * 16, width * 16, seed + 3))
        return positive, negative, latent.result[0]
    if variant == "vace":
        from comfy_extras.nodes_wan import WanVaceToVideo
        out = WanVaceToVideo.execute(positive, negative, tiny_wan_vae("2.1"), width * 8, height * 8, length, batch,
                                     1.0, control_video=wan_image(length, height * 8, width * 8, seed + 4))
        return out.result[:3]
    raise ValueError(f"unknown Wan variant {variant!r}")


def wan_lora_layers(model):
    """The Linear layers a tiny Wan LoRA patches (what Wan LoRA trainers target): every block's self- and
    cross-attention q, k, v, o and both feed-forward layers."""
    state = model.model.diffusion_model.state_dict() if hasattr(model, "model") else model
    suffixes = tuple(f".{attn}.{p}" for attn in ("self_attn", "cross_attn") for p in "qkvo") + (".ffn.0", ".ffn.2")
    return [k[:-len(".weight")] for k in state
            if k.startswith("blocks.") and k.endswith(".weight") and k[:-len(".weight")].endswith(suffixes)]


def tiny_wan_lora(model, layers=None, rank=4, seed=170, scale=0.1):
    """A tiny LoRA for a tiny Wan (``load_tiny_wan``; ``tiny_unet_lora``'s default layers match no Wan layer) in the
    kohya naming ComfyUI's generic key map gives Wan ('lora_unet_blocks_0_self_attn_q.lora_up/.lora_down/.alpha'),
    over ``wan_lora_layers`` by default. Apply with ``comfy.sd.load_lora_for_models(model, None, lora, strength, 0)``."""
    layers = wan_lora_layers(model) if layers is None else layers
    return tiny_unet_lora(model, layers=layers, rank=rank, seed=seed, scale=scale, style="kohya")


# --- HunyuanVideo 1.0 / 1.5 -----------------------------------------------------------------------------------------

def tiny_hunyuan_video_unet_config(variant="1.0", hidden=192, num_heads=6, depth=2, depth_single=None, text_dim=64,
                                   meanflow=False):
    """The unet_config comfy.model_detection builds for a HunyuanVideo checkpoint, tiny: ``num_heads`` heads of
    hidden / num_heads (real: 24 of 128 for 1.0, 16 of 128 for 1.5), the RoPE axes split 1:3:3 over (t, h, w) like
    the real 16/56/56, ``depth`` double and ``depth_single`` single blocks (real: 20 and 40; 1.5: 54 and 0; by
    default 2 single blocks, none for 1.5), the LLaVA / Qwen2.5-VL width 4096 / 3584 as ``text_dim``, mlp ratio 2
    (real: 4); ``meanflow``: the distilled models' second time embedding (of the next step's sigma).
      "1.0": HunyuanVideo 1.0 T2V (comfy.supported_models.HunyuanVideo): 16 latent channels, patch (1, 2, 2), CLIP-L
             pooled vector (768 wide), guidance embedding;
      "i2v": HunyuanVideo 1.0 I2V (HunyuanVideoI2V): 33 channels in (16 + the start frame's 16 + a mask), 16 out;
      "1.5": HunyuanVideo 1.5 (HunyuanVideo15): 32 latent channels, 65 in (noise, start frame, mask), patch
             (1, 1, 1), no pooled vector or guidance, ByT5 glyph tokens (ByT5Mapper, 1472 wide), SigLIP vision tokens
             (1152 wide) and the condition-type embedding;
      "image21": HunyuanImage 2.1 (HunyuanImage21): the same transformer on images, 64 latent channels (32x VAE),
             2-D patches of 1, RoPE over (h, w), ByT5 glyph tokens, guidance embedding, no pooled vector."""
    head = hidden // num_heads
    axes = [head // 7 * 1, head // 7 * 3, head - head // 7 * 4]
    if depth_single is None:
        depth_single = 0 if variant == "1.5" else 2
    config = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2],
                  vec_in_dim=768, axes_dim=axes, meanflow=False, context_in_dim=text_dim, hidden_size=hidden,
                  mlp_ratio=2.0, num_heads=num_heads, depth=depth, depth_single_blocks=depth_single, theta=256,
                  qkv_bias=True, byt5=False, guidance_embed=True, use_cond_type_embedding=False,
                  vision_in_dim=None, meanflow_sum=False)
    config["meanflow"] = meanflow
    if variant == "i2v":
        config.update(in_channels=33)
    elif variant == "1.5":
        config.update(in_channels=65, out_channels=32, patch_size=[1, 1, 1], vec_in_dim=None, guidance_embed=False,
                      byt5=True, use_cond_type_embedding=True, vision_in_dim=1152)
    elif variant == "image21":
        config.update(in_channels=64, out_channels=64, patch_size=[1, 1], vec_in_dim=None, byt5=True,
                      axes_dim=[head // 2, head - head // 2])
    elif variant != "1.0":
        raise ValueError(f"unknown HunyuanVideo variant {variant!r}; one of '1.0', 'i2v', '1.5', 'image21'")
    return config


def load_tiny_hunyuan_video(variant="1.0", seed=260, **config):
    """A tiny HunyuanVideo (ComfyUI's model_base.HunyuanVideo / HunyuanVideoI2V / HunyuanVideo15 around
    comfy.ldm.hunyuan_video.model.HunyuanVideo, random fp32 weights with fan-in scales) as a ModelPatcher, through
    ComfyUI's config class of the variant: see ``tiny_hunyuan_video_unet_config``. Inputs: ``hunyuan_video_inputs``."""
    import comfy.supported_models as models
    classes = {"1.0": models.HunyuanVideo, "i2v": models.HunyuanVideoI2V, "1.5": models.HunyuanVideo15,
               "image21": models.HunyuanImage21}
    model_config = classes[variant](tiny_hunyuan_video_unet_config(variant, **config))
    return _tiny_model_patcher(model_config, seed, fan_in=True)


def hunyuan_video_conditioning(variant="1.0", text_tokens=21, seed=1, text_dim=64, masked_tokens=0):
    """Conditioning as ComfyUI's HunyuanVideo text encoders output it: the prompt states (1, L, text_dim) and, for
    1.0, CLIP-L's pooled output (1, 768); ``masked_tokens`` > 0 adds the encoder's attention mask (1, L) with that
    many padding tokens at the end. 1.5 adds ByT5 glyph states (1, 5, 1472) as conditioning_byt5small."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, 768, generator=generator) if variant in ("1.0", "i2v") else None}
    if masked_tokens:
        mask = torch.ones(1, text_tokens, dtype=torch.long)
        mask[:, text_tokens - masked_tokens:] = 0
        extra["attention_mask"] = mask
    if variant in ("1.5", "image21"):
        extra["conditioning_byt5small"] = torch.randn(1, 5, 1472, generator=generator)
    return [[torch.randn(1, text_tokens, text_dim, generator=generator), extra]]


def hunyuan_video_inputs(variant="1.0", frames=3, height=6, width=10, guidance_type=None, batch=1, text_tokens=21,
                         masked_tokens=0, seed=1):
    """(positive, negative, latent) of ``frames`` latent frames of height x width latent pixels for a tiny
    HunyuanVideo, from ``hunyuan_video_conditioning`` (seeds ``seed`` and ``seed`` + 1) and ComfyUI's own nodes:
    EmptyHunyuanLatentVideo (1.0) or EmptyHunyuanVideo15Latent (1.5); with ``guidance_type`` ("v1 (concat)",
    "v2 (replace)" or "custom"), HunyuanImageToVideo with a random start image, encoded by a tiny Wan 2.1 VAE, which
    makes HunyuanVideo 1.0's latent shape (16 channels, 4x in time, 8x in space). 1.5 adds SigLIP vision states
    (1, 9, 1152) as clip_vision_output. "image21": EmptyHunyuanImageLatent's image of height x width latent pixels."""
    import comfy.clip_vision
    import node_helpers
    import torch
    from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo, HunyuanImageToVideo
    positive = hunyuan_video_conditioning(variant, text_tokens, seed, masked_tokens=masked_tokens)
    negative = hunyuan_video_conditioning(variant, text_tokens, seed + 1, masked_tokens=masked_tokens)
    length = 4 * (frames - 1) + 1
    if variant == "image21":
        from comfy_extras.nodes_hunyuan import EmptyHunyuanImageLatent
        return positive, negative, EmptyHunyuanImageLatent.execute(width * 32, height * 32, batch).result[0]
    if variant == "1.5":
        from comfy_extras.nodes_hunyuan import EmptyHunyuanVideo15Latent
        latent = EmptyHunyuanVideo15Latent.execute(width * 16, height * 16, length, batch).result[0]
        generator = torch.Generator().manual_seed(seed + 2)
        vision = comfy.clip_vision.Output()
        vision["last_hidden_state"] = torch.randn(1, 9, 1152, generator=generator)
        positive, negative = (node_helpers.conditioning_set_values(c, {"clip_vision_output": vision})
                              for c in (positive, negative))
        return positive, negative, latent
    if guidance_type is None:
        return positive, negative, EmptyHunyuanLatentVideo.execute(width * 8, height * 8, length, batch).result[0]
    positive, latent = HunyuanImageToVideo.execute(positive, tiny_wan_vae("2.1"), width * 8, height * 8, length,
                                                   batch, guidance_type,
                                                   start_image=wan_image(1, height * 8, width * 8, seed + 3)).result
    return positive, negative, latent


# --- LTX-Video, LTX-2 ------------------------------------------------------------------------------------------------

def tiny_ltx_unet_config(variant="video", heads=4, head_dim=32, layers=2, text_dim=64, audio_heads=4,
                         audio_head_dim=16):
    """The unet_config of a tiny LTX model (ComfyUI's comfy.ldm.lightricks), for comfy.supported_models.LTXV / LTXAV:
    128 latent channels as the real (32x spatial, 8x temporal VAE; one token per latent pixel), ``heads`` heads of
    ``head_dim`` (real: 32 of 128 for LTX-2) whose width is also the cross-attention width, ``layers`` blocks (real:
    48), the text encoder's width ``text_dim`` (real: T5's 4096 / Gemma's 3840).
      "video": LTX-Video (LTXVModel);
      "av":    LTX-2 (LTXAVModel): an audio stream of ``audio_heads`` heads of ``audio_head_dim`` (real: 32 of 64) over
               the audio VAE's 8 channels x 16 frequency bins, audio-video cross-attention both ways, and text
               connectors of 2 heads of text_dim / 2 (only used on unprocessed text)."""
    config = dict(image_model="ltxv", in_channels=128, num_attention_heads=heads, attention_head_dim=head_dim,
                  cross_attention_dim=heads * head_dim, caption_channels=text_dim, num_layers=layers)
    if variant == "av":
        config.update(image_model="ltxav", audio_in_channels=128, audio_num_attention_heads=audio_heads,
                      audio_attention_head_dim=audio_head_dim, audio_cross_attention_dim=audio_heads * audio_head_dim,
                      connector_num_attention_heads=2, connector_attention_head_dim=text_dim // 2)
    elif variant != "video":
        raise ValueError(f"unknown LTX variant {variant!r}; 'video' or 'av'")
    return config


def load_tiny_ltx(variant="video", seed=270, **config):
    """A tiny LTX-Video ("video") or LTX-2 ("av") as a ModelPatcher (ComfyUI's model_base.LTXV / LTXAV, random fp32
    weights with fan-in scales): see ``tiny_ltx_unet_config``. Inputs: ``ltx_inputs``."""
    import comfy.supported_models as models
    model_config = (models.LTXAV if variant == "av" else models.LTXV)(tiny_ltx_unet_config(variant, **config))
    return _tiny_model_patcher(model_config, seed, fan_in=True)


def ltx_inputs(variant="video", frames=3, height=3, width=5, first_frame=False, audio_latents=7, text_tokens=21,
               seed=1, text_dim=64, guide_frame=None, guide_strength=1.0):
    """(positive, negative, latent) for a tiny LTX model: random prompt states (1, L, text_dim; LTX-2's as its text
    connectors leave them, video and audio side by side, 2 x text_dim) with the encoder's attention mask (all ones:
    LTX-Video's forward requires one) through LTXVConditioning (25 fps), and
    EmptyLTXVLatentVideo's latent of ``frames`` latent frames of height x width (one token each: 45 by default).
    ``first_frame``: a random first latent frame kept by a noise mask of 0 there, as LTXVImgToVideo leaves the
    latent (each latent frame then has its own timestep). LTX-2 adds an empty audio latent of ``audio_latents``
    latents (the LTX-2 audio VAE's 8 channels x 16 bins, as LTXVEmptyLatentAudio makes it) joined to the video by
    LTXVConcatAVLatent. ``guide_frame``: a random encoded guide frame at that pixel frame, appended as LTXVAddGuide
    appends a VAE-encoded image (its keyframe index, its noise mask of 1 - ``guide_strength``, its guide attention
    entry), through the node's own functions (LTX-Video only)."""
    import torch
    from comfy_extras.nodes_lt import EmptyLTXVLatentVideo, LTXVConcatAVLatent, LTXVConditioning
    generator = torch.Generator().manual_seed(seed)
    width_out = text_dim * (2 if variant == "av" else 1)
    positive, negative = ([[torch.randn(1, text_tokens, width_out, generator=generator),
                            {"pooled_output": None, "attention_mask": torch.ones(1, text_tokens, dtype=torch.long)}]]
                          for _ in range(2))
    positive, negative = LTXVConditioning.execute(positive, negative, 25.0).result
    latent = EmptyLTXVLatentVideo.execute(width * 32, height * 32, 8 * (frames - 1) + 1, 1).result[0]
    if first_frame:
        latent["samples"][:, :, :1] = torch.randn(latent["samples"][:, :, :1].shape, generator=generator)
        mask = torch.ones((1, 1, frames, height, width))
        mask[:, :, 0] = 0.0
        latent["noise_mask"] = mask
    if guide_frame is not None:
        from comfy_extras.nodes_lt import LTXVAddGuide, _append_guide_attention_entry, get_noise_mask
        scale_factors = (8, 32, 32)   # the LTX VAE's downscale_index_formula
        guide = torch.randn((1, 128, 1, height, width), generator=generator)
        frame_idx, _ = LTXVAddGuide.get_latent_index(positive, frames, 1, guide_frame, scale_factors,
                                                      latent_shape=latent["samples"].shape)
        positive, negative, samples, mask = LTXVAddGuide.append_keyframe(
            positive, negative, frame_idx, latent["samples"], get_noise_mask(latent), guide, guide_strength,
            scale_factors, causal_fix=frame_idx == 0)
        positive, negative = _append_guide_attention_entry(positive, negative, height * width, [1, height, width],
                                                           strength=guide_strength)
        latent = {"samples": samples, "noise_mask": mask}
    if variant == "av":
        audio = {"samples": torch.zeros(1, 8, audio_latents, 16), "type": "audio"}
        latent = LTXVConcatAVLatent.execute(latent, audio).result[0]
    return positive, negative, latent


# --- Qwen-Image, Z-Image (Lumina 2 / NextDiT), Krea 2 ---------------------------------------------------------------

QWEN_IMAGE_VARIANTS = ("t2i", "edit", "edit_2511")


def tiny_qwen_image_unet_config(variant="t2i", num_layers=2, num_heads=6, head_dim=32, text_dim=64):
    """The unet_config of a tiny Qwen-Image (ComfyUI's QwenImageTransformer2DModel), for comfy.supported_models.
    QwenImage, the one config class ComfyUI has for every Qwen-Image model:
      "t2i":       Qwen-Image (detection: in_channels 64, num_layers; the rest is the model's defaults);
      "edit":      Qwen-Image-Edit / Edit-2509: the same model; editing is only the conditioning's reference latents
                   (``qwen_image_inputs``), joined after the image tokens with the 'index' method (time index 1, 2, ..
                   per reference) that ComfyUI uses by default;
      "edit_2511": Qwen-Image-Edit-2511 (detection finds the '__index_timestep_zero__' buffer): default_ref_method
                   'index_timestep_zero', which runs the reference tokens' modulation at timestep 0 (the block's
                   batch of modulation vectors doubles: [t, 0]).
    6 heads of 32 channels (the real model: 24 of 128; 2 divides 6, 4 does not), RoPE axes (8, 12, 12) for the
    real (16, 56, 56), the Qwen2.5-VL width 3584 becomes ``text_dim``; 16 latent channels packed 2x2 (in 64)."""
    if variant not in QWEN_IMAGE_VARIANTS:
        raise ValueError(f"unknown Qwen-Image variant {variant!r}; one of {QWEN_IMAGE_VARIANTS}")
    side = (3 * head_dim // 8) // 2 * 2
    axes = (head_dim - 2 * side, side, side)
    config = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=num_layers,
                  attention_head_dim=head_dim, num_attention_heads=num_heads, joint_attention_dim=text_dim,
                  axes_dims_rope=axes)
    if variant == "edit_2511":
        config["default_ref_method"] = "index_timestep_zero"
    return config


def load_tiny_qwen_image(variant="t2i", seed=180, **config):
    """A tiny Qwen-Image (ComfyUI's model_base.QwenImage around its QwenImageTransformer2DModel, random fp32 weights
    with fan-in scales) as a ModelPatcher, through ComfyUI's QwenImage config class: see
    ``tiny_qwen_image_unet_config`` (``config``: its size arguments). Inputs: ``qwen_image_inputs``. ComfyUI's
    detection cannot rebuild it from a file (it keeps the model's default 24 x 128 heads and 3584 text width)."""
    import comfy.supported_models
    model_config = comfy.supported_models.QwenImage(tiny_qwen_image_unet_config(variant, **config))
    return _tiny_model_patcher(model_config, seed, fan_in=True)


def qwen_image_conditioning(text_tokens=21, seed=1, text_dim=64, masked_tokens=0):
    """Conditioning as CLIPTextEncode gives it to Qwen-Image: the Qwen2.5-VL hidden states after the chat template
    (``text_tokens`` of them) and a pooled output of None. ComfyUI's encoder drops the attention mask when nothing
    is masked (a single prompt); ``masked_tokens`` > 0 appends that many padding tokens and the long attention_mask
    (1 = real, 0 = padding) that then reaches the model (model_base.QwenImage passes it as 'attention_mask', the
    model turns it into an additive mask over the text keys of its joint attention)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, text_tokens + masked_tokens, text_dim, generator=generator)
    extra = {"pooled_output": None}
    if masked_tokens:
        mask = torch.ones(1, text_tokens + masked_tokens, dtype=torch.long)
        mask[:, text_tokens:] = 0
        extra["attention_mask"] = mask
    return [[cond, extra]]


def _with_reference_latents(positive, negative, references, height, width, seed):
    """Both conditionings with ``references`` random images (the first the output's size, the others of other sizes)
    encoded by the tiny Wan 2.1 VAE and attached by ComfyUI's ReferenceLatent node."""
    import nodes
    from comfy_extras.nodes_edit_model import ReferenceLatent
    vae = tiny_wan_vae("2.1")
    sizes = [(height, width), (height + 2, max(2, width - 2)), (height, width + 2)][:references]
    for i, (h, w) in enumerate(sizes):
        ref = nodes.VAEEncode().encode(vae, wan_image(1, h * 8, w * 8, seed + 10 + i))[0]
        positive = ReferenceLatent.execute(positive, ref).result[0]
        negative = ReferenceLatent.execute(negative, ref).result[0]
    return positive, negative


def qwen_image_inputs(variant="t2i", height=11, width=9, batch=1, text_tokens=21, references=None, seed=1,
                      text_dim=64, masked_tokens=0):
    """(positive, negative, latent) for a tiny Qwen-Image of ``variant``, ``height`` x ``width`` latent pixels
    (ComfyUI's EmptySD3LatentImage, as Qwen-Image workflows use it: 4-D, 16 channels; the sampler makes it
    (B, 16, 1, H, W) for the Wan 2.1 latent format). Text: ``qwen_image_conditioning`` (seeds ``seed`` and
    ``seed`` + 1; ``masked_tokens`` on the positive only).
    ``references`` (default 0 for "t2i", 1 for the edit variants): random images encoded by VAEEncode with the tiny
    Wan 2.1 VAE (``tiny_wan_vae``; Qwen-Image's VAE is Wan 2.1's) and attached to both conditionings by ComfyUI's
    ReferenceLatent node (what TextEncodeQwenImageEdit(Plus) also does): 'reference_latents' [(1, 16, 1, h, w)];
    the first is the output's size, the second (height + 2) x (width - 2), so that the joint sequence holds
    references of different token counts. The defaults give an uneven joint sequence: 11 x 9 latent pixels are
    6 x 5 = 30 image tokens (patch 2, padded), with 21 text tokens 51."""
    from comfy_extras.nodes_sd3 import EmptySD3LatentImage
    if variant not in QWEN_IMAGE_VARIANTS:
        raise ValueError(f"unknown Qwen-Image variant {variant!r}; one of {QWEN_IMAGE_VARIANTS}")
    if references is None:
        references = 0 if variant == "t2i" else 1
    positive = qwen_image_conditioning(text_tokens, seed, text_dim, masked_tokens)
    negative = qwen_image_conditioning(text_tokens, seed + 1, text_dim)
    if references:
        positive, negative = _with_reference_latents(positive, negative, references, height, width, seed)
    latent = EmptySD3LatentImage.execute(width * 8, height * 8, batch).result[0]
    return positive, negative, latent


def _qwen_instantx_config(unet_config):
    """The tiny InstantX ControlNet's constructor arguments: the base model's config with 1 block."""
    config = {k: v for k, v in unet_config.items() if k not in ("dtype", "default_ref_method")}
    config["num_layers"] = 1
    return config


def tiny_qwen_controlnet_state_dict(kind="fun", model=None, seed=190, control_blocks=5):
    """A random-weight Qwen-Image ControlNet state dict sized like ``model`` (a tiny Qwen-Image ModelPatcher; default
    ``load_tiny_qwen_image()``), its blocks random, not zero, so that a control changes the result:
      "fun":      VideoX-Fun's Qwen-Image ControlNet (ComfyUI's QwenImageFunControlNetModel: 'control_img_in',
                  'control_blocks.N.{before_proj,after_proj,...}'), the layout ComfyUI's loader reads its sizes from
                  (inner dim, head dim, heads). Its control input is 132 = 4 x 33 channels (control latent 16, mask 1,
                  inpaint latent 16; ComfyUI pads a 16-channel hint with zeros);
      "instantx": InstantX's Qwen-Image ControlNet (ComfyUI's QwenImageControlNetModel: the base model's blocks
                  without the final layer, 'controlnet_blocks.N', 'controlnet_x_embedder')."""
    import torch
    import comfy.ops
    from comfy.ldm.qwen_image.controlnet import QwenImageControlNetModel, QwenImageFunControlNetModel
    model = load_tiny_qwen_image() if model is None else model
    config = dict(model.model.model_config.unet_config)
    ops = comfy.ops.disable_weight_init
    with torch.device("meta"):
        if kind == "fun":
            inner = config["num_attention_heads"] * config["attention_head_dim"]
            shapes = QwenImageFunControlNetModel(control_in_features=132, inner_dim=inner,
                                                 num_attention_heads=config["num_attention_heads"],
                                                 attention_head_dim=config["attention_head_dim"],
                                                 num_control_blocks=control_blocks, operations=ops,
                                                 dtype=torch.float32).state_dict()
        elif kind == "instantx":
            shapes = QwenImageControlNetModel(operations=ops, dtype=torch.float32,
                                              **_qwen_instantx_config(config)).state_dict()
        else:
            raise ValueError(f"unknown Qwen-Image ControlNet kind {kind!r}; 'fun' or 'instantx'")
    return _random_state(shapes, seed, fan_in=True)


def tiny_qwen_controlnet(kind="fun", model=None, seed=190):
    """A tiny Qwen-Image ControlNet as ControlNetApplyAdvanced takes it (with the VAE: ``tiny_wan_vae('2.1')``, which
    encodes the hint image; the hint image is 8x the latent size):
      "fun":      loaded by ComfyUI's own loader (comfy.controlnet.load_controlnet_state_dict ->
                  load_controlnet_qwen_fun, a QwenFunControlNet); its 5 control blocks inject at base layers
                  0, 12, 24, 36, 48 of 60 (fixed in ComfyUI), so a tiny 2-layer base gets layer 0's hint only;
      "instantx": ComfyUI's QwenImageControlNetModel with the tiny config, wrapped in comfy.controlnet.ControlNet as
                  load_controlnet_qwen_instantx wraps it (the loader itself rebuilds the model from detection, which
                  assumes the full-size 24 x 128 heads and 3584 text width); 1 block, its output repeated for every
                  base layer. Its blocks call the attention without transformer_options."""
    import torch
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.model_management
    import comfy.ops
    state = tiny_qwen_controlnet_state_dict(kind, model, seed)
    if kind == "fun":
        return comfy.controlnet.load_controlnet_state_dict(state, model_options={"dtype": torch.float32})
    from comfy.ldm.qwen_image.controlnet import QwenImageControlNetModel
    model = load_tiny_qwen_image() if model is None else model
    control_model = QwenImageControlNetModel(operations=comfy.ops.disable_weight_init, dtype=torch.float32,
                                             device=comfy.model_management.unet_offload_device(),
                                             **_qwen_instantx_config(model.model.model_config.unet_config))
    control_model = comfy.controlnet.controlnet_load_state_dict(control_model, state)
    return comfy.controlnet.ControlNet(control_model, compression_ratio=1, latent_format=comfy.latent_formats.Wan21(),
                                      concat_mask=False, load_device=comfy.model_management.get_torch_device(),
                                      manual_cast_dtype=None, extra_conds=[])


def apply_tiny_controlnet(positive, negative, control_net, height, width, vae=None, strength=1.0, seed=200):
    """ComfyUI's ControlNetApplyAdvanced with a random hint image of (8 * height) x (8 * width) pixels and the tiny
    Wan 2.1 VAE (Qwen-Image's ControlNets encode their hint to a latent); returns (positive, negative)."""
    import nodes
    vae = tiny_wan_vae("2.1") if vae is None else vae
    return nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control_net,
                                                            wan_image(1, height * 8, width * 8, seed), strength,
                                                            0.0, 1.0, vae=vae)


def tiny_z_image_unet_config(num_layers=2, refiner_layers=2, num_heads=6, head_dim=48, text_dim=64,
                             pad_tokens_multiple=32):
    """The unet_config comfy.model_detection builds for Z-Image (a Lumina 2 NextDiT with dim 3840: 30 heads of 128,
    RoPE axes (32, 48, 48), theta 256, Z-Image's adaLN (256-wide timestep vector), time_scale 1000, SwiGLU 8/3, and
    with 'cap_pad_token' in the file pad_tokens_multiple 32), tiny: 6 heads of 48 (the adaLN takes
    min(dim, 256) inputs from a 256-wide timestep vector, so dim must be >= 256), axes (12, 18, 18), the Qwen3-4B
    width 2560 becomes ``text_dim``; ``num_layers`` main blocks and ``refiner_layers`` noise / context refiner
    blocks each (the real: 30 and 2). ``pad_tokens_multiple`` None gives no learned padding tokens (Lumina 2)."""
    axes = (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    config = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=num_heads * head_dim, cap_feat_dim=text_dim,
                  n_layers=num_layers, n_refiner_layers=refiner_layers, qk_norm=True, n_heads=num_heads,
                  n_kv_heads=num_heads, axes_dims=list(axes), axes_lens=[1536, 512, 512], rope_theta=256.0,
                  ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0)
    if pad_tokens_multiple is not None:
        config["pad_tokens_multiple"] = pad_tokens_multiple
    return config


def load_tiny_z_image(seed=210, **config):
    """A tiny Z-Image (ComfyUI's model_base.Lumina2 around its NextDiT, random fp32 weights with fan-in scales, the
    learned padding tokens N(0, 1) like the caption embeddings they pad) as a ModelPatcher, through ComfyUI's ZImage
    config class (shift 3): see ``tiny_z_image_unet_config`` (``config``: its arguments). Inputs:
    ``z_image_inputs``."""
    import torch
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    model_config = comfy.supported_models.ZImage(tiny_z_image_unet_config(**config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    state = _random_state(model.diffusion_model.state_dict(), seed, fan_in=True)
    generator = torch.Generator().manual_seed(seed + 1)
    for k in state:
        if k.endswith("pad_token"):
            state[k] = torch.randn(state[k].shape, generator=generator)
    model.load_model_weights({"model.diffusion_model." + k: v for k, v in state.items()}, "model.diffusion_model.")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def z_image_conditioning(text_tokens=21, seed=1, text_dim=64):
    """Conditioning as CLIPTextEncode gives it to Z-Image: the Qwen3-4B hidden states (``text_tokens``), pooled
    output None and the encoder's attention_mask (all ones for one prompt: model_base.Lumina2 then passes no mask,
    only num_tokens, a CONDConstant)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, text_tokens, text_dim, generator=generator)
    return [[cond, {"pooled_output": None, "attention_mask": torch.ones(1, text_tokens, dtype=torch.long)}]]


def z_image_inputs(height=11, width=9, batch=1, text_tokens=21, negative_tokens=None, seed=1, text_dim=64):
    """(positive, negative, latent) for a tiny Z-Image: ``z_image_conditioning`` (seeds ``seed``, ``seed`` + 1;
    the negative has ``negative_tokens``, default ``text_tokens``) and EmptySD3LatentImage (16 channels, 4-D) of
    ``height`` x ``width`` latent pixels. With different lengths, cond and uncond differ in num_tokens (a
    CONDConstant), so ComfyUI runs them in separate model calls instead of padding them into one batch."""
    from comfy_extras.nodes_sd3 import EmptySD3LatentImage
    positive = z_image_conditioning(text_tokens, seed, text_dim)
    negative = z_image_conditioning(text_tokens if negative_tokens is None else negative_tokens, seed + 1, text_dim)
    return positive, negative, EmptySD3LatentImage.execute(width * 8, height * 8, batch).result[0]


def tiny_krea2_unet_config(num_layers=2, heads=8, kvheads=2, head_dim=32, text_layers=4, text_dim=128,
                           text_heads=4):
    """The unet_config of a tiny Krea 2 (ComfyUI's krea2 SingleStreamDiT: detection reads features, heads and kv heads
    assuming 128-wide heads, txtlayers, txtdim; the text-fusion heads stay the model's default 20 of 128), for
    comfy.supported_models.Krea2: ``heads`` query heads sharing ``kvheads`` key / value heads (grouped like the
    real 48 / 12), RoPE axes (8, 12, 12) from head_dim 32; the Qwen3-VL-4B stack of 12 layers x 2560 becomes
    ``text_layers`` x ``text_dim`` with ``text_heads`` heads (not grouped, like the real)."""
    return dict(image_model="krea2", features=heads * head_dim, channels=16, patch=2, layers=num_layers, heads=heads,
                kvheads=kvheads, txtlayers=text_layers, txtdim=text_dim, txtheads=text_heads, txtkvheads=text_heads)


def load_tiny_krea2(seed=220, **config):
    """A tiny Krea 2 (ComfyUI's model_base.Krea2 around its SingleStreamDiT, random fp32 weights with fan-in scales;
    its zero-centred RMSNorm scales N(0, 0.1)) as a ModelPatcher, through ComfyUI's Krea2 config class: see
    ``tiny_krea2_unet_config``. Inputs: ``krea2_inputs``."""
    import torch
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    model_config = comfy.supported_models.Krea2(tiny_krea2_unet_config(**config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    state = _random_state(model.diffusion_model.state_dict(), seed, fan_in=True)
    generator = torch.Generator().manual_seed(seed + 1)
    for k in state:
        if k.endswith(".scale"):  # RMSNorm weight = 1 + scale
            state[k] = 0.1 * torch.randn(state[k].shape, generator=generator)
    model.load_model_weights({"model.diffusion_model." + k: v for k, v in state.items()}, "model.diffusion_model.")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def krea2_conditioning(text_tokens=21, seed=1, text_layers=4, text_dim=128):
    """Conditioning as CLIPTextEncode gives it to Krea 2: the Qwen3-VL hidden states of ``text_layers`` layers side
    by side, (1, text_tokens, text_layers * text_dim), pooled output None (model_base.Krea2 takes no mask)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, text_tokens, text_layers * text_dim, generator=generator), {"pooled_output": None}]]


def krea2_inputs(height=11, width=9, batch=1, text_tokens=21, references=0, ref_method="index", seed=1,
                 text_layers=4, text_dim=128):
    """(positive, negative, latent) for a tiny Krea 2: ``krea2_conditioning`` (seeds ``seed``, ``seed`` + 1) and
    EmptySD3LatentImage of ``height`` x ``width`` latent pixels (the Wan 2.1 latent format makes it 5-D; the model
    folds the frame axis into the batch). ``references`` > 0: random latents from the tiny Wan 2.1 VAE through
    ReferenceLatent, and FluxKontextMultiReferenceLatentMethod(``ref_method``: 'index' or 'index_timestep_zero'),
    since Krea 2 ignores reference latents without a method (its default_ref_method is None)."""
    from comfy_extras.nodes_flux import FluxKontextMultiReferenceLatentMethod
    from comfy_extras.nodes_sd3 import EmptySD3LatentImage
    positive = krea2_conditioning(text_tokens, seed, text_layers, text_dim)
    negative = krea2_conditioning(text_tokens, seed + 1, text_layers, text_dim)
    if references:
        positive, negative = _with_reference_latents(positive, negative, references, height, width, seed)
        positive = FluxKontextMultiReferenceLatentMethod.execute(positive, ref_method).result[0]
        negative = FluxKontextMultiReferenceLatentMethod.execute(negative, ref_method).result[0]
    return positive, negative, EmptySD3LatentImage.execute(width * 8, height * 8, batch).result[0]


def dit_lora_layers(model):
    """The Linear layers a tiny LoRA patches in a tiny Qwen-Image, Z-Image, Krea 2 or HunyuanVideo (what their LoRA
    trainers target): every block's attention projections and MLP layers.
      HunyuanVideo: double_blocks.N.{img,txt}_{attn.qkv,attn.proj,mlp.0,mlp.2}, single_blocks.N.linear{1,2};
      LTX-Video:  transformer_blocks.N.{attn1,attn2}.{to_q,to_k,to_v,to_out.0}, ff.net.{0.proj,2};
      Qwen-Image: transformer_blocks.N.attn.{to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out},
                  {img,txt}_mlp.net.{0.proj,2};
      Z-Image:    {layers,noise_refiner,context_refiner}.N.attention.{qkv,out}, feed_forward.{w1,w2,w3};
      Krea 2:     blocks.N and txtfusion.{layerwise,refiner}_blocks.N: attn.{wq,wk,wv,gate,wo}, mlp.{gate,up,down}."""
    import comfy.model_base
    state = model.model.diffusion_model.state_dict()
    if isinstance(model.model, comfy.model_base.QwenImage):
        suffixes = tuple(f".attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                 "add_v_proj", "to_add_out")) + tuple(
            f".{m}_mlp.net.{p}" for m in ("img", "txt") for p in ("0.proj", "2"))
        prefixes = ("transformer_blocks.",)
    elif isinstance(model.model, comfy.model_base.Lumina2):
        suffixes = (".attention.qkv", ".attention.out", ".feed_forward.w1", ".feed_forward.w2", ".feed_forward.w3")
        prefixes = ("layers.", "noise_refiner.", "context_refiner.")
    elif isinstance(model.model, comfy.model_base.HunyuanVideo):
        suffixes = tuple(f".{s}_{p}" for s in ("img", "txt") for p in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")) + (
            ".linear1", ".linear2")
        prefixes = ("double_blocks.", "single_blocks.")
    elif isinstance(model.model, comfy.model_base.LTXV):
        suffixes = tuple(f".{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")) + (
            ".ff.net.0.proj", ".ff.net.2")
        prefixes = ("transformer_blocks.",)
    elif isinstance(model.model, comfy.model_base.Krea2):
        suffixes = tuple(f".attn.{p}" for p in ("wq", "wk", "wv", "gate", "wo")) + (".mlp.gate", ".mlp.up",
                                                                                    ".mlp.down")
        prefixes = ("blocks.", "txtfusion.layerwise_blocks.", "txtfusion.refiner_blocks.")
    else:
        raise ValueError(f"no tiny LoRA layers for {type(model.model).__name__}")
    return [k[:-len(".weight")] for k in state
            if k.startswith(prefixes) and k.endswith(".weight") and k[:-len(".weight")].endswith(suffixes)]


def tiny_dit_lora(model, layers=None, rank=4, seed=230, scale=0.1):
    """A tiny LoRA for a tiny Qwen-Image, Z-Image, Krea 2, HunyuanVideo or LTX-Video (``dit_lora_layers`` by
    default) in the kohya naming comfy.lora.model_lora_keys_unet maps onto every model ('lora_unet_<ComfyUI key, dots
    as _>.lora_up/.lora_down/.alpha'). Apply with ``comfy.sd.load_lora_for_models(model, None, lora, strength, 0)``."""
    layers = dit_lora_layers(model) if layers is None else layers
    return tiny_unet_lora(model, layers=layers, rank=rank, seed=seed, scale=scale, style="kohya")


# --- MiniMax H3 (joint video + audio, single-stream packed DiT) ------------------------------------------------------

def tiny_minimax_unet_config(num_layers=2, refiner_layers=2, num_heads=4, head_dim=32, hidden=96, text_dim=64,
                             rope_freqs_per_axis=4):
    """The unet_config comfy.model_detection builds for a MiniMax H3 checkpoint ('video_patch_proj.weight' and
    'audio_patch_proj.weight' present; every size is read from the state dict, so a tiny file is detected as is),
    tiny, for comfy.supported_models.MiniMaxH3: ``num_heads`` heads of ``head_dim`` (real: 56 of 128) over a residual
    stream of ``hidden`` (real: 5376; like the real, hidden != heads * head_dim, the attention's qkv / out_proj map
    between them), ``num_layers`` DiT blocks (real: 50), a token refiner of ``refiner_layers`` blocks (real: 2) over
    the Qwen3-VL states of width ``text_dim`` (real: 5120; it must differ from ``hidden``, or the model takes the text
    as already refined), the time embedder 64 -> hidden -> hidden / 2 (real: 256 -> 5376 -> 2688, no adaLN curve
    table) and ``rope_freqs_per_axis`` RoPE frequencies per (t, h, w) axis, which rotate the first
    6 * rope_freqs_per_axis dimensions of each head (real: 16, 96 of 128). Latent channels as the real: video 24
    (patch 1x2x2), audio 32."""
    if 6 * rope_freqs_per_axis > head_dim:
        raise ValueError("the rotary part (6 * rope_freqs_per_axis) must fit in head_dim")
    if text_dim == hidden:
        raise ValueError("text_dim must differ from hidden (the model skips its token refiner otherwise)")
    return dict(image_model="minimax_h3", num_layers=num_layers, token_refiner_num_layers=refiner_layers,
                hidden_size=hidden, num_attention_heads=num_heads, attention_head_dim=head_dim,
                ffn_hidden_size=2 * hidden, latents_dim=24, audio_latents_dim=32, text_dim=text_dim,
                timestep_input_dim=64, time_embed_hidden_size=hidden, time_embed_dim=hidden // 2,
                rope_inv_freq_len=rope_freqs_per_axis)


def load_tiny_minimax(seed=240, **config):
    """A tiny MiniMax H3 (ComfyUI's model_base.MiniMaxH3 around comfy.ldm.minimax.model.MiniMaxH3Model, random fp32
    weights with fan-in scales; the RoPE inverse frequencies 10000 ** (-2i / (2 * n)) per axis) as a ModelPatcher,
    through ComfyUI's MiniMaxH3 config class (FLOW_AV sampling, shift 12 video / 3 audio): see
    ``tiny_minimax_unet_config`` (``config``: its arguments). Inputs: ``minimax_inputs``.

    The model takes one packed sequence without a batch dimension: h is (seq, hidden), the attention gets
    (1, heads, seq, head_dim) through AttentionTensorContainer with skip_reshape; batch > 1 raises, and cond and
    uncond never share a call (their minimax_payload, a CONDConstant holding a PackedLayout, never compares equal),
    so cfg > 1 makes two model calls of batch 1 per step. The token refiner runs once per sampling in extra_conds
    (model_base.MiniMaxH3.preprocess_text_embeds, attention over the text alone, no transformer_options)."""
    import torch
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    model_config = comfy.supported_models.MiniMaxH3(tiny_minimax_unet_config(**config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    state = _random_state(model.diffusion_model.state_dict(), seed, fan_in=True)
    n = state["rope.inv_freq"].shape[0]
    state["rope.inv_freq"] = 1.0 / (10000.0 ** (torch.arange(0, 2 * n, 2, dtype=torch.float32) / (2 * n)))
    model.load_model_weights({"model.diffusion_model." + k: v for k, v in state.items()}, "model.diffusion_model.")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class TinyMiniMaxClip:
    """A stand-in for the MiniMax H3 CLIP (Qwen3-VL-32B, which has no tiny form in ComfyUI) with the two methods
    ComfyUI's MiniMax nodes and CLIPTextEncode call: ``tokenize`` lays the presentation out as
    comfy.text_encoders.minimax.MiniMaxH3Tokenizer does (labels '<Picture i>: ', '<Video k>: ' + '<T.T seconds>' per
    2-frame block, '<Audio j>: ', then the prompt), with fixed token counts: the prompt ``text_tokens``, each label
    ``label_tokens``, each vision block 2 (vision start / end) + one token per 32x32 pixels (at least 4);
    ``encode_from_tokens_scheduled`` gives what the real CLIP gives: [[states (1, L, text_dim) N(0, 1) (seed
    ``seed``), {'pooled_output': None, 'minimax_token_tags': (L,) long, 0 over each vision block and its flanking
    tokens, 1 elsewhere}]]."""

    def __init__(self, text_tokens=7, seed=1, text_dim=64, label_tokens=5):
        self.text_tokens, self.seed, self.text_dim, self.label_tokens = text_tokens, seed, text_dim, label_tokens

    @staticmethod
    def _vision_tokens(frames):
        import math
        return 2 + max(4, math.ceil(frames.shape[-3] / 32) * math.ceil(frames.shape[-2] / 32))

    def tokenize(self, text, return_word_ids=False, images=(), minimax_ref_items=None, **kwargs):
        runs = []  # (tag, n)
        if minimax_ref_items:
            for item in minimax_ref_items:
                runs.append((1, self.label_tokens))
                if item["type"] == "image":
                    runs.append((0, self._vision_tokens(item["data"])))
                elif item["type"] == "video":  # 2 fps frames, repeat-padded to pairs: one block per pair
                    for _ in range((item["data"].shape[0] + 1) // 2):
                        runs += [(1, self.label_tokens - 1), (0, self._vision_tokens(item["data"]))]
        else:
            for image in images:
                runs += [(1, self.label_tokens), (0, self._vision_tokens(image))]
        runs.append((1, self.text_tokens))
        return {"minimax_runs": runs}

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        import torch
        tags = torch.cat([torch.full((n,), tag, dtype=torch.long) for tag, n in tokens["minimax_runs"]])
        states = torch.randn(1, tags.shape[0], self.text_dim, generator=torch.Generator().manual_seed(self.seed))
        return [[states, {"pooled_output": None, "minimax_token_tags": tags}]]


@contextlib.contextmanager
def tiny_minimax_vae_classes(ch=32, decoder_layers=1, decoder_heads=2, decoder_head_dim=16):
    """ComfyUI's MiniMax H3 VAE classes (comfy.ldm.minimax.vae.MiniMaxH3VideoVAE and its ViT3DDecoder), which
    comfy.sd.VAE builds at their fixed real size, replaced for the duration by subclasses of the tiny sizes
    ``tiny_minimax_vae`` describes (yields the VAE subclass). Helper processes use it too, to rebuild the same VAE
    from its weights (tests/helper_hooks.py, COMFY_XDIT_TEST_TINY_MINIMAX_VAE)."""
    import comfy.ldm.minimax.vae as minimax_vae
    base_vae, base_decoder = minimax_vae.MiniMaxH3VideoVAE, minimax_vae.ViT3DDecoder

    class TinyDecoder(base_decoder):
        def __init__(self, **kwargs):
            kwargs.update(num_layers=decoder_layers, heads=decoder_heads, dim_head=decoder_head_dim)
            super().__init__(**kwargs)

    class MiniMaxH3VideoVAE(base_vae):   # the class name the MiniMax adapter knows
        def __init__(self, **kwargs):
            kwargs.update(ch=ch, ch_mult=(1,) * 6, num_res_blocks=1)
            super().__init__(**kwargs)

    minimax_vae.MiniMaxH3VideoVAE, minimax_vae.ViT3DDecoder = MiniMaxH3VideoVAE, TinyDecoder
    try:
        yield MiniMaxH3VideoVAE
    finally:
        minimax_vae.MiniMaxH3VideoVAE, minimax_vae.ViT3DDecoder = base_vae, base_decoder


def tiny_minimax_vae(seed=250, ch=32, decoder_layers=1, decoder_heads=2, decoder_head_dim=16):
    """A random-weight MiniMax H3 video VAE as a comfy.sd.VAE built by ComfyUI's own VAE detection (24 latent
    channels, 16x spatial, pixel frames 17k+5 <-> latent frames 5k+2, an image is 1 latent frame): ComfyUI's
    comfy.ldm.minimax.vae.MiniMaxH3VideoVAE with its 3D causal CNN encoder ``ch`` channels wide at all six levels
    (real: 128 x (1, 2, 2, 4, 4, 8); its GroupNorms have 32 groups, so ch >= 32) and one residual block per level
    (real: 2), and a ViT3D decoder of ``decoder_layers`` x ``decoder_heads`` x ``decoder_head_dim``
    (real: 36 x 32 x 64), built inside ``tiny_minimax_vae_classes``."""
    import torch
    import comfy.sd
    import comfy.ldm.minimax.vae as minimax_vae
    with tiny_minimax_vae_classes(ch, decoder_layers, decoder_heads, decoder_head_dim) as tiny_vae:
        with torch.device("meta"):
            shapes = tiny_vae().state_dict()
        state = _random_state(shapes, seed, fan_in=True)
        for k in ("latents_mean", "latents_std"):
            state[k] = torch.tensor(getattr(minimax_vae, k.upper()))
        return comfy.sd.VAE(sd=state, dtype=torch.float32)


def minimax_inputs(mode="t2v", frames=2, height=4, width=6, text_tokens=7, seed=1, text_dim=64, last_frame=False,
                   ref_video=True, negative_refs=False, negative_tokens=None):
    """(positive, negative, latent) for a tiny MiniMax H3 (``load_tiny_minimax``, same ``text_dim``), with ``frames``
    latent video frames (5k + 2: 2, 7, 12 ..; 17k + 5 pixel frames at 24 fps) of height x width latent pixels (16x),
    made by ComfyUI's own MiniMax H3 nodes with the text encoder stand-in ``TinyMiniMaxClip`` (positive seed
    ``seed``, negative ``seed`` + 1) and, for images, ``tiny_minimax_vae``:
      "t2v": MiniMaxH3ImageToVideo without frames (t2va): text-only conditioning (minimax_token_tags all 1);
      "i2v": MiniMaxH3ImageToVideo with a random first frame (and with ``last_frame`` a last one) (fl2va): the
             positive gains minimax_keyframes [{'resolved_frame_index': 0, 'latent': (1, 24, 1, height, width)}],
             packed as 'cond' rows after the text; the presentation gains '<Picture 1>: ' + a vision block (tags 0);
      "r2v": MiniMaxH3ReferenceToVideo with a random 64 x 32 pixel reference image and, with ``ref_video``, a
             random 5-frame 32 x 64 reference video (no audio: the audio VAE is not needed): the positive gains
             minimax_refs [{'kind': 'image', latent (1, 24, 1, 4, 2) ..}, {'kind': 'video', 'latent_t': 2,
             latent (1, 24, 2, 2, 4) ..}], packed as 'ref_img' rows after the text.
    The latent is the nodes' {'samples': NestedTensor((video (1, 24, frames, height, width), audio (1, 32, 2,
    round(pixel frames / 24 * 40))))}. The negative is CLIPTextEncode's (text only, ``negative_tokens``, default
    ``text_tokens``), or with ``negative_refs`` the same node with the same images. i2v / r2v need an even height
    and width (the model patchifies condition latents without padding them). The packed sequence is
    [text | cond or ref rows | audio 2 x audio_t | video frames x ceil(height / 2) x ceil(width / 2)]: by default
    t2v 7 + 16 + 12 = 35, i2v 20 + 6 + 16 + 12 = 54, r2v 33 + 6 + 16 + 12 = 67 tokens (none a multiple of 4)."""
    import nodes
    from comfy_extras.nodes_minimax_h3 import MiniMaxH3ImageToVideo, MiniMaxH3ReferenceToVideo, video_latent_t
    length = (frames - 2) // 5 * 17 + 5
    if video_latent_t(length) != frames:
        raise ValueError(f"MiniMax H3 latents have 5k + 2 frames (2, 7, 12 ..), not {frames}")
    if mode in ("i2v", "r2v") and (height % 2 or width % 2):
        raise ValueError("i2v / r2v need an even latent height and width")
    clip, negative_clip = TinyMiniMaxClip(text_tokens, seed, text_dim), TinyMiniMaxClip(
        text_tokens if negative_tokens is None else negative_tokens, seed + 1, text_dim)
    if mode in ("t2v", "i2v"):
        images = {}
        if mode == "i2v":
            images["first_frame"] = wan_image(1, height * 16, width * 16, seed + 2)
            if last_frame:
                images["last_frame"] = wan_image(1, height * 16, width * 16, seed + 3)

        def node(c):
            return MiniMaxH3ImageToVideo.execute(c, tiny_minimax_vae() if images else None, "prompt", width * 16,
                                                 height * 16, length, **images).result
    elif mode == "r2v":
        refs = {"ref_images": {"ref_image_1": wan_image(1, 64, 32, seed + 4)}}
        if ref_video:
            refs["ref_videos"] = {"ref_video_1": wan_image(5, 32, 64, seed + 5)}

        def node(c):
            return MiniMaxH3ReferenceToVideo.execute(c, tiny_minimax_vae(), None, "prompt", width * 16, height * 16,
                                                     length, "match", **refs).result
    else:
        raise ValueError(f"unknown MiniMax H3 mode {mode!r}; 't2v', 'i2v' or 'r2v'")
    positive, latent = node(clip)
    negative = node(negative_clip)[0] if negative_refs else nodes.CLIPTextEncode().encode(negative_clip, "")[0]
    return positive, negative, latent
