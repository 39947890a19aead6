"""FLUX adapter (comfy/ldm/flux, and Chroma in comfy/ldm/chroma, which runs FLUX's blocks): token sharding,
parallel attention and the output gather, as ComfyUI hooks.

- ``shard_tokens`` is a ``post_input`` patch: after the text and image embeddings, each rank keeps its slice of both
  streams and of their position ids, so ComfyUI computes each rank's own RoPE rows. Chroma's forward has no
  ``post_input`` point; there the same slicing runs on its inputs (its embeddings act on each token alone, so
  slicing before them is the same as after).
- ``parallel_attention`` is the ``optimized_attention_override``: it receives q, k, v of the local tokens after RoPE.
- ``wrap_forward_orig`` is an object patch on ``forward_orig``: it fixes the split before the blocks run, slices the
  ControlNet residuals like the image tokens, and gathers the image tokens before ``_forward`` unpatchifies them.

Nothing of FLUX's forward is copied; every hook reads the call's state from ``transformer_options`` and does nothing
when a call is not sequence-parallel.
"""
import functools
import inspect
import uuid
from types import SimpleNamespace

import torch

from ..parallel.attention import sequence_parallel_attention
from ..parallel.call import TRANSFORMER_OPTIONS_KEY, SequenceParallelCall, active_call
from ..parallel.token_split import clip_to_shard, gather_shards, take_shard

NAME = "flux"
FORWARD_ORIG = "diffusion_model.forward_orig"
OUR_MARK = "_comfy_xdit_patch"

# transformer_options entries that hold data only (tensors, numbers, strings): the helpers receive copies.
_HOOK_ENTRIES = ("patches", "patches_replace", "wrappers", "callbacks", "optimized_attention_override")


def ours(fn):
    setattr(fn, OUR_MARK, True)
    return fn


def is_ours(fn):
    return getattr(fn, OUR_MARK, False)


def _model_classes():
    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    return comfy.ldm.flux.model.Flux, comfy.ldm.chroma.model.Chroma


def supports(diffusion_model):
    # Exact classes: a subclass (Chroma Radiance, say) has its own forward and is not known to be shardable.
    return type(diffusion_model) in _model_classes()


def applies_post_input(diffusion_model):
    """Whether the model's forward calls the ``post_input`` patches (FLUX does, Chroma does not)."""
    import comfy.ldm.flux.model
    return type(diffusion_model) is comfy.ldm.flux.model.Flux


@functools.lru_cache(maxsize=8)
def _signature(function):
    return inspect.signature(function)


def named_arguments(method, args, kwargs):
    """One model call's arguments by name, extra keyword arguments included: FLUX and Chroma take them in
    different orders, and the helpers call the model with keywords. ``method`` is bound to the model; its
    signature is read once per class (cached on the plain function, so the cache holds no model)."""
    function = getattr(method, "__func__", None)
    if function is None:
        bound = _signature(method).bind(*args, **kwargs)
    else:
        bound = _signature(function).bind(method.__self__, *args, **kwargs)
        bound.arguments.pop(next(iter(bound.signature.parameters)))   # self
    arguments = {}
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[name] = value
    return arguments


def num_heads(diffusion_model):
    return diffusion_model.num_heads


@ours
def shard_tokens(args):
    call = active_call(args["transformer_options"])
    if call is None:
        return args
    rank = call.mesh.sp_rank
    if args["txt"].shape[1] != sum(call.txt_sizes) or args["img"].shape[1] != sum(call.img_sizes):
        raise RuntimeError("a post_input patch before Enable Multi-GPU changed the token counts")
    out = dict(args)
    out["txt"] = take_shard(args["txt"], call.txt_sizes, rank)
    out["txt_ids"] = take_shard(args["txt_ids"], call.txt_sizes, rank)
    slices = call.image_slices(rank)
    for key in ("img", "img_ids"):
        parts = [args[key].narrow(1, start, length) for start, length in slices if length]
        out[key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return out


@ours
def parallel_attention(func, q, k, v, heads, *args, **kwargs):
    call = active_call(kwargs.get("transformer_options"))
    if call is None:
        return func(q, k, v, heads, *args, **kwargs)
    if args:
        raise RuntimeError("positional attention arguments are not known to the sequence-parallel attention")
    mask = kwargs.pop("mask", None)
    if mask is not None:
        # Ulysses gathers the whole sequence on every rank: the full mask applies, reordered like the tokens.
        if call.mesh.ring_degree > 1:
            raise RuntimeError("an attention mask is sequence-parallel with Ulysses only")
        kwargs["mask"] = call.gathered_mask(mask)
    skip_output_reshape = kwargs.pop("skip_output_reshape", False)
    kwargs["skip_reshape"] = True

    def local_attention(q, k, v):
        return func(q, k, v, q.shape[1], skip_output_reshape=True, **kwargs)

    out = sequence_parallel_attention(q, k, v, call.mesh, call.attention_layout, local_attention)
    call.collective_issued()
    if skip_output_reshape:
        batch, length, _ = out.shape
        out = out.view(batch, length, q.shape[1], -1).transpose(1, 2)
    return out


@ours
def sharded_block(args, extra):
    """A ``patches_replace["dit"]`` entry for every block when weights are sharded: the block's full weights are
    gathered just before it runs (parallel/weight_shards.py). Outside a parallel call the block runs as it is."""
    options = args["transformer_options"]
    call = active_call(options)
    if call is None or call.weight_shards is None:
        return extra["original_block"](args)
    key = (options["block_type"] + "_block", options["block_index"])
    call.weight_shards.enter(key)
    try:
        return extra["original_block"](args)
    finally:
        call.weight_shards.exit(key)


def block_replacements(diffusion_model):
    from ..parallel.weight_shards import blocks
    return {key: sharded_block for key, _ in blocks(diffusion_model)}


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

    @ours
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
            sharded = shard_tokens(dict(tokens, transformer_options=options))
            bound.arguments.update((name, sharded[name]) for name in tokens)
        local = original(*bound.args, **bound.kwargs)
        # _forward keeps only the generated image's tokens: gather just those.
        return gather_shards(local[:, :call.main_sizes[rank]], call.main_sizes, rank, group=call.mesh.sp_group)

    forward_orig.__wrapped__ = original
    return forward_orig


def unsupported_reason(arguments, transformer_options, diffusion_model, sp_degree, ring_degree=1,
                       token_weights=None):
    """Why this model call cannot run sequence-parallel (it then runs on one GPU), or None. ``sp_degree``: ranks per
    sequence-parallel group; ``token_weights``: per group that computes rows of this call, its ranks' token weights
    (None: the even split)."""
    if arguments.get("attention_mask") is not None and ring_degree > 1:
        return ("the conditioning carries an attention mask (e.g. Redux with strength_type attn_bias), which runs "
                "sequence-parallel with parallelism 'ulysses' only; set parallelism to 'ulysses'")
    foreign = foreign_hooks(transformer_options)
    if foreign:
        return "the model carries patches the helper GPUs cannot reproduce: " + ", ".join(foreign)
    return empty_shard_reason(arguments, diffusion_model, sp_degree, token_weights)


def image_tokens(arguments, diffusion_model):
    """(generated, reference) image tokens of one call, as FLUX's ``_forward`` builds them: every latent padded to
    whole patches; reference latents (Kontext, Flux.2 edit) are FLUX's only (Chroma ignores them)."""
    patch = diffusion_model.patch_size

    def tokens(latent):
        return -(-latent.shape[-2] // patch) * -(-latent.shape[-1] // patch)

    references = arguments.get("ref_latents") if applies_post_input(diffusion_model) else None
    return tokens(arguments["x"]), sum(tokens(r) for r in references or ())


def empty_shard_reason(arguments, diffusion_model, sp_degree, token_weights=None):
    """Why a rank would get no text or no image tokens of this call, or None. An empty shard of either stream fails
    on every helper (``shard_tokens``, and the -1 reshape of q, k, v in FLUX's double blocks); one token of each is
    enough for ring, Ulysses and USP, and meets the copy-engine exchange's two tokens per member
    (parallel/copy_engine.py)."""
    text = arguments["context"].shape[1]
    main, reference = image_tokens(arguments, diffusion_model)
    image = main + reference
    for weights in token_weights or [None]:
        call = SequenceParallelCall(SimpleNamespace(sp_degree=sp_degree), weights)
        call.plan_tokens(text, image, reference)   # the split the parallel call makes (shard_tokens)
        if min(call.img_sizes) < 1:
            counted = f"{image} token{'s' if image != 1 else ''}"
            if reference:
                counted += f" ({main} generated, {reference} of reference images)"
            if image < sp_degree:
                return (f"the image has {counted}, fewer than the {sp_degree} sequence-parallel ranks: every rank "
                        "needs at least one; use fewer GPUs or a larger image")
            if weights is None:   # each part is split on its own: both fall short of a token per rank
                return (f"the image has {counted}; the generated and the reference tokens are split over the "
                        f"{sp_degree} sequence-parallel ranks each on its own, and both are fewer than the ranks, so "
                        "a rank would get none: use fewer GPUs or a larger image")
            return (f"the image has {counted}; split by the GPUs' measured speeds, a rank would get none: use fewer "
                    "GPUs, scheduling round_robin or least_loaded, or a larger image")
        if min(call.txt_sizes) < 1:
            counted = f"{text} text token{'s' if text != 1 else ''}"
            if text < sp_degree:
                return (f"the prompt has {counted}, fewer than the {sp_degree} sequence-parallel ranks: every rank "
                        "needs at least one; use fewer GPUs")
            return (f"the prompt has {counted}; split by the GPUs' measured speeds, a rank would get none: use fewer "
                    "GPUs, or scheduling round_robin or least_loaded")
    return None


def foreign_hooks(transformer_options):
    """Names of callables in ``transformer_options`` that act inside the diffusion model and are not ours."""
    found = []
    for name, patch_list in transformer_options.get("patches", {}).items():
        found += [f"patches.{name}" for p in patch_list if not is_ours(p)]
    for name, replaces in transformer_options.get("patches_replace", {}).items():
        found += [f"patches_replace.{name}.{key}" for key, patch in replaces.items() if not is_ours(patch)]
    override = transformer_options.get("optimized_attention_override")
    if override is not None and not is_ours(override):
        found.append("optimized_attention_override")
    # DIFFUSION_MODEL wrappers registered before ours run outside the parallel call, on rank 0 (EasyCache reusing
    # whole steps, for one); only those registered after ours would run inside it, where helpers cannot follow.
    import comfy.patcher_extension as ext
    inside = False
    for key, wrappers in transformer_options.get("wrappers", {}).get(ext.WrappersMP.DIFFUSION_MODEL, {}).items():
        if any(is_ours(w) for w in wrappers):
            inside = True
        elif inside:
            found += [f"wrappers.diffusion_model.{key}" for w in wrappers]
    return found


def foreign_object_patches(model_patcher):
    """Object patches of other nodes on the diffusion model: helpers hold a bare model and cannot reproduce them."""
    return sorted(name for name, obj in model_patcher.object_patches.items()
                  if name.split(".")[0] == "diffusion_model" and not is_ours(obj))


def _is_data(value):
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, uuid.UUID)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_data(v) for k, v in value.items())
    return False


def helper_transformer_options(transformer_options):
    """The data part of rank 0's transformer_options, which helpers combine with their own copies of our hooks.
    Objects (another node's state, such as EasyCache's) stay on rank 0: only their own hooks read them, and those
    are either outside the parallel call or make it run on one GPU."""
    return {k: v for k, v in transformer_options.items()
            if k not in _HOOK_ENTRIES and k != TRANSFORMER_OPTIONS_KEY and _is_data(v)}


def hooked_transformer_options(data_options, call, replacements=None):
    """transformer_options for a helper's forward: rank 0's data plus our hooks and the call state.
    ``replacements``: our block replacements (``block_replacements``) when the weights are sharded."""
    options = dict(data_options)
    options["patches"] = {"post_input": [shard_tokens]}
    options["optimized_attention_override"] = parallel_attention
    if replacements:
        options["patches_replace"] = {"dit": replacements}
    options[TRANSFORMER_OPTIONS_KEY] = call
    return options


def install_on_model(diffusion_model):
    """Helpers own a bare diffusion model: patch its forward_orig directly."""
    diffusion_model.forward_orig = wrap_forward_orig(diffusion_model.forward_orig,
                                                     shard_inputs=not applies_post_input(diffusion_model))


def install_on_patcher(model_patcher, shard_weights=False):
    """Rank 0: register the hooks on a ModelPatcher clone through ComfyUI's patch APIs."""
    model_patcher.set_model_post_input_patch(shard_tokens)
    if shard_weights:
        # Another node's block replacement stays: its calls run on one GPU (foreign_hooks), where it must still act.
        existing = model_patcher.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        for key, patch in block_replacements(model_patcher.get_model_object("diffusion_model")).items():
            if key not in existing:
                model_patcher.set_model_patch_replace(patch, "dit", *key)
    options = model_patcher.model_options["transformer_options"]
    # A foreign attention override stays in place: unsupported_reason() then runs those calls on one GPU.
    if options.get("optimized_attention_override") is None:
        options["optimized_attention_override"] = parallel_attention
    shard_inputs = not applies_post_input(model_patcher.get_model_object("diffusion_model"))
    model_patcher.add_object_patch(FORWARD_ORIG, wrap_forward_orig(model_patcher.get_model_object(FORWARD_ORIG),
                                                                   shard_inputs=shard_inputs))

