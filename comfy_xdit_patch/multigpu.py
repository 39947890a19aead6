"""Enable Multi-GPU on a ModelPatcher: the whole behaviour behind the node.

The returned clone carries, under one key so that all of it can be found and removed together:
- the model family's hooks (its adapter in ``patches/``), e.g. FLUX's post_input sharding, attention override and
  forward_orig object patch; a model without a family adapter gets none and runs CFG/batch-parallel;
- an ON_PRE_RUN callback that starts (or reuses) the helper processes and syncs the weights once per sampling run;
- a DIFFUSION_MODEL wrapper (or, for a model whose forward runs no such wrappers, an object patch on its forward)
  that hands each model call to the helpers and runs rank 0's shard in ComfyUI's thread.

Anything the helpers cannot reproduce sends that call to one GPU with one log line, and a failure during a parallel
call ends the helpers and reruns the call on one GPU: the user always gets the image.
"""
import inspect
import itertools
import logging
import math
import pickle
import types
import weakref

import psutil
import torch

import comfy.model_management
import comfy.patcher_extension as ext

from .config import (MultiGPUOptions, check_exchange_kernels, check_helper_memory, check_peer_access,
                     for_any_model, resolve_plan)
from .parallel.call import TRANSFORMER_OPTIONS_KEY
from .parallel import symmetric
from . import patches
from .patches.adapter import WRAPPER_ENTRY
from .patches.any_model import nothing_to_split
from .runtime import helper_group
from .runtime import launchers
from .runtime import step_graphs
from .runtime.offloaded_blocks import OffloadedBlocks, resident_outside_blocks
from .runtime.resident_weights import ResidentWeights
from . import envs, monitor

log = logging.getLogger(__name__)

KEY = "comfy_xdit_patch"


class MultiGPURun:
    """Behind the wrapper and the callback of one enabled model (shared by its clones)."""

    def __init__(self, plan, adapter=None):
        self.plan = plan
        self.adapter = adapter        # the model family's adapter (patches/)
        self.reasons_logged = set()
        self.blocked = None   # why this sampling run cannot be parallel at all, decided in on_pre_run
        self.graphs_allowed = False
        self.resident_weights = None   # dynamic VRAM: what a graph's capture and replays check (resident_weights.py)
        self.compile_kwargs = None   # TorchCompileModel's settings on rank 0: the helpers compile the same way
        # Classic loading with sharded weights: ComfyUI's copy of the blocks stays off rank 0's GPU.
        self.offloaded = OffloadedBlocks() if plan.shard_weights else None
        self.sampling_patcher = lambda: None   # weak: the ModelPatcher of the current sampling run (on_pre_run)
        self.idle = None   # why the coming sampling run has nothing to place on other GPUs (outer_sample_wrapper)

    def _one_gpu(self, reason):
        if reason not in self.reasons_logged:
            self.reasons_logged.add(reason)
            log.warning("Enable Multi-GPU: running on one GPU because %s.", reason)
            monitor.note_one_gpu(reason)

    def on_cleanup(self, model_patcher):
        """After each sampling run (helpers idle): collect their figures for the monitoring route."""
        group = helper_group.current_group()
        if group is not None and group.plan == self.plan and group.alive():
            try:
                group.end_sampling_run()
            except Exception as e:  # monitoring must never fail a prompt
                log.debug("could not collect helper figures: %s", e)

    def on_pre_run(self, model_patcher):
        self.reasons_logged.clear()
        self.sampling_patcher = weakref.ref(model_patcher)
        monitor.new_run(self.plan)
        foreign = self.adapter.foreign_object_patches(model_patcher)
        self.blocked = ("another node replaced parts of the diffusion model (" + ", ".join(foreign) + ")"
                        if foreign else self.idle)
        self.idle = None
        if self.blocked:
            self._restore_blocks(model_patcher)
            return
        try:
            group = helper_group.ensure_group(self.plan)
            if self.offloaded is not None:
                # Before the pieces are made, so that they find room on a GPU that ComfyUI's load filled.
                self.offloaded.offload(model_patcher)
            group.sync_model(model_patcher)
            self.graphs_allowed, self.resident_weights = _graph_safe(model_patcher, group, self.plan.cuda_graphs)
            # Dynamic VRAM: graphs are captured anew every prompt (a LoRA change rewrites weights in place).
            keep_graphs = self.graphs_allowed and self.resident_weights is None
            group.new_sampling_run(_weight_addresses(model_patcher) if keep_graphs else None)
            self.compile_kwargs = _torch_compile_settings(model_patcher)
        except NotImplementedError as e:
            self.blocked = str(e)       # every call of this run goes to one GPU, with this one reason logged
            self._one_gpu(self.blocked)
            self._restore_blocks(model_patcher)
        except Exception as e:
            log.error("Enable Multi-GPU: could not prepare the helpers (%s); this prompt runs on one GPU.", e)
            # The failure path (abort first): a helper that failed or hung may have left a collective queued that
            # never completes, and freeing the group's peer memory would wait for it. An abort with nothing stuck
            # returns at once.
            helper_group.shutdown_group("start-up failed", graceful=False)
            self._restore_blocks(model_patcher)

    def _restore_blocks(self, model_patcher):
        """A run that goes to one GPU computes with ComfyUI's copy of the blocks: it comes back to the GPU."""
        if self.offloaded is None:
            return
        try:
            self.offloaded.restore(model_patcher)
        except Exception:   # on a failure path already: the run still works, casting the blocks layer by layer
            log.warning("Enable Multi-GPU: could not bring ComfyUI's copy of the blocks back to the GPU; this run "
                        "casts them from host RAM layer by layer", exc_info=True)

    @patches.ours
    def outer_sample_wrapper(self, executor, noise, *args, **kwargs):
        """Before the sampling run starts the helpers: a model without a family adapter whose run has one row per
        call (cfg 1 and batch 1) has nothing to place on another GPU, so no helper is started or sent weights."""
        self.idle = None
        if not self.adapter.sequence_parallel:
            guider = executor.class_obj
            cfg = getattr(guider, "cfg", None)
            cfg_one = cfg is not None and math.isclose(cfg, 1.0) and \
                not guider.model_options.get("disable_cfg1_optimization", False)
            if noise.shape[0] == 1 and cfg_one:
                self.idle = nothing_to_split(guider.model_patcher.get_model_object("diffusion_model"))
        return executor(noise, *args, **kwargs)

    # Under TorchCompileModel this wrapper runs inside the compiled diffusion model. Our host work (the dispatch to
    # the helpers, graph capture and replay, the wait for the step) stays out of dynamo: traced, it was recompiled at
    # every step (its guards held the step's tensors) and a step took twice as long as on one GPU.
    # Only this frame is skipped: the model's own code below it still compiles.
    @patches.ours
    @torch.compiler.disable(recursive=False)
    def diffusion_model_wrapper(self, executor, *args, **kwargs):
        def one_gpu():
            return executor(*args, **kwargs)

        if self.blocked:
            self._one_gpu(self.blocked)
            return one_gpu()
        group = helper_group.current_group()
        if group is not None and not group.alive():
            helper_group.shutdown_group(group.failure or "a helper exited", graceful=False)
            group = None
        if group is None or group.plan != self.plan:
            self._one_gpu("the helper processes are not running (they start again with the next prompt)")
            return one_gpu()
        if group.diffusion_model is not executor.class_obj:
            self._one_gpu("the helpers hold another model (was the sampler started without ModelPatcher.pre_run?)")
            return one_gpu()
        arguments = self.adapter.named_arguments(executor.original, args, kwargs)
        transformer_options = arguments.pop("transformer_options")
        x = arguments.get("x")
        if isinstance(x, torch.Tensor):
            placement = group.scheduler.place(x, self._output_channels(x))
        elif self.adapter.streams_input and isinstance(x, (list, tuple)):   # several streams (video, audio)
            if self.plan.replicas > 1:
                self._one_gpu(f"{type(executor.class_obj).__name__}'s input is a list of streams, whose rows CFG "
                              "groups cannot share out; set sequence_degree to the number of GPUs")
                return one_gpu()
            placement = None   # one sequence-parallel group, an even token split
        else:
            self._one_gpu(f"{type(executor.class_obj).__name__}'s input is not one latent tensor whose rows could "
                          "be placed on the GPUs")
            return one_gpu()
        token_weights = None if placement is None or placement[1] is None else [
            weights for weights, rows in zip(placement[1], placement[0]) if rows]
        reason = self.adapter.unsupported_reason(arguments, transformer_options, executor.class_obj, self.plan.sp_degree,
                                         self.plan.ring_degree, token_weights)
        if reason is not None:
            self._one_gpu(reason)
            return one_gpu()
        # A Cancel that arrived between steps stops here, before the helpers are engaged: they stay warm and in step.
        comfy.model_management.throw_exception_if_processing_interrupted()
        # The helpers call the model's forward, which may name an argument differently from the method it wraps
        # (Qwen-Image's timestep and timesteps): the call travels by the forward's names.
        renamed = _forward_names(executor)
        arguments = self.adapter.call_arguments(arguments)
        call_args = {renamed.get(name, name): value for name, value in arguments.items()}
        call_args["transformer_options"] = self.adapter.helper_transformer_options(transformer_options)
        try:
            return self._parallel_step(group, executor, call_args, transformer_options, placement, one_gpu,
                                       {new: old for old, new in renamed.items()})
        finally:
            if self.resident_weights is not None:
                self.resident_weights.unpin()   # pinned for a capture or replay (_graph_ready)

    @torch.compiler.disable(recursive=False)   # as the wrapper: our host work stays out of dynamo
    def _parallel_step(self, group, executor, call_args, transformer_options, placement, one_gpu, own_names):
        try:
            # A call of several streams (video and audio) returns a list, which a step graph's output buffer is
            # not: it runs eagerly.
            graphs = self.graphs_allowed and not self.adapter.streams_input
            message, tensors = group.dispatch_forward(call_args, graphs, self.compile_kwargs,
                                                      self._graph_ready, placement)
        except (pickle.PicklingError, TypeError, AttributeError, ValueError) as e:
            self._one_gpu(f"a model input cannot be sent to the helpers ({e})")
            return one_gpu()
        except helper_group.HelperFailure as e:
            return self._recover(e, one_gpu)

        def run_shard(args, token_weights):
            options = dict(transformer_options)
            options[TRANSFORMER_OPTIONS_KEY] = group.sequence_parallel_call(token_weights)
            args = {own_names.get(name, name): value for name, value in args.items()}
            return executor(**dict(args, transformer_options=options))

        try:
            return group.run_step(message, tensors, run_shard)
        except comfy.model_management.InterruptProcessingException:
            # ComfyUI checks Cancel inside every layer: rank 0 left this step midway while the helpers wait in
            # its collectives. They cannot be brought back in step, so they end; the next prompt starts new ones.
            helper_group.shutdown_group("cancelled in the middle of a step", graceful=False)
            raise
        except Exception as e:
            return self._recover(e, one_gpu)

    def _output_channels(self, x):
        """Channels of the model's output: the latent's, which ``x`` may exceed by conditioning channels ComfyUI
        concatenates to it (inpainting, FLUX Fill, image-to-video)."""
        model_patcher = self.sampling_patcher()
        latent_format = getattr(model_patcher.model, "latent_format", None) if model_patcher is not None else None
        channels = getattr(latent_format, "latent_channels", None)
        return min(channels, x.shape[1]) if channels else x.shape[1]

    def _graph_ready(self, mode):
        """Dynamic VRAM: the weights' pages are where a capture (CAPTURE) or the captured graphs (REPLAY) need them.
        Classic loading: always (its weights stay put while the graphs are kept)."""
        if self.resident_weights is None:
            return True
        try:
            if mode == step_graphs.CAPTURE:
                return self.resident_weights.pin_for_capture()
            return self.resident_weights.pin_for_replay()
        except Exception as e:   # comfy-aimdo refused the fault: this step runs eagerly, as ComfyUI's own would
            log.warning("Enable Multi-GPU: could not check where the weights are (%s: %s); this step runs eagerly",
                        type(e).__name__, e)
            return False

    def _recover(self, error, one_gpu):
        log.error("Enable Multi-GPU: the parallel step failed (%s: %s); stopping the helpers and finishing this "
                  "prompt on one GPU. New helpers start with the next prompt.", type(error).__name__, error)
        helper_group.shutdown_group("a parallel step failed", graceful=False)
        model_patcher = self.sampling_patcher()
        if model_patcher is not None:
            self._restore_blocks(model_patcher)
        if self.resident_weights is not None:
            # The aborted step no longer reads them; ComfyUI's own step below faults and unpins weight by weight.
            self.resident_weights.unpin()
        return one_gpu()


def _forward_names(executor):
    """{name in the wrapped method: name in the model's forward} where the two differ. ComfyUI's forwards pass their
    arguments on to the method they wrap in their own order, so the names pair up by position."""
    forward = types.MethodType(type(executor.class_obj).forward, executor.class_obj)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [[p.name for p in inspect.signature(inspect.unwrap(f)).parameters.values() if p.kind in positional]
             for f in (executor.original, forward)]
    return {own: theirs for own, theirs in zip(*names) if own != theirs}


def _torch_compile_settings(model_patcher):
    """The torch.compile settings of ComfyUI's TorchCompileModel node when it compiles this model's whole diffusion
    model (its wrapper swaps in the compiled module on rank 0), else None. They are plain data, sent with every call,
    so that the helpers run the same compiled model and no rank is left eager."""
    import comfy_api.torch_helpers.torch_compile as torch_compile
    if not model_patcher.get_wrappers(ext.WrappersMP.APPLY_MODEL, torch_compile.COMPILE_KEY):
        return None
    settings = model_patcher.model_options.get(torch_compile.TORCH_COMPILE_KWARGS)
    return dict(settings) if settings else None


def _weight_addresses(model_patcher):
    """Where rank 0's weights are, which its step graphs bake in (ComfyUI may unload and reload them between
    prompts)."""
    diffusion_model = model_patcher.model.diffusion_model
    return hash(tuple(t.data_ptr() for t in itertools.chain(diffusion_model.parameters(), diffusion_model.buffers())))


def _graph_safe(model_patcher, group, cuda_graphs=True):
    """Whether the parallel step may be replayed as a CUDA graph, which bakes in the weights' addresses, and for
    ComfyUI's dynamic VRAM the weights' range that every capture and replay checks (runtime/resident_weights.py),
    else None. With sharded weights the step reads the blocks' weights from our gather buffers, so only the rest of
    ComfyUI's copy must stay put: for a classic ModelPatcher every weight it reads resident on rank 0's GPU (with
    sharded weights ComfyUI's copy of the blocks is in host RAM, runtime/offloaded_blocks.py), for a dynamic one in
    one vbar. Lowvram loading moves weights during a step, so it runs eagerly."""
    if group.device.type != "cuda" or not cuda_graphs:
        return False, None
    if model_patcher.is_dynamic():
        diffusion_model = model_patcher.model.diffusion_model
        sharded = [block for _, block in patches.transformer_blocks(diffusion_model)] \
            if group.block_shards is not None else ()
        resident = ResidentWeights.of(diffusion_model, excluded=sharded)
        return resident is not None, resident
    if group.block_shards is not None:
        return resident_outside_blocks(model_patcher), None
    return (model_patcher.model.model_lowvram is False and
            model_patcher.loaded_size() >= model_patcher.model_size()), None


def _visible_cuda():
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def model_plan(model, options, visible_cuda=None):
    """(the model's adapter, the plan for ``options``): a family adapter splits the tokens; any other model runs
    CFG/batch-parallel, and options it cannot honour raise ValueError naming the fix. ``visible_cuda``: the CUDA
    devices to plan for (default: those visible)."""
    diffusion_model = model.get_model_object("diffusion_model")
    adapter = patches.adapter_for(diffusion_model)
    if adapter is None:
        adapter = patches.ANY_MODEL
        options = for_any_model(options, type(diffusion_model).__name__, patches.FAMILIES)
    return adapter, resolve_plan(options, adapter.num_heads(diffusion_model) or 1, model.load_device,
                                 _visible_cuda() if visible_cuda is None else visible_cuda)


def enable_multigpu(model, options=None, **fields):
    """A clone of ``model`` that samples in parallel, for ``options`` (a MultiGPUOptions, or its fields as
    keywords): sequence-parallel where the model's family has an adapter, CFG/batch-parallel otherwise. Raises
    ValueError naming the fix for a bad config."""
    options = options if options is not None else MultiGPUOptions(**fields)
    if model.get_wrappers(ext.WrappersMP.OUTER_SAMPLE, KEY):
        raise ValueError("Enable Multi-GPU is already applied to this model by a node before this one; remove one of "
                         "them (or set enabled to false on one).")
    envs.check_all()
    launchers.check_allowed(options.launcher)
    adapter, plan = model_plan(model, options)
    if plan.world_size == 1:
        log.info("Enable Multi-GPU: one device requested; the model is unchanged.")
        return model
    check_helper_memory(plan, model.model_size(), lambda index: torch.cuda.mem_get_info(index)[0],
                        lambda: psutil.virtual_memory().available)
    plan = check_peer_access(plan, torch.cuda.can_device_access_peer)
    plan = check_exchange_kernels(plan, lambda: symmetric.build_problem(model.load_device))
    clone = hooked_clone(model, plan, adapter)
    what = "sequence-parallel" if adapter.sequence_parallel else \
        f"CFG/batch-parallel ({type(model.get_model_object('diffusion_model')).__name__} has no " \
        "sequence-parallel adapter)"
    log.info("Enable Multi-GPU: %s, %s", plan.describe(), what)
    return clone


def hooked_clone(model, plan, adapter):
    """The clone the node returns for ``plan``: the family's hooks, the hand-off of every model call, and the
    callbacks that start the helpers and collect their figures."""
    clone = model.clone()
    adapter.install_on_patcher(clone, plan.shard_weights)
    run = MultiGPURun(plan, adapter)
    diffusion_model = clone.get_model_object("diffusion_model")
    if adapter.entry(diffusion_model) == WRAPPER_ENTRY:
        clone.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, KEY, run.diffusion_model_wrapper)
    elif "diffusion_model.forward" not in clone.object_patches:   # another node's forward: on_pre_run says so
        clone.add_object_patch("diffusion_model.forward",
                               _forward_entry(clone.get_model_object("diffusion_model.forward"), diffusion_model,
                                              run.diffusion_model_wrapper))
    clone.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, run.outer_sample_wrapper)
    clone.add_callback_with_key(ext.CallbacksMP.ON_PRE_RUN, KEY, run.on_pre_run)
    if run.offloaded is not None:
        clone.add_wrapper_with_key(ext.WrappersMP.PREPARE_SAMPLING, KEY, run.offloaded.prepare_sampling_wrapper)
    clone.add_callback_with_key(ext.CallbacksMP.ON_CLEANUP, KEY, run.on_cleanup)
    return clone


def _forward_entry(original, diffusion_model, wrapper):
    """For a model whose forward runs no DIFFUSION_MODEL wrappers: its forward, run through ``wrapper`` as ComfyUI
    runs such wrappers (an executor over the original)."""
    @patches.ours
    def forward(*args, **kwargs):
        return ext.WrapperExecutor.new_class_executor(original, diffusion_model, [wrapper]).execute(*args, **kwargs)
    return forward
