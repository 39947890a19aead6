"""Wan 2.1 / 2.2 (comfy/ldm/wan/model.py, ``WanModel``): text- and image-to-video, 1.3B, 5B and 14B.

- Split: Wan's forward has no split point of its own; the tokens (patch-embedded video, plus any reference or
  in-context latents) are split at the first block's input and gathered at the last block's output, through
  ComfyUI's block replacement (a ``BlockSplit``).
- Per-token arguments: the RoPE frequencies (``pe``) and, for Wan 2.2's per-frame timesteps (the 5B TI2V model),
  the modulation ``vec``: each rank takes the rows of its own tokens, as ComfyUI's ``repeat_e`` would hand them out.
- Local: cross-attention from each rank's tokens to the whole text (and CLIP image features) needs no exchange.
- Heads: ``num_heads`` (12 for 1.3B, 24 for 5B, 40 for 14B).
"""
import torch

from ..parallel.token_split import take_shard
from .adapter import Adapter, BlockSplit


def _model_class():
    import comfy.ldm.wan.model
    return comfy.ldm.wan.model.WanModel


def _tokens(frames, height, width, patch_size):
    """Patches of a latent padded to whole patches (comfy.ldm.common_dit.pad_to_patch_size)."""
    return -(-frames // patch_size[0]) * -(-height // patch_size[1]) * -(-width // patch_size[2])


class WanAdapter(Adapter):
    name = "wan"
    split = BlockSplit("img", per_token=("pe", "vec"), local_attention=(r"blocks\.\d+\.cross_attn",))
    block_lists = (("blocks", "double_block"),)
    limits = (("VACE, camera, S2V, HuMo and SCAIL Wan models",
               "their forwards add per-block inputs this adapter does not split; they run CFG/batch-parallel"),)

    def supports(self, diffusion_model):
        # Exact class: the subclasses have forwards of their own.
        return type(diffusion_model) is _model_class()

    def num_heads(self, diffusion_model):
        return diffusion_model.num_heads

    def per_token_slice(self, name, value, call, rank):
        if name != "vec":
            return take_shard(value, call.main_sizes, rank)
        if value.ndim < 4 or value.shape[1] == 1:
            return value   # one modulation for every token
        # Per frame (or per token): token j uses row j // r, with ComfyUI's repeat_e choosing r.
        tokens, rows = sum(call.main_sizes), value.shape[1]
        repeats = tokens // rows
        step = repeats if repeats * rows == tokens or repeats == 1 else repeats + 1
        start = sum(call.main_sizes[:rank])
        index = torch.arange(start, start + call.main_sizes[rank], device=value.device) // step
        return value.index_select(1, index)

    def token_counts(self, arguments, diffusion_model):
        """(None: the text is not split, the video's tokens, 0) as ``_forward`` builds them: the latent padded to
        whole patches, any frames concatenated in time, a reference frame, in-context latents."""
        patch = diffusion_model.patch_size
        x = arguments["x"]
        frames = x.shape[-3]
        if arguments.get("time_dim_concat") is not None:
            frames += -(-arguments["time_dim_concat"].shape[-3] // patch[0]) * patch[0]
        if diffusion_model.ref_conv is not None and arguments.get("reference_latent") is not None:
            frames += 1
        tokens = _tokens(frames, x.shape[-2], x.shape[-1], patch)
        for latent in arguments.get("context_latents") or ():
            tokens += _tokens(*latent.shape[-3:], patch)
        return None, tokens, 0


ADAPTER = WanAdapter()
