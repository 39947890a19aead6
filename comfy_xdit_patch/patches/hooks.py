"""The hooks every adapter shares: the attention override, the sharded-block replacement, and what tells our hooks
from other nodes' (which helper GPUs cannot reproduce).

Each hook reads the call's state from ``transformer_options`` and does nothing when the call is not parallel, so a
clone that runs a call on one GPU computes exactly as ComfyUI would.
"""
import functools
import inspect
import uuid

import torch

from ..parallel.attention import sequence_parallel_attention, split_key_attention
from ..parallel.call import TRANSFORMER_OPTIONS_KEY, active_call

OUR_MARK = "_comfy_xdit_patch"

# transformer_options entries that hold callables: the helpers install their own copies of our hooks instead.
HOOK_ENTRIES = ("patches", "patches_replace", "wrappers", "callbacks", "optimized_attention_override")


def ours(fn):
    setattr(fn, OUR_MARK, True)
    return fn


def is_ours(fn):
    return getattr(fn, OUR_MARK, False)


@functools.lru_cache(maxsize=32)
def _signature(function):
    return inspect.signature(function)


def named_arguments(method, args, kwargs):
    """One model call's arguments by name, extra keyword arguments included (helpers call the model with
    keywords). ``method`` is bound to the model; its signature is read once per class (cached on the plain
    function, so the cache holds no model)."""
    method = inspect.unwrap(method)   # our own wrappers (functools.wraps) keep the model's signature
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


_ATTENTION_POSITIONALS = ("mask", "attn_precision")


@ours
def parallel_attention(func, q, k, v, heads, *args, **kwargs):
    """The ``optimized_attention_override``: attention over the whole sequence from each rank's tokens. q, k, v come
    as ComfyUI's attention functions take them: (B, H, L, D) with ``skip_reshape``, else (B, L, H * D)."""
    call = active_call(kwargs.get("transformer_options"))
    if call is None:
        return func(q, k, v, heads, *args, **kwargs)
    if len(args) > len(_ATTENTION_POSITIONALS):
        raise RuntimeError("positional attention arguments are not known to the sequence-parallel attention")
    kwargs.update(zip(_ATTENTION_POSITIONALS, args))   # optimized_attention(q, k, v, heads, mask, attn_precision)
    if not kwargs.pop("skip_reshape", False):   # (B, L, H * D), or (B, L, H, D) as SD3 passes v
        batch = q.shape[0]
        q, k, v = (t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    if call.keys_split:
        if kwargs.get("mask") is not None:
            raise RuntimeError("an attention mask over keys split across ranks is not supported")
        out = split_key_attention(q, k, v, call.mesh.sp_group, call.mesh.sp_degree)
        call.collective_issued()
        return out.transpose(1, 2) if kwargs.get("skip_output_reshape") else out.reshape(q.shape[0], q.shape[2], -1)
    layout = call.layout_for(q.shape[2])
    mask = kwargs.pop("mask", None)
    if mask is not None:
        # Ulysses gathers the whole sequence on every rank: the full mask applies, reordered like the tokens.
        if call.mesh.ring_degree > 1:
            raise RuntimeError("an attention mask is sequence-parallel with Ulysses only")
        if mask.shape[-2] == 1 and mask.shape[-1] == q.shape[2]:   # a key mask over this rank's tokens (Qwen-Image)
            kwargs["mask"] = call.gathered_key_mask(mask, call.mesh.ulysses_group)
        else:
            kwargs["mask"] = call.gathered_mask(mask)
    skip_output_reshape = kwargs.pop("skip_output_reshape", False)
    kwargs["skip_reshape"] = True

    def local_attention(q, k, v):
        return func(q, k, v, q.shape[1], skip_output_reshape=True, **kwargs)

    out = sequence_parallel_attention(q, k, v, call.mesh, layout, local_attention)
    call.collective_issued()
    if skip_output_reshape:
        batch, length, _ = out.shape
        out = out.view(batch, length, q.shape[1], -1).transpose(1, 2)
    return out


def sharded_block(key):
    """A ``patches_replace["dit"]`` entry for block ``key`` when weights are sharded: the block's full weights are
    gathered just before it runs (parallel/weight_shards.py). Outside a parallel call the block runs as it is."""
    @ours
    def replacement(args, extra):
        call = active_call(args["transformer_options"])
        if call is None or call.weight_shards is None:
            return extra["original_block"](args)
        call.weight_shards.enter(key)
        try:
            return extra["original_block"](args)
        finally:
            call.weight_shards.exit(key)
    return replacement


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
    if isinstance(value, (list, tuple, set, frozenset)):   # sets: LTX's STG names its perturbed blocks in one
        return all(_is_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_data(v) for k, v in value.items())
    return False


def data_options(transformer_options):
    """The data part of rank 0's transformer_options, which helpers combine with their own copies of our hooks.
    Objects (another node's state, such as EasyCache's) stay on rank 0: only their own hooks read them, and those
    are either outside the parallel call or make it run on one GPU."""
    return {k: v for k, v in transformer_options.items()
            if k not in HOOK_ENTRIES and k != TRANSFORMER_OPTIONS_KEY and _is_data(v)}
