"""Krea 2 (comfy/ldm/krea2/model.py, ``SingleStreamDiT``): one stream of text, image and reference tokens.

- Split: after the embeddings, at FLUX's ``post_input`` point (a ``PostInputSplit``): text, generated-image and
  reference tokens each split on their own, with their position ids.
- Per-token arguments: the blocks' ``timestep_zero_index`` (references at timestep zero), which becomes this rank's
  local start of its reference tokens.
- Gather: after the last block, the generated image's tokens of every rank, placed after the whole text's length,
  where the forward cuts the image out.
- Local: the text-fusion transformer runs before the split, over the text encoder's layers, on every rank.
- Heads: 48 query heads (12 key/value heads, expanded before the attention call, so Ulysses sees 48).
"""
from .adapter import Adapter, PostInputSplit, block_hook, gather_main_tokens, local_attention


def _model_class():
    import comfy.ldm.krea2.model
    return comfy.ldm.krea2.model.SingleStreamDiT


def _local_reference_start(call, kwargs):
    if kwargs.get("timestep_zero_index") is not None:   # the joint sequence: this rank's text, then its image
        rank = call.mesh.sp_rank
        kwargs["timestep_zero_index"] = call.txt_sizes[rank] + call.main_sizes[rank]


def _gather_image(out, call):
    """The forward cuts the image out after the whole text's length: it finds the gathered image there."""
    return gather_main_tokens(out, call, start=call.txt_sizes[call.mesh.sp_rank], lead=sum(call.txt_sizes))


def _tokens(latent, patch):
    return -(-latent.shape[-2] // patch) * -(-latent.shape[-1] // patch)


class Krea2Adapter(Adapter):
    name = "krea2"
    split = PostInputSplit()
    module_wrappers = (("txtfusion", lambda adapter, forward, name, names: local_attention(forward)),
                       (r"blocks\.\d+", block_hook(_local_reference_start, _gather_image, sharded_weights=True)))
    block_lists = (("blocks", "single_block"),)
    replaces_blocks = False

    def supports(self, diffusion_model):
        return type(diffusion_model) is _model_class()

    def num_heads(self, diffusion_model):
        return diffusion_model.heads

    def token_counts(self, arguments, diffusion_model):
        patch = diffusion_model.patch
        method = arguments.get("ref_latents_method", diffusion_model.default_ref_method)
        references = arguments.get("ref_latents") if method is not None else None
        return (arguments["context"].shape[1], _tokens(arguments["x"], patch),
                sum(_tokens(r, patch) for r in references or ()))


ADAPTER = Krea2Adapter()
