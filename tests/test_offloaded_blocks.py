"""Classic loading with sharded weights: ComfyUI's copy of the blocks leaves rank 0's GPU once and stays off across
prompts (runtime/offloaded_blocks.py).

On CPU ComfyUI's load and offload devices are the same, so a move moves nothing, but everything else is ComfyUI's own:
its partial unload puts layers into its low-VRAM state (weights cast on use, LoRA patches applied on the way), its
loader decides what to load again, and ``ModelPatcher.load`` is where it loads. ``applies`` is widened to this
CPU patcher; the GPU check of the same path is ``python -m comfy_xdit_patch.evidence offload`` (docs/benchmarks.md).
"""
import logging
import os
import signal

import nodes
import pytest

import comfy.model_patcher
from comfy_env import ksample, relative_error
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.patches import transformer_blocks as blocks
from comfy_xdit_patch.runtime import helper_group as helpers
from comfy_xdit_patch.runtime import offloaded_blocks


@pytest.fixture
def classic_cpu(monkeypatch):
    monkeypatch.setattr(offloaded_blocks, "applies", lambda model_patcher: not model_patcher.is_dynamic())


@pytest.fixture
def loads(monkeypatch):
    """Every ``ModelPatcher.load`` call (ComfyUI loading layers onto the load device), by the patcher's model."""
    calls = []
    original = comfy.model_patcher.ModelPatcher.load

    def counted(self, *args, **kwargs):
        calls.append(self.model)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "load", counted)
    return calls


def layer_states(model_patcher):
    """(in a block, loaded by ComfyUI) for every layer ComfyUI loads or offloads."""
    diffusion_model = model_patcher.model.diffusion_model
    inside = {id(m) for _, block in blocks(diffusion_model) for m in block.modules()}
    return [(id(m) in inside, bool(m.comfy_patched_weights)) for m in diffusion_model.modules()
            if hasattr(m, "comfy_patched_weights")]


def loaded_bytes_outside_blocks(model_patcher):
    """ComfyUI's size of the model (its state dict, buffers included) less the blocks'."""
    import comfy.model_management
    return model_patcher.model_size() - sum(comfy.model_management.module_size(block)
                                            for _, block in blocks(model_patcher.model.diffusion_model))


def test_only_the_blocks_leave_and_a_warm_prompt_loads_nothing(unet, classic_cpu, loads):
    lora = nodes.LoraLoaderModelOnly()
    patched = lora.load_lora_model_only(unet, "tiny_lora_a.safetensors", 0.8)[0]
    expected = ksample(patched)
    parallel = enable_multigpu(patched, gpus=2, parallelism="ulysses", shard_weights=True)

    got = ksample(parallel)
    assert relative_error(got, expected) <= 1e-5
    states = layer_states(parallel)
    assert states and all(loaded != in_block for in_block, loaded in states), \
        "ComfyUI's copy should keep exactly the layers outside the blocks loaded"
    model = parallel.model
    assert model.model_lowvram and model.model_loaded_weight_memory == loaded_bytes_outside_blocks(parallel)

    loads.clear()
    assert relative_error(ksample(parallel), expected) <= 1e-5
    assert loads == [], "ComfyUI loaded the model again for a warm prompt"
    assert layer_states(parallel) == states
    assert model.model_lowvram and model.model_loaded_weight_memory == loaded_bytes_outside_blocks(parallel)

    # ComfyUI's own step on this model (what a fallback to one GPU runs) casts the offloaded blocks with the LoRA
    # applied once: the gathered weights in the parallel step already carry it.
    assert relative_error(ksample(parallel.clone()), expected) <= 1e-5

    # A new strength: ComfyUI loads and patches the model as usual, and the blocks leave again.
    restrengthened = lora.load_lora_model_only(unet, "tiny_lora_a.safetensors", -0.7)[0]
    loads.clear()
    got_again = ksample(enable_multigpu(restrengthened, gpus=2, parallelism="ulysses", shard_weights=True))
    assert loads, "a model with new patches was not loaded again"
    assert all(loaded != in_block for in_block, loaded in layer_states(restrengthened))
    assert relative_error(got_again, ksample(restrengthened)) <= 1e-5


def test_replicated_weights_leave_comfyuis_loading_alone(tiny_flux, classic_cpu, loads):
    parallel = enable_multigpu(tiny_flux, gpus=2, parallelism="ulysses")
    ksample(parallel)
    assert all(loaded for _, loaded in layer_states(parallel))
    assert not parallel.model.model_lowvram


def test_a_failed_step_brings_the_blocks_back_for_one_gpu(tiny_flux, classic_cpu, caplog):
    expected = ksample(tiny_flux)
    parallel = enable_multigpu(tiny_flux, gpus=2, parallelism="ulysses", shard_weights=True)
    ksample(parallel)
    assert any(not loaded for _, loaded in layer_states(parallel))
    victim = next(iter(helpers.current_group().processes.values()))
    block = tiny_flux.get_model_object("diffusion_model.double_blocks.1")

    def kill(*_):
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)

    hook = block.register_forward_pre_hook(kill)
    try:
        with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
            got = ksample(parallel)
    finally:
        hook.remove()
    assert relative_error(got, expected) <= 1e-5
    assert any("blocks is back" in r.getMessage() for r in caplog.records)
    assert all(loaded for _, loaded in layer_states(parallel)), "the one-GPU step ran on offloaded blocks"


def test_comfyuis_bookkeeping_comes_back_when_its_loader_fails(tiny_flux, classic_cpu):
    """The model reads as fully loaded only while ComfyUI prepares the run; a loader that raises (out of memory,
    say) still leaves ComfyUI's own figures as they were."""
    import comfy.model_management
    model_patcher = tiny_flux.clone()
    comfy.model_management.load_models_gpu([model_patcher])
    kept = offloaded_blocks.OffloadedBlocks()
    kept.offload(model_patcher)
    before = (model_patcher.model.model_lowvram, model_patcher.model.model_loaded_weight_memory)
    assert before[0] and kept.as_left(model_patcher)
    seen = []

    def failing_loader(patcher, *args, **kwargs):
        seen.append((patcher.model.model_lowvram, patcher.model.model_loaded_weight_memory))
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        kept.prepare_sampling_wrapper(failing_loader, model_patcher)
    assert seen == [(False, model_patcher.model_size())]
    assert (model_patcher.model.model_lowvram, model_patcher.model.model_loaded_weight_memory) == before
    kept.restore(model_patcher)   # the shared model goes back as the other tests expect it
    assert not model_patcher.model.model_lowvram and all(loaded for _, loaded in layer_states(model_patcher))
