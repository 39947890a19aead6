"""Per-model adapters: what each model family needs to run in parallel through ComfyUI's own hooks.

One module per family, each an ``Adapter`` (patches/adapter.py) that declares where the tokens split, where the
output gathers, its heads, its transformer blocks and what it cannot run in parallel. ``adapter_for`` returns the
family's adapter for a diffusion model, or None; a model without one runs CFG/batch-parallel (``ANY_MODEL``). The
helpers find the same adapter by the name the model spec carries. Nothing outside this package names a model family.
"""
from . import any_model, flux, hunyuan_video, krea2, ltx, minimax, mmdit, qwen_image, wan, z_image
from .hooks import ours

SEQUENCE_PARALLEL = (flux.ADAPTER, mmdit.ADAPTER, wan.ADAPTER, hunyuan_video.ADAPTER, minimax.ADAPTER,
                     ltx.VIDEO_ADAPTER, ltx.AUDIO_VIDEO_ADAPTER, qwen_image.ADAPTER, krea2.ADAPTER, z_image.ADAPTER)
ANY_MODEL = any_model.ADAPTER
ADAPTERS = {adapter.name: adapter for adapter in SEQUENCE_PARALLEL + (ANY_MODEL,)}
# What the sequence-parallel adapters cover, for messages.
FAMILIES = ("FLUX, Chroma, SD3, SD3.5, Wan, HunyuanVideo, MiniMax H3, LTX-Video, LTX-2, Qwen-Image, Z-Image, "
            "Lumina 2 and Krea 2")

__all__ = ["ADAPTERS", "ANY_MODEL", "FAMILIES", "SEQUENCE_PARALLEL", "adapter_for", "adapter_named", "ours",
           "transformer_blocks", "vae_tile_decoder"]


def adapter_for(diffusion_model):
    """The family's sequence-parallel adapter for ``diffusion_model``, or None."""
    return next((adapter for adapter in SEQUENCE_PARALLEL if adapter.supports(diffusion_model)), None)


def adapter_named(name):
    return ADAPTERS[name]


def vae_tile_decoder(first_stage_model):
    """(the method of a VAE model that decodes one tile when the VAE tiles inside its own decode, as its family
    adapter names it, or None; why its tiles cannot be decoded on other GPUs, or None)."""
    classes = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(first_stage_model).__mro__}
    for adapter in SEQUENCE_PARALLEL:
        for name, reason in adapter.vae_unspreadable.items():
            if name in classes:
                return None, reason
    method = next((method for adapter in SEQUENCE_PARALLEL for name, method in adapter.vae_tile_decoders.items()
                   if name in classes), None)
    return method, None


def transformer_blocks(diffusion_model):
    """((attribute, index), module) of the model's transformer blocks in run order, as its adapter names them
    (none for a model without a family adapter)."""
    adapter = adapter_for(diffusion_model)
    return list(adapter.blocks(diffusion_model)) if adapter is not None else []
