"""The models ``bench --model`` can time: random weights named as each family's checkpoints are, so that ComfyUI's own
loader detects the family and builds its own model class, and the latent and conditioning a sampling run of it takes.

Every builder reads the shapes from ComfyUI's model class built on the meta device, so a size here is always one
that ComfyUI can build, and ``device="meta"`` returns those shapes without values (to check detection for free).
"""
import contextlib
import functools
from dataclasses import dataclass
from typing import Callable

FLUX_DEV = dict(hidden=3072, heads=24, depth=19, depth_single=38)
TINY = dict(hidden=512, heads=4, depth=2, depth_single=2)

# ComfyUI's MMDiT derives its width from depth: hidden size 64 x depth, depth heads of 64 channels.
# pos_embed_max_size: the side, in patches, of the position-embedding grid every image's is cropped from.
SD35_LARGE = dict(depth=38, pos_embed_max_size=192, x_block_self_attn_layers=())
SD35_MEDIUM = dict(depth=24, pos_embed_max_size=384, x_block_self_attn_layers=tuple(range(13)))

# ComfyUI's SDXL UNet (comfy/model_detection.py, unet_config_from_diffusers_unet) with BASE's 64-channel heads.
SDXL_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
                 channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048, adm_in_channels=2816,
                 num_classes="sequential", num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                 use_spatial_transformer=True, legacy=False, use_checkpoint=False, use_temporal_attention=False,
                 use_temporal_resblock=False)

# Wan 2.1 / 2.2 text-to-video (comfy/ldm/wan/model.py). ComfyUI's detection reads dim, ffn_dim, the layers and the
# channels from the shapes and takes num_heads as dim // 128, the umT5 width 4096 and patch (1, 2, 2) as fixed.
# The 14B is Wan 2.1's and each of Wan 2.2 A14B's two experts; the 5B is Wan 2.2 TI2V with its 48-channel VAE.
WAN_14B = dict(dim=5120, heads=40, ffn_dim=13824, layers=40, channels=16)
WAN_1_3B = dict(dim=1536, heads=12, ffn_dim=8960, layers=30, channels=16)
WAN_5B = dict(dim=3072, heads=24, ffn_dim=14336, layers=30, channels=48)

# HunyuanVideo 1.0 (comfy/ldm/hunyuan_video/model.py), 13B: 20 double-stream and 40 single-stream blocks. ComfyUI's
# detection reads the widths, blocks and channels from the shapes and takes num_heads as hidden // 128; the LLaVA text
# is 4096 wide, CLIP-L's pooled vector 768.
HUNYUAN_VIDEO = dict(hidden=3072, heads=24, depth=20, depth_single=40, text_dim=4096)

# Qwen-Image (comfy/ldm/qwen_image/model.py), the 20B double-stream MMDiT. ComfyUI's detection reads only the input
# channels (16 latent channels packed 2x2: 64) and the layers; the heads, their width and the Qwen2.5-VL-7B text width
# are the model's defaults.
QWEN_IMAGE = dict(layers=60, heads=24, head_dim=128, text_dim=3584)

# Z-Image Turbo (comfy/ldm/lumina/model.py, Lumina 2's NextDiT), 6B. ComfyUI's detection knows Z-Image by its width
# 3840 and then fixes 30 heads of 128 and 2 noise and 2 context refiner layers; it reads the layers and the Qwen3-4B
# text width.
Z_IMAGE = dict(dim=3840, heads=30, layers=30, refiner_layers=2, text_dim=2560)

# Krea 2 (comfy/ldm/krea2/model.py, SingleStreamDiT). ComfyUI's detection reads the width, the query and key/value
# heads (taking them 128 wide), the layers and the text: the Qwen3-VL-4B hidden states of 12 layers of 2560, which the
# model's text-fusion transformer (its 20 heads fixed) folds into one.
KREA2 = dict(features=6144, heads=48, kvheads=12, layers=28, txtlayers=12, txtdim=2560)

# MiniMax H3 (comfy/ldm/minimax/model.py), joint video and audio: 50 single-stream blocks of 56 heads of 128 over a
# residual stream of 5376 (the attention maps between the two widths), a 2-block token refiner over Qwen3-VL-32B's
# 5120-wide states, 16 RoPE frequencies per (t, h, w) axis. ComfyUI's detection reads every size from the shapes.
MINIMAX_H3 = dict(hidden=5376, heads=56, head_dim=128, layers=50, refiner_layers=2, ffn_dim=14336, text_dim=5120,
                  rope_freqs=16)


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


def random_values(shapes, dtype, device, seed=0, name=lambda key: key, norm_scales=False):
    """Random weights of ``shapes`` (a meta state dict) on ``device``, under the names ``name`` gives its keys:
    matrices and kernels N(0, 0.02), vectors N(0, 0.01). ``norm_scales``: 1-D '.weight's are norm scales, 1 + N(0, 0.1),
    so that every branch counts in the output (at 0.01 a UNet's output is its skip connections alone, and an error
    against 1 device would measure nothing). On meta: the shapes alone."""
    import torch
    if torch.device(device).type == "meta":
        return {name(k): torch.empty(v.shape, dtype=dtype, device="meta") for k, v in shapes.items()}
    generator = torch.Generator(device=device).manual_seed(seed)

    def value(key, shape):
        noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        if len(shape) > 1:
            return noise * 0.02
        return 1.0 + noise * 0.1 if norm_scales and key.endswith(".weight") else noise * 0.01

    return {name(k): value(k, v.shape).to(dtype) for k, v in shapes.items()}


def bfl_name(key):
    """BFL checkpoints name the q/k RMSNorm weights '.scale'; ComfyUI renames them to '.weight' on load."""
    return key[:-len(".weight")] + ".scale" if key.endswith(("query_norm.weight", "key_norm.weight")) else key


def random_flux_state_dict(size, dtype, device, seed=0, guidance=True, context_dim=4096, in_channels=16):
    """BFL-named FLUX weights with random values, created on ``device``. ComfyUI's model detection reads the sizes
    back from the shapes; it hard-codes axes_dim [16, 56, 56], so ``hidden`` must be 128 x ``heads``."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    with weight_shapes():
        shapes = Flux(operations=comfy.ops.disable_weight_init, dtype=dtype, device="meta", in_channels=in_channels,
                      out_channels=16, vec_in_dim=768, context_in_dim=context_dim, hidden_size=size["hidden"],
                      mlp_ratio=4.0, num_heads=size["heads"], depth=size["depth"],
                      depth_single_blocks=size["depth_single"], axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                      qkv_bias=True, guidance_embed=guidance, txt_ids_dims=[]).state_dict()
    return random_values(shapes, dtype, device, seed, bfl_name)   # small norm scales: docs/benchmarks.md took FLUX so


def random_sd3_state_dict(size, dtype, device, seed=0):
    """SD3.5 weights with random values in the SAI checkpoint naming, which is ComfyUI's own MMDiT's: 16 latent
    channels, T5 context of 4096, CLIP-L+G pooled 2048, RMS q/k norm; ``x_block_self_attn_layers`` (SD3.5 Medium)
    get the second attention that ComfyUI detects by its keys."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
    hidden = 64 * size["depth"]
    with weight_shapes():
        shapes = OpenAISignatureMMDITWrapper(
            input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=size["depth"], adm_in_channels=2048,
            context_embedder_config={"target": "torch.nn.Linear",
                                     "params": {"in_features": 4096, "out_features": hidden}},
            num_patches=size["pos_embed_max_size"] ** 2, pos_embed_max_size=size["pos_embed_max_size"],
            qk_norm="rms", x_block_self_attn_layers=list(size["x_block_self_attn_layers"]), dtype=dtype,
            device="meta", operations=comfy.ops.disable_weight_init).state_dict()
    return random_values(shapes, dtype, device, seed, norm_scales=True)


def random_unet_state_dict(config, dtype, device, seed=0):
    """UNet weights with random values in the SGM checkpoint naming ('input_blocks.*', 'label_emb.*'), which is
    ComfyUI's own UNetModel's."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    with weight_shapes():
        shapes = UNetModel(**config, dtype=dtype, device="meta", operations=comfy.ops.disable_weight_init).state_dict()
    return random_values(shapes, dtype, device, seed, norm_scales=True)


def random_wan_state_dict(size, dtype, device, seed=0):
    """Wan text-to-video weights with random values in the original checkpoints' naming, which is ComfyUI's own
    WanModel's ('blocks.N.self_attn.q', 'head.modulation'): umT5 context of 4096, patch (1, 2, 2), qk-norm."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    if size["dim"] != 128 * size["heads"]:
        raise ValueError(f"Wan dim {size['dim']} with {size['heads']} heads: ComfyUI's detection would build "
                         f"{size['dim'] // 128} heads (it assumes heads of 128)")
    with weight_shapes():
        shapes = WanModel(model_type="t2v", patch_size=(1, 2, 2), in_dim=size["channels"], out_dim=size["channels"],
                          dim=size["dim"], ffn_dim=size["ffn_dim"], freq_dim=256, text_dim=4096,
                          num_heads=size["heads"], num_layers=size["layers"], qk_norm=True, cross_attn_norm=True,
                          eps=1e-6, dtype=dtype, device="meta", operations=comfy.ops.disable_weight_init).state_dict()
    return random_values(shapes, dtype, device, seed, norm_scales=True)


def random_hunyuan_video_state_dict(size, dtype, device, seed=0):
    """HunyuanVideo 1.0 text-to-video weights with random values in ComfyUI's own naming of its HunyuanVideo model
    ('double_blocks.N.img_attn.qkv', 'txt_in.individual_token_refiner'), which its detection reads as a checkpoint:
    16 latent channels, patch (1, 2, 2), RoPE axes (16, 56, 56) of theta 256, guidance embedding."""
    import comfy.ops
    from comfy.ldm.hunyuan_video.model import HunyuanVideo
    _require("HunyuanVideo", size, heads=size["hidden"] // 128)
    with weight_shapes():
        shapes = HunyuanVideo(
            in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=size["text_dim"],
            hidden_size=size["hidden"], mlp_ratio=4.0, num_heads=size["heads"], depth=size["depth"],
            depth_single_blocks=size["depth_single"], axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2],
            qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False, use_cond_type_embedding=False,
            vision_in_dim=None, meanflow_sum=False, dtype=dtype, device="meta",
            operations=comfy.ops.disable_weight_init).state_dict()
    return random_values(shapes, dtype, device, seed, norm_scales=True)


def _require(family, size, **detected):
    """ValueError unless ``size`` has the values that ComfyUI's detection builds ``family`` with, whatever the weights'
    shapes say."""
    wrong = {key: size[key] for key, value in detected.items() if size[key] != value}
    if wrong:
        raise ValueError(f"{family} with {wrong}: ComfyUI's detection would build it with {detected}")


def random_qwen_image_state_dict(size, dtype, device, seed=0):
    """Qwen-Image weights with random values in its checkpoints' naming, which is ComfyUI's own
    QwenImageTransformer2DModel's ('txt_norm', 'img_in', 'transformer_blocks.N.attn.to_q'): patch 2, in 64 / out 16
    channels, RoPE axes (16, 56, 56)."""
    import comfy.ops
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
    _require("Qwen-Image", size, heads=24, head_dim=128, text_dim=3584)
    with weight_shapes():
        shapes = QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=size["layers"],
            num_attention_heads=size["heads"], attention_head_dim=size["head_dim"],
            joint_attention_dim=size["text_dim"], axes_dims_rope=(16, 56, 56), dtype=dtype, device="meta",
            operations=comfy.ops.disable_weight_init).state_dict()
    return random_values(shapes, dtype, device, seed, norm_scales=True)


def random_z_image_state_dict(size, dtype, device, seed=0):
    """Z-Image weights with random values in its checkpoints' naming, which is ComfyUI's own NextDiT's
    ('cap_embedder.1', 'noise_refiner.N.attention.k_norm', 'layers.N'), with the learned padding tokens
    ('cap_pad_token', 'x_pad_token') by which ComfyUI pads text and image to multiples of 32: 16 latent channels,
    patch 2, Z-Image's adaLN, RoPE axes (32, 48, 48) of theta 256, SwiGLU 8/3."""
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT
    _require("Z-Image", size, dim=3840, heads=30, refiner_layers=2)
    with weight_shapes():
        shapes = NextDiT(
            patch_size=2, in_channels=16, dim=size["dim"], n_layers=size["layers"],
            n_refiner_layers=size["refiner_layers"], n_heads=size["heads"], n_kv_heads=size["heads"],
            ffn_dim_multiplier=8.0 / 3.0, qk_norm=True, cap_feat_dim=size["text_dim"], axes_dims=[32, 48, 48],
            axes_lens=[1536, 512, 512], rope_theta=256.0, z_image_modulation=True, time_scale=1000.0,
            pad_tokens_multiple=32, dtype=dtype, device="meta", operations=comfy.ops.disable_weight_init).state_dict()
    return random_values(shapes, dtype, device, seed, norm_scales=True)


def random_krea2_state_dict(size, dtype, device, seed=0):
    """Krea 2 weights with random values in its checkpoints' naming, which is ComfyUI's own SingleStreamDiT's ('first',
    'blocks.N.attn.wq', 'txtfusion.projector'): 16 latent channels, patch 2. Its RMSNorms store the scale less 1
    ('.scale'), so small values leave them near 1."""
    import comfy.ops
    from comfy.ldm.krea2.model import SingleStreamDiT
    if size["features"] != 128 * size["heads"] or size["txtdim"] % 20:
        raise ValueError(f"Krea 2 of {size['features']} features in {size['heads']} heads, text {size['txtdim']} wide: "
                         f"ComfyUI's detection assumes heads of 128, and the text-fusion transformer has 20 heads")
    with weight_shapes():
        shapes = SingleStreamDiT(
            features=size["features"], heads=size["heads"], kvheads=size["kvheads"], layers=size["layers"], patch=2,
            channels=16, txtlayers=size["txtlayers"], txtdim=size["txtdim"], dtype=dtype, device="meta",
            operations=comfy.ops.disable_weight_init).state_dict()
    return random_values(shapes, dtype, device, seed)


def random_minimax_state_dict(size, dtype, device, seed=0):
    """MiniMax H3 weights with random values in its checkpoints' naming, which is ComfyUI's own MiniMaxH3Model's
    ('video_patch_proj', 'token_refiner.blocks.N', 'blocks.N.attn.qkv_proj', 'rope.inv_freq'): 24 video channels in
    1x2x2 patches, 32 audio channels, the time embedder 256 -> hidden -> hidden / 2 (no adaLN curve table), the patch
    projections, time embedder and output heads in float32 as the model keeps them, and the RoPE's inverse
    frequencies 10000 ** (-2i / 2n) per axis, not random values."""
    import torch
    import comfy.ops
    from comfy.ldm.minimax.model import MiniMaxH3Model
    if size["text_dim"] == size["hidden"]:
        raise ValueError(f"MiniMax H3 with text as wide as its hidden size {size['hidden']}: the model would take the "
                         f"text as already refined and skip its token refiner")
    with weight_shapes():
        shapes = MiniMaxH3Model(
            hidden_size=size["hidden"], num_layers=size["layers"], token_refiner_num_layers=size["refiner_layers"],
            num_attention_heads=size["heads"], attention_head_dim=size["head_dim"], ffn_hidden_size=size["ffn_dim"],
            latents_dim=24, audio_latents_dim=32, patch_size=(1, 2, 2), text_dim=size["text_dim"],
            timestep_input_dim=256, time_embed_hidden_size=size["hidden"], time_embed_dim=size["hidden"] // 2,
            rope_inv_freq_len=size["rope_freqs"], dtype=dtype, device="meta",
            operations=comfy.ops.disable_weight_init).state_dict()
    state = random_values(shapes, dtype, device, seed, norm_scales=True)
    state = {key: value.to(shapes[key].dtype) for key, value in state.items()}   # the float32 layers stay float32
    if torch.device(device).type != "meta":
        n = size["rope_freqs"]
        state["rope.inv_freq"] = 1.0 / 10000.0 ** (torch.arange(0, 2 * n, 2, dtype=torch.float32, device=device)
                                                    / (2 * n))
    return state


def flux_conditioning(tokens, seed, image_hw=None):
    """Random FLUX conditioning (T5 tokens, CLIP pooled output, guidance) in ComfyUI's format."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=generator), {
        "pooled_output": torch.randn(1, 768, generator=generator), "guidance": 3.5}]]


def sd3_conditioning(tokens, seed, image_hw=None):
    """Random SD3 conditioning as its CLIP-L+G and T5 encoders give it: tokens of 4096, pooled output of 2048."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=generator), {
        "pooled_output": torch.randn(1, 2048, generator=generator)}]]


def sdxl_conditioning(tokens, seed, image_hw):
    """Random SDXL conditioning as CLIPTextEncodeSDXL gives it: CLIP-L+G tokens of 2048, CLIP-G's pooled 1280 and the
    image size the UNet's ADM input embeds (uncropped, the target size the image's own)."""
    import torch
    height, width = image_hw
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 2048, generator=generator), {
        "pooled_output": torch.randn(1, 1280, generator=generator), "width": width, "height": height,
        "crop_w": 0, "crop_h": 0, "target_width": width, "target_height": height}]]


def wan_conditioning(tokens, seed, image_hw=None):
    """Random Wan conditioning as its umT5-XXL encoder gives it (a prompt zero-padded to 512 tokens): tokens of 4096
    and no pooled output."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=generator), {"pooled_output": None}]]


def hunyuan_video_conditioning(size, tokens, seed, image_hw=None):
    """Random HunyuanVideo conditioning as its LLaVA-Llama-3 and CLIP-L encoders give a prompt: the hidden states and
    CLIP-L's pooled output (its guidance is embedded: ComfyUI's default 6.0)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, size["text_dim"], generator=generator),
             {"pooled_output": torch.randn(1, 768, generator=generator)}]]


def qwen_image_conditioning(size, tokens, seed, image_hw=None):
    """Random Qwen-Image conditioning as its Qwen2.5-VL-7B encoder gives a prompt: hidden states after the chat
    template and no pooled output; ComfyUI drops the attention mask where it masks nothing."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, size["text_dim"], generator=generator), {"pooled_output": None}]]


def z_image_conditioning(size, tokens, seed, image_hw=None):
    """Random Z-Image conditioning as its Qwen3-4B encoder gives a prompt: hidden states, no pooled output, and the
    attention mask, all ones (ComfyUI's Lumina 2 model then passes the model its length, not the mask)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, size["text_dim"], generator=generator), {
        "pooled_output": None, "attention_mask": torch.ones(1, tokens, dtype=torch.long)}]]


def krea2_conditioning(size, tokens, seed, image_hw=None):
    """Random Krea 2 conditioning as its Qwen3-VL-4B encoder gives a prompt: the hidden states of its tapped layers
    side by side, (1, tokens, txtlayers * txtdim), which the model unpacks; no pooled output, no mask."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, size["txtlayers"] * size["txtdim"], generator=generator), {"pooled_output": None}]]


def minimax_conditioning(size, tokens, seed, image_hw=None):
    """Random MiniMax H3 conditioning as its Qwen3-VL-32B encoder gives a text-only prompt (no chat template, no
    padding): the hidden states after layer 50, no pooled output, and the tokens' adaLN tags, all 1 (text; vision
    tokens would be 0)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, size["text_dim"], generator=generator), {
        "pooled_output": None, "minimax_token_tags": torch.ones(tokens, dtype=torch.long)}]]


def minimax_latent_frames(frames):
    """MiniMax H3's latent frames for a clip of ``frames`` pixel frames, which ComfyUI's nodes snap up to 17k + 5
    (33 becomes 39): 5k + 2."""
    frames = max(5, frames)
    frames += (5 - frames) % 17
    return (frames - 5) // 17 * 5 + 2


def _minimax_pixel_frames(latent_frames):
    """The clip's pixel frames (17k + 5) of MiniMax H3's 5k + 2 latent frames."""
    return (latent_frames - 2) // 5 * 17 + 5


def minimax_latent(latent_size):
    """The empty latent ComfyUI's EmptyMiniMaxH3LatentAV node makes for ``latent_size`` (frames, height, width): a
    NestedTensor of the video (1, 24, frames, height, width) and the stereo audio (1, 32, 2, 40 latent frames per
    second of the clip at 24 fps)."""
    from comfy_extras.nodes_minimax_h3 import EmptyMiniMaxH3LatentAV
    frames, height, width = latent_size
    node = EmptyMiniMaxH3LatentAV.execute(width * 16, height * 16, _minimax_pixel_frames(frames))
    return node.result[0]["samples"]


def minimax_tokens(latent_size, text_tokens):
    """MiniMax H3's one packed sequence: the text, the audio's latent frames (a token per stereo channel of each) and
    every video latent frame's 2x2 patches (ComfyUI pads to whole patches)."""
    frames, height, width = latent_size
    audio_frames = round(_minimax_pixel_frames(frames) / 24 * 40)
    return text_tokens + 2 * audio_frames + frames * -(-height // 2) * -(-width // 2)


def joint_tokens(latent_size, text_tokens):
    """A joint-attention transformer with 2x2 patches: image patches and text in one sequence."""
    height, width = latent_size
    return (height // 2) * (width // 2) + text_tokens


def padded_joint_tokens(latent_size, text_tokens):
    """Z-Image: text and image patches (ComfyUI pads to whole patches), each padded with learned tokens to a multiple
    of 32, in one sequence."""
    height, width = latent_size
    image_tokens = -(-height // 2) * -(-width // 2)
    return -(-image_tokens // 32) * 32 + -(-text_tokens // 32) * 32


def joint_video_tokens(latent_size, text_tokens):
    """HunyuanVideo: every latent frame's 2x2 patches and the text in one sequence."""
    return video_tokens(latent_size, text_tokens) + text_tokens


def unet_tokens(latent_size, text_tokens):
    """SDXL: its first attention level is the latent downsampled once; text is only cross-attended."""
    height, width = latent_size
    return (height // 2) * (width // 2)


def video_tokens(latent_size, text_tokens):
    """Wan: every latent frame's 2x2 patches (ComfyUI pads to whole patches) in one self-attention; text is only
    cross-attended."""
    frames, height, width = latent_size
    return frames * -(-height // 2) * -(-width // 2)


@dataclass(frozen=True)
class VideoSize:
    """A clip as ComfyUI's video latent nodes take it: width and height in pixels, and its length in frames."""
    width: int
    height: int
    frames: int

    def __str__(self):
        return f"{self.width}x{self.height}, {self.frames} frames"


@dataclass(frozen=True)
class BenchModel:
    """One ``--model``: its random weights and what one sampling run of it is fed."""
    description: str
    state_dict: Callable        # (dtype, device, seed=0) -> random weights, named as the family's checkpoints
    latent_channels: int
    conditioning: Callable      # (text_tokens, seed, (height, width) in pixels) -> ComfyUI conditioning
    cfg: float                  # above 1 ComfyUI batches cond and uncond into one model call
    resolutions: tuple          # GPU default: image sides in pixels, or a video's WIDTHxHEIGHT
    text_tokens: int            # GPU default: what the family's text encoders give a short prompt
    attention_tokens: Callable  # (latent size, text_tokens) -> the longest sequence one attention of a call sees
    latent_downscale: int = 8
    frames: int = 0             # a video model's default clip length in pixel frames; 0 for an image model
    frames_per_latent: int = 4  # a video VAE keeps the first frame and folds each further 4 into one latent frame
    latent_frames: Callable = None  # (pixel frames) -> latent frames, for a VAE that does not fold frames so
    latent: Callable = None     # (latent size) -> the empty latent, for a family whose latent is not one zero tensor

    def resolution(self, text, frames=None):
        """One ``--res`` entry: an image's side in pixels, or a video's WIDTHxHEIGHT of ``frames`` (the model's
        default if None). ValueError for any other text."""
        if not self.frames:
            return int(text)
        width, height = (int(side) for side in str(text).split("x"))
        if min(width, height) < self.latent_downscale:
            raise ValueError(f"{text}: both sides need {self.latent_downscale} pixels or more")
        return VideoSize(width, height, frames or self.frames)

    def latent_size(self, res):
        """The latent's shape after batch and channels for ``res`` (``resolution``'s): (height, width), or for a
        video (frames, height, width)."""
        if isinstance(res, VideoSize):
            frames = self.latent_frames(res.frames) if self.latent_frames else \
                (res.frames - 1) // self.frames_per_latent + 1
            return frames, res.height // self.latent_downscale, res.width // self.latent_downscale
        side = res // self.latent_downscale
        return side, side

    def empty_latent(self, latent_size):
        """The latent a sampling run starts from, of ``latent_size`` (the method's): zeros of (1, channels,
        *latent_size), or the family's own."""
        import torch
        if self.latent is not None:
            return self.latent(latent_size)
        return torch.zeros(1, self.latent_channels, *latent_size)

    def tokens(self, res, text_tokens):
        return self.attention_tokens(self.latent_size(res), text_tokens)


MODELS = {
    "flux-dev": BenchModel(
        description="FLUX.1-dev-size FLUX", state_dict=functools.partial(random_flux_state_dict, FLUX_DEV),
        latent_channels=16, conditioning=flux_conditioning, cfg=1.0, resolutions=(1024, 2048), text_tokens=512,
        attention_tokens=joint_tokens),
    "tiny": BenchModel(
        description="tiny FLUX", state_dict=functools.partial(random_flux_state_dict, TINY),
        latent_channels=16, conditioning=flux_conditioning, cfg=1.0, resolutions=(1024, 2048), text_tokens=512,
        attention_tokens=joint_tokens),
    # SD3's text: CLIP-L+G's 77 tokens and T5's 77, concatenated.
    "sd35-large": BenchModel(
        description="SD3.5-Large-size MMDiT", state_dict=functools.partial(random_sd3_state_dict, SD35_LARGE),
        latent_channels=16, conditioning=sd3_conditioning, cfg=4.0, resolutions=(1024,), text_tokens=154,
        attention_tokens=joint_tokens),
    "sd35-medium": BenchModel(
        description="SD3.5-Medium-size MMDiT", state_dict=functools.partial(random_sd3_state_dict, SD35_MEDIUM),
        latent_channels=16, conditioning=sd3_conditioning, cfg=4.0, resolutions=(1024,), text_tokens=154,
        attention_tokens=joint_tokens),
    "sdxl": BenchModel(
        description="SDXL-size UNet", state_dict=functools.partial(random_unet_state_dict, SDXL_UNET),
        latent_channels=4, conditioning=sdxl_conditioning, cfg=4.0, resolutions=(1024,), text_tokens=77,
        attention_tokens=unet_tokens),
    # Wan's text: umT5's 512 tokens; cfg 5 batches cond and uncond as Wan's workflows do. 832x480 is Wan's 480p;
    # the 5B's own size is 720p, in multiples of its 16x VAE and 2x2 patches.
    "wan-14b": BenchModel(
        description="Wan-14B-size video DiT", state_dict=functools.partial(random_wan_state_dict, WAN_14B),
        latent_channels=16, conditioning=wan_conditioning, cfg=5.0, resolutions=("832x480",), text_tokens=512,
        attention_tokens=video_tokens, frames=33),
    "wan-1.3b": BenchModel(
        description="Wan-1.3B-size video DiT", state_dict=functools.partial(random_wan_state_dict, WAN_1_3B),
        latent_channels=16, conditioning=wan_conditioning, cfg=5.0, resolutions=("832x480",), text_tokens=512,
        attention_tokens=video_tokens, frames=33),
    "wan-5b": BenchModel(
        description="Wan-2.2-5B-size video DiT", state_dict=functools.partial(random_wan_state_dict, WAN_5B),
        latent_channels=48, conditioning=wan_conditioning, cfg=5.0, resolutions=("1280x704",), text_tokens=512,
        attention_tokens=video_tokens, latent_downscale=16, frames=33),
    # HunyuanVideo's text: LLaVA's prompt template leaves about 256 tokens of a short prompt; cfg 1 with its
    # embedded guidance, as its workflows run it; 848x480 is its 480p.
    "hunyuan-video": BenchModel(
        description="HunyuanVideo-size video DiT",
        state_dict=functools.partial(random_hunyuan_video_state_dict, HUNYUAN_VIDEO), latent_channels=16,
        conditioning=functools.partial(hunyuan_video_conditioning, HUNYUAN_VIDEO), cfg=1.0,
        resolutions=("848x480",), text_tokens=256, attention_tokens=joint_video_tokens, frames=33),
    # Text as the encoders give a prompt of a few sentences. Qwen-Image's template (without its Lightning LoRA): cfg 4,
    # cond and uncond in one call; its native size is --res 1328. Z-Image Turbo's: cfg 1. Krea 2 has no template in
    # ComfyUI: cfg 4, as Qwen-Image's.
    "qwen-image": BenchModel(
        description="Qwen-Image-size MMDiT", state_dict=functools.partial(random_qwen_image_state_dict, QWEN_IMAGE),
        latent_channels=16, conditioning=functools.partial(qwen_image_conditioning, QWEN_IMAGE), cfg=4.0,
        resolutions=(1024,), text_tokens=256, attention_tokens=joint_tokens),
    "z-image": BenchModel(
        description="Z-Image-Turbo-size NextDiT", state_dict=functools.partial(random_z_image_state_dict, Z_IMAGE),
        latent_channels=16, conditioning=functools.partial(z_image_conditioning, Z_IMAGE), cfg=1.0,
        resolutions=(1024,), text_tokens=128, attention_tokens=padded_joint_tokens),
    "krea2": BenchModel(
        description="Krea-2-size single-stream DiT", state_dict=functools.partial(random_krea2_state_dict, KREA2),
        latent_channels=16, conditioning=functools.partial(krea2_conditioning, KREA2), cfg=4.0, resolutions=(1024,),
        text_tokens=256, attention_tokens=joint_tokens),
    # MiniMax H3's text: Qwen3-VL's states of the raw prompt, unpadded: 256 tokens, a paragraph on picture and sound.
    # ComfyUI has no MiniMax H3 template and its MiniMax nodes set no guidance: cfg 8, KSampler's default; any cfg
    # above 1 costs the same, cond and uncond in two calls a step (their payloads never share a batch). 832x480 as
    # Wan's 480p (ComfyUI's node defaults to 1344x768, 124 frames); --frames snaps up to 17k + 5 as its nodes do.
    "minimax-h3": BenchModel(
        description="MiniMax-H3-size audio-video DiT",
        state_dict=functools.partial(random_minimax_state_dict, MINIMAX_H3), latent_channels=24,
        conditioning=functools.partial(minimax_conditioning, MINIMAX_H3), cfg=8.0, resolutions=("832x480",),
        text_tokens=256, attention_tokens=minimax_tokens, latent_downscale=16, frames=33,
        latent_frames=minimax_latent_frames, latent=minimax_latent),
}
