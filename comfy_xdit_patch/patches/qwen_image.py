"""Qwen-Image and Qwen-Image-Edit (comfy/ldm/qwen_image/model.py, ``QwenImageTransformer2DModel``; 24 heads).

- Split: after the embeddings, at FLUX's ``post_input`` point (a ``PostInputSplit``): text, generated-image and
  reference-image tokens (Edit) each split on their own, with their position ids.
- Per-token arguments of every block: ``timestep_zero_index`` (the 2511 Edit model's references at timestep zero)
  becomes this rank's local start of its reference tokens; the text attention mask is cut to this rank's text (the
  attention gathers the whole key mask once per call: Ulysses only); ControlNet residuals, added over the generated
  image's tokens after each block, are cut to this rank's share when read.
- Gather: after the last block, the generated image's tokens of every rank (the forward keeps only those).
- Heads: ``num_attention_heads`` (24: Ulysses 2, 3, 4, 6, 8).
"""
import functools
import inspect

from ..parallel.call import active_call
from ..parallel.token_split import clip_to_shard, take_shard
from . import hooks
from .adapter import Adapter, PostInputSplit, block_hook, gather_main_tokens


def _model_class():
    import comfy.ldm.qwen_image.model
    return comfy.ldm.qwen_image.model.QwenImageTransformer2DModel


def _local_block_arguments(call, kwargs):
    rank = call.mesh.sp_rank
    if kwargs.get("timestep_zero_index") is not None:   # the image stream: this rank's generated tokens first
        kwargs["timestep_zero_index"] = call.main_sizes[rank]
    if kwargs.get("encoder_hidden_states_mask") is not None:
        kwargs["encoder_hidden_states_mask"] = take_shard(kwargs["encoder_hidden_states_mask"], call.txt_sizes, rank,
                                                          dim=-1)


def _gather_image(out, call):
    text, image = out
    return text, gather_main_tokens(image, call)


class _ShardedResiduals(list):
    """ControlNet residuals over the generated image's tokens, one per block, cut to this rank's tokens when the
    forward reads them; the last block's output is gathered already, so its residual stays whole."""

    def __init__(self, residuals, call, blocks):
        super().__init__(residuals)
        self.call, self.blocks = call, blocks

    def __getitem__(self, index):
        residual = super().__getitem__(index)
        if residual is None or index == self.blocks - 1:
            return residual
        return clip_to_shard(residual, self.call.main_sizes, self.call.mesh.sp_rank)


def _wrap_forward(original, blocks):
    signature = inspect.signature(original)

    @hooks.ours
    @functools.wraps(original)
    def forward(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        call = active_call(bound.arguments.get("transformer_options"))
        control = bound.arguments.get("control")   # _forward names it
        if call is None or control is None or control.get("input") is None:
            return original(*args, **kwargs)
        bound.arguments["control"] = dict(control, input=_ShardedResiduals(control["input"], call, blocks))
        return original(*bound.args, **bound.kwargs)

    return forward


def _tokens(latent, patch):
    frames = latent.shape[-3] if latent.ndim == 5 else 1
    return frames * -(-latent.shape[-2] // patch) * -(-latent.shape[-1] // patch)


class QwenImageAdapter(Adapter):
    name = "qwen_image"
    split = PostInputSplit()
    module_wrappers = ((r"transformer_blocks\.\d+", block_hook(_local_block_arguments, _gather_image)),)
    block_lists = (("transformer_blocks", "double_block"),)
    limits = (("a text attention mask with ring or USP", "the key mask is applied after the Ulysses exchange "
               "gathers the whole sequence; ring attention never holds it"),)

    def supports(self, diffusion_model):
        return type(diffusion_model) is _model_class()

    def num_heads(self, diffusion_model):
        return diffusion_model.transformer_blocks[0].attn.heads

    def install_on_patcher(self, model_patcher, shard_weights=False):
        super().install_on_patcher(model_patcher, shard_weights)
        blocks = len(model_patcher.get_model_object("diffusion_model").transformer_blocks)
        model_patcher.add_object_patch("diffusion_model._forward",
                                       _wrap_forward(model_patcher.get_model_object("diffusion_model._forward"), blocks))

    def install_on_model(self, diffusion_model):
        super().install_on_model(diffusion_model)
        diffusion_model._forward = _wrap_forward(diffusion_model._forward, len(diffusion_model.transformer_blocks))

    def family_reason(self, arguments, diffusion_model, ring_degree):
        if arguments.get("attention_mask") is not None and ring_degree > 1:
            return ("the conditioning carries a text attention mask, which runs sequence-parallel with parallelism "
                    "'ulysses' only; set parallelism to 'ulysses'")
        return None

    def token_counts(self, arguments, diffusion_model):
        patch = diffusion_model.patch_size
        return (arguments["context"].shape[1], _tokens(arguments["x"], patch),
                sum(_tokens(r, patch) for r in arguments.get("ref_latents") or ()))


ADAPTER = QwenImageAdapter()
