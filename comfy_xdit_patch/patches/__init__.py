"""Per-model adapters: what each model family needs to run sequence-parallel through ComfyUI's own hooks.

One module per family. ``adapter_for(diffusion_model)`` returns the family's adapter, or None for a model that no
adapter supports (it then passes through on one GPU); the helpers find the same adapter by the name the model spec
carries. Nothing outside this package names a model family. An adapter module provides:

    NAME                                      the name the model spec carries to the helpers
    supports(diffusion_model)                 whether it shards this model (exact classes)
    num_heads(diffusion_model)                attention heads: the bound on Ulysses
    install_on_patcher(patcher, sharded)      rank 0: its hooks on a ModelPatcher clone
    install_on_model(diffusion_model)         a helper: the same hooks on its bare model
    named_arguments(method, args, kwargs)     the diffusion model call's arguments by name
    unsupported_reason(arguments, options, diffusion_model, sp_degree, ring_degree, token_weights)
                                              why this call must run on one GPU, or None
    helper_transformer_options(options)       what of transformer_options travels to the helpers
    hooked_transformer_options(data, call, replacements)
                                              a helper's transformer_options for its shard
    block_replacements(diffusion_model)       with sharded weights: the blocks' replacements
    foreign_object_patches(patcher)           other nodes' object patches on the model, which helpers cannot repeat
"""
from . import flux

ADAPTERS = {flux.NAME: flux}
SUPPORTED = "a FLUX or Chroma model"   # what the adapters cover, for the message a model outside them gets

# Marks our own hooks, so that other nodes' patches can be told apart from them.
ours = flux.ours


def adapter_for(diffusion_model):
    return next((adapter for adapter in ADAPTERS.values() if adapter.supports(diffusion_model)), None)


def adapter_named(name):
    return ADAPTERS[name]
