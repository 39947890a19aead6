"""Classic loading with sharded weights: ComfyUI's own copy of the transformer blocks stays in host RAM.

With sharded weights every rank, rank 0 included, runs each block on the full weights it gathers from the pieces
(parallel/weight_shards.py), so ComfyUI's copy of the blocks is read only by a step that falls back to one GPU.
ComfyUI's dynamic VRAM never brings in what a step does not read. Classic loading brings the whole model onto rank 0's
GPU before every sampling run; without this module, on 2×H200, rank 0 peaked at 33.9 GiB and a warm 28-step 1024²
prompt took ≈22 s against 4.9 s on one GPU (docs/benchmarks.md), because ComfyUI moved the whole model back each prompt and the node then
moved most of it off again, with the small layers first (ComfyUI unloads by size), so the steps ran eagerly too.

Here, with ComfyUI's own loader doing every move:
- ``offload`` moves exactly the blocks off with ComfyUI's partial unload, which leaves them as it leaves any layer it
  offloads: cast to the GPU layer by layer with their LoRA patches applied on the way, which is what a step that
  falls back to one GPU computes with. The unload visits layers by size and skips those not marked as loaded
  (``comfy_patched_weights``), so the other layers are marked so for the duration of the call and stay on the GPU.
- Before each later sampling run ComfyUI's loader would bring the blocks back, since it sees room for them. While its
  preparation runs (``prepare_sampling_wrapper``) a model that is exactly as ``offload`` left it reads as fully
  loaded, so nothing of it moves, and its bookkeeping is put back right after. A model whose patches changed (a LoRA
  strength), or that ComfyUI unloaded meanwhile, is left to ComfyUI: it loads and patches it as usual, and the blocks
  go off again.
- Everything else stays resident at fixed addresses, so the step is replayed as a CUDA graph (multigpu._graph_safe).
"""
import logging

import comfy.model_management

from ..parallel.weight_shards import check_shardable
from ..patches import transformer_blocks

log = logging.getLogger(__name__)


def applies(model_patcher):
    """A classic ModelPatcher that loads onto a CUDA device and offloads elsewhere."""
    return (model_patcher.load_device.type == "cuda" and model_patcher.offload_device != model_patcher.load_device
            and not model_patcher.is_dynamic())


def _block_modules(model_patcher):
    return [module for _, block in transformer_blocks(model_patcher.model.diffusion_model) for module in block.modules()]


def _blocks_on(model_patcher, device):
    """Whether every block weight is on ``device`` (compared by device type and index, as torch compares devices)."""
    return all(parameter.device == device for module in _block_modules(model_patcher)
               for parameter in module.parameters(recurse=False))


class OffloadedBlocks:
    """One sampling model's blocks kept off rank 0's GPU across prompts (classic loading, sharded weights)."""

    def __init__(self):
        self._left = None   # ComfyUI's (loaded bytes, weight patches) right after ``offload``

    def offload(self, model_patcher):
        """Moves ComfyUI's copy of the blocks to the offload device; the rest stays loaded. Returns the bytes moved
        (0 where there was nothing to move or classic loading does not apply). Raises NotImplementedError, before
        anything moves, for blocks that cannot be sharded: they would then stay off for nothing."""
        if not applies(model_patcher):
            return 0
        model = model_patcher.model
        block_modules = _block_modules(model_patcher)
        inside = set(map(id, block_modules))
        on_device = [parameter for module in block_modules for parameter in module.parameters(recurse=False)
                     if parameter.device == model_patcher.load_device]
        freed = 0
        if on_device:
            check_shardable(transformer_blocks(model.diffusion_model))
            block_bytes = sum(parameter.nbytes for parameter in on_device)
            others = [module for module in model.modules()
                      if id(module) not in inside and getattr(module, "comfy_patched_weights", False)]
            for module in others:
                module.comfy_patched_weights = False
            try:
                freed = model_patcher.partially_unload(model_patcher.offload_device, memory_to_free=block_bytes)
            finally:
                for module in others:
                    module.comfy_patched_weights = True
            log.info("Enable Multi-GPU: shard_weights: moved ComfyUI's copy of the transformer blocks (%.1f GiB) off "
                     "%s; %.2f GiB of the model stay there", freed / 2**30, model_patcher.load_device,
                     model.model_loaded_weight_memory / 2**30)
        self._left = (model.model_loaded_weight_memory, model.current_weight_patches_uuid)
        return freed

    def as_left(self, model_patcher):
        """Whether the model is exactly as ``offload`` left it, with the patches this patcher wants."""
        model = model_patcher.model
        return (self._left is not None and model.model_lowvram
                and (model.model_loaded_weight_memory, model.current_weight_patches_uuid) == self._left
                and model.current_weight_patches_uuid == model_patcher.patches_uuid
                and _blocks_on(model_patcher, model_patcher.offload_device))

    def prepare_sampling_wrapper(self, executor, model_patcher, *args, **kwargs):
        """PREPARE_SAMPLING: ComfyUI loads the sampling models here. Ours reads as fully loaded while it is as we left
        it, so that the loader neither moves the blocks back nor frees room for them."""
        if not self.as_left(model_patcher):
            return executor(model_patcher, *args, **kwargs)
        model = model_patcher.model
        loaded, full = model.model_loaded_weight_memory, model_patcher.model_size()
        patches = model.current_weight_patches_uuid
        model.model_lowvram, model.model_loaded_weight_memory = False, full
        try:
            return executor(model_patcher, *args, **kwargs)
        finally:
            # Unless the loader changed the model meanwhile (then its own bookkeeping is the true one).
            if (model.model_lowvram is False and model.model_loaded_weight_memory == full
                    and model.current_weight_patches_uuid == patches
                    and _blocks_on(model_patcher, model_patcher.offload_device)):
                model.model_lowvram, model.model_loaded_weight_memory = True, loaded

    def restore(self, model_patcher):
        """For a sampling run that goes to one GPU (the helpers failed, or cannot run this model): the blocks come
        back the way ComfyUI's loader brings offloaded layers back, as many as fit."""
        if not self.as_left(model_patcher):
            return
        device = model_patcher.load_device
        room = comfy.model_management.get_free_memory(device) - comfy.model_management.minimum_inference_memory()
        model_patcher.partially_load(device, extra_memory=max(0, room))
        self._left = None
        log.info("Enable Multi-GPU: shard_weights: ComfyUI's copy of the blocks is back on %s for one GPU", device)


def resident_outside_blocks(model_patcher):
    """Whether every weight outside the blocks is on rank 0's GPU (what a sharded step reads of ComfyUI's copy)."""
    inside = set(map(id, _block_modules(model_patcher)))
    outside = [module for module in model_patcher.model.diffusion_model.modules() if id(module) not in inside]
    return all(parameter.device == model_patcher.load_device
               for module in outside for parameter in module.parameters(recurse=False))
