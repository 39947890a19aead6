"""Z-Image and Lumina 2 (comfy/ldm/lumina/model.py, ``NextDiT``; Z-Image: 30 heads).

- Split: ``patchify_and_embed`` returns the joint sequence (the caption, padded, then the image, padded) with its
  RoPE frequencies; each rank keeps its slice of the caption and of the image, and of their frequencies.
- Local: the refiners inside ``patchify_and_embed`` (two over the caption, two over the image) run before the split,
  whole on every rank; the 30 main layers are split.
- Gather: after the last main layer, the image tokens of every rank, placed after the whole caption's length, where
  ``unpatchify`` reads them.
- Heads: ``n_heads`` (30 for Z-Image: Ulysses 2, 3, 5, 6; ring or USP for 4 and 8).
"""
import functools
import inspect

import torch

from ..parallel.call import active_call
from ..parallel.token_split import take_shard
from . import hooks
from .adapter import Adapter, block_hook, gather_main_tokens, local_attention


def _model_class():
    import comfy.ldm.lumina.model
    return comfy.ldm.lumina.model.NextDiT


def _split_embeddings(original):
    """``patchify_and_embed`` as a parallel call runs it: its joint sequence and frequencies cut to this rank's
    caption and image tokens."""
    signature = inspect.signature(original)

    @hooks.ours
    @functools.wraps(original)
    def patchify_and_embed(*args, **kwargs):
        call = active_call(signature.bind(*args, **kwargs).arguments.get("transformer_options"))
        out = original(*args, **kwargs)
        if call is None:
            return out
        embedded, mask, image_sizes, caption_sizes, frequencies, timestep_zero_index = out
        caption = caption_sizes[0]
        call.plan_tokens(caption, embedded.shape[1] - caption)
        rank = call.mesh.sp_rank

        def local(sequence):
            return torch.cat((take_shard(sequence[:, :caption], call.txt_sizes, rank),
                              take_shard(sequence[:, caption:], call.main_sizes, rank)), dim=1)

        return local(embedded), mask, image_sizes, caption_sizes, local(frequencies), timestep_zero_index

    return patchify_and_embed


def _gather_image(out, call):
    """``unpatchify`` reads the image after the whole caption's length: it finds the gathered image there."""
    return gather_main_tokens(out, call, start=call.txt_sizes[call.mesh.sp_rank], lead=sum(call.txt_sizes))


def _local(adapter, forward, name, names):
    return local_attention(forward)


class ZImageAdapter(Adapter):
    name = "z_image"
    module_wrappers = ((r"layers\.\d+", block_hook(gather=_gather_image, sharded_weights=True)),
                       (r"(context|noise|siglip)_refiner\.\d+", _local))
    block_lists = (("layers", "double_block"),)
    replaces_blocks = False
    limits = (("Z-Image Omni's reference latents", "their tokens take timestep-zero ranges the split does not "
               "follow yet; such calls run on one GPU"),
              ("the refiners", "4 layers before the split run whole on every GPU"))

    def supports(self, diffusion_model):
        return type(diffusion_model) is _model_class()

    def num_heads(self, diffusion_model):
        return diffusion_model.n_heads

    def install_on_patcher(self, model_patcher, shard_weights=False):
        super().install_on_patcher(model_patcher, shard_weights)
        name = "diffusion_model.patchify_and_embed"
        model_patcher.add_object_patch(name, _split_embeddings(model_patcher.get_model_object(name)))

    def install_on_model(self, diffusion_model):
        super().install_on_model(diffusion_model)
        diffusion_model.patchify_and_embed = _split_embeddings(diffusion_model.patchify_and_embed)

    def family_reason(self, arguments, diffusion_model, ring_degree):
        if arguments.get("ref_latents"):
            return "Z-Image Omni's reference latents are not split across GPUs yet"
        return None

    def token_counts(self, arguments, diffusion_model):
        """At least these many (the model pads both to a multiple of its pad size, which only adds tokens)."""
        patch = diffusion_model.patch_size
        x = arguments["x"]
        return arguments["context"].shape[1], -(-x.shape[-2] // patch) * -(-x.shape[-1] // patch), 0


ADAPTER = ZImageAdapter()
