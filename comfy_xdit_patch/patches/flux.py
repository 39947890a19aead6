"""FLUX (comfy/ldm/flux: FLUX.1, Kontext, Fill, Redux, Flux.2) and Chroma (comfy/ldm/chroma, FLUX's blocks).

- Split: after the text and image embeddings (FLUX's ``post_input`` patch point), each rank keeps its slice of both
  streams and of their position ids, so ComfyUI computes each rank's own RoPE rows. The image sequence is the
  generated image's tokens followed by any reference-image tokens (Kontext, Flux.2 edit): each rank holds a slice of
  both parts, generated first, so every shard starts with generated tokens (FLUX's per-token modulation ranges rely
  on that). Chroma's forward has no ``post_input`` point: there the same slicing runs on its inputs (its embeddings
  act on each token alone, so slicing before them is the same as after).
- Per-token arguments besides the tokens: ControlNet residuals (over the generated tokens), Flux.2's
  ``timestep_zero_index`` ranges (reference tokens at timestep zero), Redux's attention mask (Ulysses only).
- Gather: the generated image's tokens, before ``_forward`` unpatchifies them (an object patch on ``forward_orig``).
- Heads: ``num_heads`` (24 for FLUX.1).
"""
import inspect

from ..parallel.call import active_call
from ..parallel.token_split import clip_to_shard, gather_shards
from . import hooks
from .adapter import Adapter, PostInputSplit, split_post_input

FORWARD_ORIG = "diffusion_model.forward_orig"


def _model_classes():
    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    return comfy.ldm.flux.model.Flux, comfy.ldm.chroma.model.Chroma


def applies_post_input(diffusion_model):
    """Whether the model's forward calls the ``post_input`` patches (FLUX does, Chroma does not)."""
    import comfy.ldm.flux.model
    return type(diffusion_model) is comfy.ldm.flux.model.Flux


def shard_control(control, call):
    """ControlNet residuals are added by absolute position over the generated image's tokens (never the reference
    tokens); each rank keeps the part over its own generated-image tokens, which lead its image shard."""
    rank = call.mesh.sp_rank
    sharded = dict(control)
    for name in ("input", "output"):
        if control.get(name) is not None:
            sharded[name] = [None if t is None else clip_to_shard(t, call.main_sizes, rank) for t in control[name]]
    return sharded


def wrap_forward_orig(original, shard_inputs=False):
    """``shard_inputs``: slice the tokens here, for a model whose forward has no ``post_input`` point."""
    signature = inspect.signature(original)

    @hooks.ours
    def forward_orig(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        call = active_call(bound.arguments.get("transformer_options"))
        if call is None:
            return original(*args, **kwargs)
        options = bound.arguments.get("transformer_options") or {}
        references = sum(options.get("reference_image_num_tokens", []))
        call.plan_tokens(bound.arguments["txt"].shape[1], bound.arguments["img"].shape[1], references)
        rank = call.mesh.sp_rank
        if bound.arguments.get("control") is not None:
            bound.arguments["control"] = shard_control(bound.arguments["control"], call)
        if bound.arguments.get("timestep_zero_index") is not None:   # Flux.2: reference tokens at timestep zero
            bound.arguments["timestep_zero_index"] = call.local_ranges(bound.arguments["timestep_zero_index"], rank)
        if shard_inputs:
            tokens = {name: bound.arguments[name] for name in ("img", "img_ids", "txt", "txt_ids")}
            sharded = split_post_input(dict(tokens, transformer_options=options))
            bound.arguments.update((name, sharded[name]) for name in tokens)
        local = original(*bound.args, **bound.kwargs)
        # _forward keeps only the generated image's tokens: gather just those.
        return gather_shards(local[:, :call.main_sizes[rank]], call.main_sizes, rank, group=call.mesh.sp_group)

    forward_orig.__wrapped__ = original
    return forward_orig


class FluxAdapter(Adapter):
    name = "flux"
    split = PostInputSplit()   # planned earlier, in forward_orig (wrap_forward_orig)
    block_lists = (("double_blocks", "double_block"), ("single_blocks", "single_block"))
    limits = (("an attention mask (Redux with strength_type attn_bias) with ring or USP",
               "the mask is applied after the Ulysses exchange gathers the whole sequence; ring attention never "
               "holds the whole sequence"),)

    def supports(self, diffusion_model):
        # Exact classes: a subclass (Chroma Radiance, say) has its own forward and is not known to be shardable.
        return type(diffusion_model) in _model_classes()

    def num_heads(self, diffusion_model):
        return diffusion_model.num_heads

    def install_on_patcher(self, model_patcher, shard_weights=False):
        super().install_on_patcher(model_patcher, shard_weights)
        shard_inputs = not applies_post_input(model_patcher.get_model_object("diffusion_model"))
        model_patcher.add_object_patch(FORWARD_ORIG, wrap_forward_orig(model_patcher.get_model_object(FORWARD_ORIG),
                                                                       shard_inputs=shard_inputs))

    def install_on_model(self, diffusion_model):
        diffusion_model.forward_orig = wrap_forward_orig(diffusion_model.forward_orig,
                                                         shard_inputs=not applies_post_input(diffusion_model))

    def family_reason(self, arguments, diffusion_model, ring_degree):
        if arguments.get("attention_mask") is not None and ring_degree > 1:
            return ("the conditioning carries an attention mask (e.g. Redux with strength_type attn_bias), which "
                    "runs sequence-parallel with parallelism 'ulysses' only; set parallelism to 'ulysses'")
        return None

    def token_counts(self, arguments, diffusion_model):
        """FLUX's ``_forward`` pads every latent to whole patches; reference latents (Kontext, Flux.2 edit) are
        FLUX's only (Chroma ignores them)."""
        patch = diffusion_model.patch_size

        def tokens(latent):
            return -(-latent.shape[-2] // patch) * -(-latent.shape[-1] // patch)

        references = arguments.get("ref_latents") if applies_post_input(diffusion_model) else None
        return arguments["context"].shape[1], tokens(arguments["x"]), sum(tokens(r) for r in references or ())


ADAPTER = FluxAdapter()
