"""What a model family declares to run in parallel, and the behaviour every family shares.

A family's adapter is an ``Adapter`` whose class attributes say:
- ``name``: carried by the model spec, so the helpers install the same family's hooks;
- ``split``: where the tokens are split and the output gathers, one of
  ``TokenSplit`` (a model method whose arguments are tokens and whose return value is the image: SD3),
  ``BlockSplit`` (the first block's input and the last block's output, through block replacement: Wan, with a text
  stream HunyuanVideo, over dimension 0 MiniMax H3, with the method overrides below LTX-2),
  ``PostInputSplit`` (ComfyUI's ``post_input`` point, FLUX's shape: FLUX, Qwen-Image, Krea 2);
  a family with none of these splits in a patch of its own (Z-Image, where ``patchify_and_embed`` returns its tokens);
- ``module_wrappers``: hooks on named submodules (regular expressions), for per-token block arguments, attention
  that stays local and the gather after the last block;
- ``block_lists``: the transformer blocks, in the order the forward runs them (what ``shard_weights`` shards), and
  ``replaces_blocks``: whether the forward offers ComfyUI's block replacement for them;
- ``limits``: what it cannot run in parallel and why (those calls run on one GPU, with the reason in the log);
- ``streams_input``: the model's input is a list of streams (video and audio) of one call: one sequence-parallel
  group of every GPU, no CFG groups, no step graphs;
- ``vae_tile_decoders`` / ``vae_unspreadable``: for the family's VAEs, the method decoding one tile of a VAE that
  tiles by itself, or why its tiles cannot be decoded on other GPUs (runtime/vae_decode.py).
and its methods say which classes it serves (``supports``), how many attention heads bound Ulysses
(``num_heads``), how many tokens a call has (``token_counts``), and, where the defaults do not fit, how a
``BlockSplit`` cuts the first block's input and per-token arguments and gathers the last block's output
(``split_block_input``, ``per_token_slice``, ``gather_block_output``) and what of a call travels to every rank
(``call_arguments``). The hooks themselves (patches/hooks.py) are shared; ComfyUI's forward is never copied.
"""
import functools
import inspect
import re
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..parallel.call import TRANSFORMER_OPTIONS_KEY, SequenceParallelCall, active_call
from ..parallel.token_split import clip_to_shard, gather_shards, take_shard
from . import hooks

# Where rank 0 hands each model call to the helpers: ComfyUI's DIFFUSION_MODEL wrapper where the model's forward
# runs those wrappers, else an object patch on its forward.
WRAPPER_ENTRY, FORWARD_ENTRY = "diffusion_model wrapper", "forward"


@dataclass(frozen=True)
class TokenSplit:
    """``method`` of the diffusion model takes the embedded tokens (B, L, C) and returns the image tokens: its
    ``image`` and ``text`` arguments are split along L, each rank keeping its slice; ``residuals`` are per-block
    additions over the image tokens (ControlNet's {"output": [...]} lists), sliced like them; the return value is
    gathered. Image and text are split on their own, so every rank holds some of both."""
    method: str
    image: tuple = ()
    text: tuple = ()
    residuals: tuple = ()


@dataclass(frozen=True)
class BlockSplit:
    """For a model whose forward has no split point of its own: the tokens are split at the first transformer
    block's input and gathered at the last block's output, through ComfyUI's block replacement
    (``patches_replace["dit"]``). ``tokens``: the block argument holding the token sequence (B, L, C);
    ``per_token``: block arguments sliced like the tokens (their dim 1 runs over the tokens; see
    ``Adapter.per_token_slice``); ``local_attention``: submodules (regular expressions over module names) whose
    attention stays on each rank, such as cross-attention from the local tokens to the whole text; ``text``: the
    first block's argument holding a text stream that joins the tokens in attention, split with them (each rank
    holds a slice of both, as in ``PostInputSplit``); the last block's output is gathered by
    ``Adapter.gather_block_output``; ``token_dim``: the tokens' dimension (0 for a packed sequence without batch)."""
    tokens: str
    per_token: tuple = ()
    local_attention: tuple = ()
    text: str = None
    token_dim: int = 1


@dataclass(frozen=True)
class PostInputSplit:
    """For a model whose forward calls ComfyUI's ``post_input`` patches with its embedded streams (FLUX's shape:
    ``img``, ``txt``, ``img_ids``, ``txt_ids``): each rank keeps its slice of the text and of the image sequence,
    the generated image's tokens and any reference-image tokens (``transformer_options
    ["reference_image_num_tokens"]``) each split on their own. Where the output gathers is the family's: a
    ``module_wrappers`` entry on the last block (``gather_main_tokens``), or FLUX's ``forward_orig`` patch."""


class Adapter:
    name = None
    split = None
    module_wrappers = ()  # (regular expression over module names, factory(adapter, forward, name, names)): hooks
    block_lists = ()      # ((attribute, patches_replace "dit" kind), ...): ComfyUI's block replacement keys
    replaces_blocks = True   # False: the forward offers no block replacement; the module wrappers gather weights
    limits = ()           # (what, why): documented here, enforced by unsupported_reason
    sequence_parallel = True
    streams_input = False   # True: x is a list of streams (video, audio), run over one sequence-parallel group
    vae_tile_decoders = {}  # {VAE model class ("module.Class"): its method decoding one tile}, for VAEs that tile
    vae_unspreadable = {}   # by themselves; {VAE model class: why its tiles cannot be decoded on other GPUs}

    named_arguments = staticmethod(hooks.named_arguments)
    helper_transformer_options = staticmethod(hooks.data_options)
    foreign_object_patches = staticmethod(hooks.foreign_object_patches)

    def supports(self, diffusion_model):
        raise NotImplementedError

    def num_heads(self, diffusion_model):
        raise NotImplementedError

    def entry(self, diffusion_model):
        return uses_diffusion_model_wrappers(type(diffusion_model))

    # ----- blocks (shard_weights) -------------------------------------------------------------------------------
    def blocks(self, diffusion_model):
        """((attribute, index), module) of every transformer block, in run order."""
        for attribute, _ in self.block_lists:
            for index, module in enumerate(getattr(diffusion_model, attribute)):
                yield (attribute, index), module

    def is_block_weight(self, state_key):
        return state_key.startswith(tuple(f"{attribute}." for attribute, _ in self.block_lists))

    def block_replacements(self, diffusion_model, shard_weights=True):
        """patches_replace["dit"] entries: with a ``BlockSplit``, the split, gather and weight gathering around every
        block; otherwise, with sharded weights, the weight gathering alone."""
        kinds = dict(self.block_lists)
        keys = [key for key, _ in self.blocks(diffusion_model)]
        if not self.replaces_blocks:
            return {}
        if isinstance(self.split, BlockSplit):
            return {(kinds[attribute], index): split_block(self, (attribute, index), position, len(keys))
                    for position, (attribute, index) in enumerate(keys)}
        if not shard_weights:
            return {}
        return {(kinds[attribute], index): hooks.sharded_block((attribute, index)) for attribute, index in keys}

    def call_arguments(self, arguments):
        """One model call's arguments (by the wrapped method's names) as every rank runs them."""
        return arguments

    def per_token_slice(self, name, value, call, rank):
        """``value`` of the per-token block argument ``name`` cut to ``rank``'s tokens (dim 1 over the tokens)."""
        return take_shard(value, call.main_sizes, rank)

    def split_block_input(self, args, call, rank):
        """A ``BlockSplit``'s first block arguments (a dict, changed in place): the split planned, the tokens (and the
        text) cut to ``rank``'s."""
        split = self.split
        text = args[split.text].shape[1] if split.text else 0
        call.plan_tokens(text, args[split.tokens].shape[split.token_dim])
        args[split.tokens] = take_shard(args[split.tokens], call.main_sizes, rank, dim=split.token_dim)
        if split.text:
            args[split.text] = take_shard(args[split.text], call.txt_sizes, rank)

    def gather_block_output(self, out, call):
        """A ``BlockSplit``'s last block output (a dict) as the forward expects it after the blocks: by default its
        tokens gathered from every rank."""
        tokens = self.split.tokens
        out[tokens] = gather_shards(out[tokens], call.main_sizes, call.mesh.sp_rank, group=call.mesh.sp_group,
                                    dim=self.split.token_dim)
        return out

    def wrapped_modules(self, diffusion_model):
        """(name, factory(forward) -> wrapped forward) of every submodule the adapter hooks: its ``module_wrappers``
        and the modules whose attention stays local (``BlockSplit.local_attention``)."""
        wrappers = list(self.module_wrappers) + [(pattern, lambda adapter, forward, name, modules: local_attention(
            forward)) for pattern in getattr(self.split, "local_attention", ())]
        names = [name for name, _ in diffusion_model.named_modules()]
        found = []
        for pattern, factory in wrappers:
            matching = [name for name in names if re.fullmatch(pattern, name)]
            for name in matching:
                found.append((name, lambda forward, factory=factory, name=name, matching=matching:
                              factory(self, forward, name, matching)))
        return found

    # ----- installing -------------------------------------------------------------------------------------------
    def install_on_patcher(self, model_patcher, shard_weights=False):
        """Rank 0: the family's hooks on a ModelPatcher clone, through ComfyUI's patch APIs."""
        diffusion_model = model_patcher.get_model_object("diffusion_model")
        # Another node's block replacement stays: its calls run on one GPU (foreign_hooks), where it must act.
        existing = model_patcher.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        for key, patch in self.block_replacements(diffusion_model, shard_weights).items():
            if key not in existing:
                model_patcher.set_model_patch_replace(patch, "dit", *key)
        for name, wrap in self.wrapped_modules(diffusion_model):
            attribute = f"diffusion_model.{name}.forward"
            model_patcher.add_object_patch(attribute, wrap(model_patcher.get_model_object(attribute)))
        if isinstance(self.split, PostInputSplit):
            model_patcher.set_model_post_input_patch(split_post_input)
        options = model_patcher.model_options["transformer_options"]
        # A foreign attention override stays in place: unsupported_reason() then runs those calls on one GPU.
        if options.get("optimized_attention_override") is None:
            options["optimized_attention_override"] = hooks.parallel_attention
        if isinstance(self.split, TokenSplit):
            name = "diffusion_model." + self.split.method
            model_patcher.add_object_patch(name, split_tokens(self.split, model_patcher.get_model_object(name)))

    def install_on_model(self, diffusion_model):
        """A helper: the same hooks on its bare model (transformer_options come with every call)."""
        for name, wrap in self.wrapped_modules(diffusion_model):
            module = diffusion_model.get_submodule(name)
            module.forward = wrap(module.forward)
        if isinstance(self.split, TokenSplit):
            setattr(diffusion_model, self.split.method,
                    split_tokens(self.split, getattr(diffusion_model, self.split.method)))

    def hooked_transformer_options(self, data_options, call, replacements=None):
        """A helper's transformer_options for its shard: rank 0's data plus our hooks and the call state.
        ``replacements``: our block replacements when the weights are sharded."""
        options = dict(data_options)
        options["optimized_attention_override"] = hooks.parallel_attention
        if replacements:
            options["patches_replace"] = {"dit": replacements}
        if isinstance(self.split, PostInputSplit):
            options["patches"] = {"post_input": [split_post_input]}
        options[TRANSFORMER_OPTIONS_KEY] = call
        return options

    # ----- what cannot run in parallel --------------------------------------------------------------------------
    def unsupported_reason(self, arguments, transformer_options, diffusion_model, sp_degree, ring_degree=1,
                           token_weights=None):
        """Why this model call cannot run in parallel (it then runs on one GPU), or None. ``sp_degree``: ranks per
        sequence-parallel group; ``token_weights``: per group that computes rows of this call, its ranks' token
        weights (None: the even split)."""
        foreign = hooks.foreign_hooks(transformer_options)
        if foreign:
            return "the model carries patches the helper GPUs cannot reproduce: " + ", ".join(foreign)
        return self.family_reason(arguments, diffusion_model, ring_degree) or \
            self.empty_shard_reason(arguments, diffusion_model, sp_degree, token_weights)

    def family_reason(self, arguments, diffusion_model, ring_degree):
        """The family's own limits for this call, or None."""
        return None

    def token_counts(self, arguments, diffusion_model):
        """(text tokens, generated image tokens, reference image tokens) of one call."""
        raise NotImplementedError

    def empty_shard_reason(self, arguments, diffusion_model, sp_degree, token_weights=None):
        """Why a rank would get no text or no image tokens of this call, or None. An empty shard of either stream
        fails on every rank; one token of each is enough for ring, Ulysses and USP, and meets the copy-engine
        exchange's two tokens per member (parallel/copy_engine.py)."""
        text, main, reference = self.token_counts(arguments, diffusion_model)
        image = main + reference
        if text is None:   # no text stream in the split (it is attended to whole, on every rank)
            fewest = 2     # the copy-engine exchange's two tokens per member, from the image alone
            if image < fewest * sp_degree:
                return (f"the video has {image} tokens, fewer than {fewest} for each of the {sp_degree} "
                        "sequence-parallel ranks; use fewer GPUs or a larger video")
            for weights in token_weights or []:
                call = SequenceParallelCall(SimpleNamespace(sp_degree=sp_degree), weights)
                call.plan_tokens(0, image)
                if min(call.img_sizes) < fewest:
                    return (f"the video has {image} tokens; split by the GPUs' measured speeds, a rank would get "
                            f"fewer than {fewest}: use fewer GPUs, or scheduling round_robin or least_loaded")
            return None
        for weights in token_weights or [None]:
            call = SequenceParallelCall(SimpleNamespace(sp_degree=sp_degree), weights)
            call.plan_tokens(text, image, reference)   # the split the parallel call makes
            if min(call.img_sizes) < 1:
                counted = f"{image} token{'s' if image != 1 else ''}"
                if reference:
                    counted += f" ({main} generated, {reference} of reference images)"
                if image < sp_degree:
                    return (f"the image has {counted}, fewer than the {sp_degree} sequence-parallel ranks: every "
                            "rank needs at least one; use fewer GPUs or a larger image")
                if weights is None:   # each part is split on its own: both fall short of a token per rank
                    return (f"the image has {counted}; the generated and the reference tokens are split over the "
                            f"{sp_degree} sequence-parallel ranks each on its own, and both are fewer than the "
                            "ranks, so a rank would get none: use fewer GPUs or a larger image")
                return (f"the image has {counted}; split by the GPUs' measured speeds, a rank would get none: use "
                        "fewer GPUs, scheduling round_robin or least_loaded, or a larger image")
            if min(call.txt_sizes) < 1:
                counted = f"{text} text token{'s' if text != 1 else ''}"
                if text < sp_degree:
                    return (f"the prompt has {counted}, fewer than the {sp_degree} sequence-parallel ranks: every "
                            "rank needs at least one; use fewer GPUs")
                return (f"the prompt has {counted}; split by the GPUs' measured speeds, a rank would get none: use "
                        "fewer GPUs, or scheduling round_robin or least_loaded")
        return None


def split_tokens(split, original):
    """``original`` (the bound method ``split.method``) as a parallel call runs it: its token arguments sliced to
    this rank's share, its image tokens gathered from every rank afterwards. Outside a parallel call: as it is."""
    signature = inspect.signature(original)

    @hooks.ours
    def split_call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        call = active_call(bound.arguments.get("transformer_options"))
        if call is None:
            return original(*args, **kwargs)
        arguments = bound.arguments
        text = sum(arguments[name].shape[1] for name in split.text[:1])
        image = arguments[split.image[0]].shape[1]
        call.plan_tokens(text, image)
        rank = call.mesh.sp_rank
        for name in split.text:
            arguments[name] = take_shard(arguments[name], call.txt_sizes, rank)
        for name in split.image:
            arguments[name] = take_shard(arguments[name], call.main_sizes, rank)
        for name in split.residuals:
            if arguments.get(name) is not None:
                arguments[name] = {key: [None if t is None else clip_to_shard(t, call.main_sizes, rank) for t in value]
                                   if isinstance(value, list) else value for key, value in arguments[name].items()}
        local = original(*bound.args, **bound.kwargs)
        return gather_shards(local, call.main_sizes, rank, group=call.mesh.sp_group)

    split_call.__wrapped__ = original
    return split_call


def split_block(adapter, key, position, total):
    """The block replacement of a ``BlockSplit``: the first block slices the tokens (and the text), every block
    slices its per-token arguments (and gathers its sharded weights), the last block gathers the tokens from every
    rank."""
    split = adapter.split

    @hooks.ours
    def replacement(args, extra):
        call = active_call(args["transformer_options"])
        if call is None:
            return extra["original_block"](args)
        rank = call.mesh.sp_rank
        args = dict(args)
        if position == 0:
            adapter.split_block_input(args, call, rank)
        for name in split.per_token:
            if args.get(name) is not None:
                args[name] = adapter.per_token_slice(name, args[name], call, rank)
        if call.weight_shards is not None:
            call.weight_shards.enter(key)
        try:
            out = extra["original_block"](args)
        finally:
            if call.weight_shards is not None:
                call.weight_shards.exit(key)
        if position == total - 1:
            out = adapter.gather_block_output(dict(out), call)
        return out

    return replacement


@hooks.ours
def split_post_input(args):
    """The ``post_input`` patch of a ``PostInputSplit``: each rank's slice of the text and image streams and of
    their position ids. The split is planned here unless the family planned it before the forward began."""
    call = active_call(args["transformer_options"])
    if call is None:
        return args
    references = sum(args["transformer_options"].get("reference_image_num_tokens", []))
    if call.txt_sizes is None:
        call.plan_tokens(args["txt"].shape[1], args["img"].shape[1], references)
    if args["txt"].shape[1] != sum(call.txt_sizes) or args["img"].shape[1] != sum(call.img_sizes):
        raise RuntimeError("a post_input patch before Enable Multi-GPU changed the token counts")
    rank = call.mesh.sp_rank
    out = dict(args)
    out["txt"] = take_shard(args["txt"], call.txt_sizes, rank)
    out["txt_ids"] = take_shard(args["txt_ids"], call.txt_sizes, rank)
    slices = call.image_slices(rank)
    for key in ("img", "img_ids"):
        parts = [args[key].narrow(1, start, length) for start, length in slices if length]
        out[key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return out


def gather_main_tokens(local, call, start=0, lead=0):
    """The generated image's tokens of every rank, in order; this rank's start at ``start`` of ``local``. ``lead``
    placeholder tokens come first, for a forward that cuts the image out after the whole text."""
    rank = call.mesh.sp_rank
    main = local.narrow(1, start, call.main_sizes[rank])
    gathered = gather_shards(main, call.main_sizes, rank, group=call.mesh.sp_group)
    if not lead:
        return gathered
    return torch.cat((gathered.new_zeros((gathered.shape[0], lead) + tuple(gathered.shape[2:])), gathered), dim=1)


def block_key(name):
    """A block's key for the sharded weights, (attribute, index), from its module name ("blocks.3")."""
    attribute, _, index = name.rpartition(".")
    return attribute, int(index)


def block_hook(rewrite=None, gather=None, sharded_weights=False):
    """A ``module_wrappers`` factory for a model's transformer blocks, called with keyword arguments:
    ``rewrite(call, kwargs)`` turns per-token keyword arguments into this rank's; ``sharded_weights`` gathers the
    block's weights around it (a forward without block replacement); ``gather(out, call)`` makes the last block's
    output what the forward expects after the blocks."""
    def factory(adapter, forward, name, names):
        last, key = name == names[-1], block_key(name)

        @hooks.ours
        @functools.wraps(forward)
        def block_forward(*args, **kwargs):
            call = active_call(kwargs.get("transformer_options"))
            if call is None:
                return forward(*args, **kwargs)
            if rewrite is not None:
                rewrite(call, kwargs)
            if sharded_weights and call.weight_shards is not None:
                call.weight_shards.enter(key)
                try:
                    out = forward(*args, **kwargs)
                finally:
                    call.weight_shards.exit(key)
            else:
                out = forward(*args, **kwargs)
            return gather(out, call) if last and gather is not None else out

        return block_forward

    return factory


def local_attention(forward):
    """``forward`` of a module whose attention stays on each rank: it runs without the call's state, so the
    attention override computes it as on one GPU (cross-attention from this rank's tokens to the whole text)."""
    @hooks.ours
    def local_forward(*args, **kwargs):
        options = kwargs.get("transformer_options")
        if options and TRANSFORMER_OPTIONS_KEY in options:
            kwargs["transformer_options"] = {k: v for k, v in options.items() if k != TRANSFORMER_OPTIONS_KEY}
        return forward(*args, **kwargs)

    local_forward.__wrapped__ = forward
    return local_forward


_WRAPPER_USERS = {}


def uses_diffusion_model_wrappers(cls):
    """Whether ``cls``'s forward runs ComfyUI's DIFFUSION_MODEL wrappers (most models since ComfyUI added them;
    some, SD3's MMDiT among them, do not): where rank 0 hands calls to the helpers."""
    if cls not in _WRAPPER_USERS:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _WRAPPER_USERS[cls] = WRAPPER_ENTRY if "WrappersMP.DIFFUSION_MODEL" in source else FORWARD_ENTRY
    return _WRAPPER_USERS[cls]
