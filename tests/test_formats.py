"""Checkpoint formats under Enable Multi-GPU: a scaled fp8 FLUX loaded by UNETLoader computes on N ranks as on 1.

A scaled fp8 checkpoint stores Linear weights as float8_e4m3fn with a per-layer fp32 scale ('scaled_fp8' marker,
'<layer>.scale_weight'); ComfyUI loads it with its mixed-precision operations, each weight a QuantizedTensor.
"""
import logging

import nodes
import pytest
import safetensors.torch
import torch

from comfy_env import empty_latent, flux_conditioning
from test_community import assert_parallel_equal, ksample
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import weights


@pytest.fixture(scope="module")
def scaled_fp8(model_files):
    return nodes.UNETLoader().load_unet("tiny_flux_scaled_fp8.safetensors", "default")[0]


@pytest.fixture
def conds():
    return dict(positive=flux_conditioning(77, seed=1), negative=flux_conditioning(77, seed=2))


def assert_parallel_equal_on_helpers(caplog, model, **kwargs):
    """assert_parallel_equal, and no call went to one GPU (a model the helpers cannot hold would)."""
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        assert_parallel_equal(model, **kwargs)
    assert not [r.getMessage() for r in caplog.records if "one GPU" in r.getMessage()]


def test_unet_loader_builds_a_scaled_fp8_model(scaled_fp8, model_files):
    from comfy.quant_ops import QuantizedTensor
    stored = safetensors.torch.load_file(str(model_files / "diffusion_models" / "tiny_flux_scaled_fp8.safetensors"))
    assert scaled_fp8.model.model_config.quant_config == {"mixed_ops": True}
    diffusion_model = scaled_fp8.model.diffusion_model
    qkv = diffusion_model.double_blocks[0].img_attn.qkv
    assert type(qkv).__qualname__ == "mixed_precision_ops.<locals>.MixedPrecisionOps.Linear"
    assert qkv.quant_format == "float8_e4m3fn"
    assert isinstance(qkv.weight, QuantizedTensor) and qkv.weight.storage_dtype == torch.float8_e4m3fn
    assert torch.equal(qkv.weight.params.scale, stored["double_blocks.0.img_attn.qkv.scale_weight"])
    assert torch.equal(qkv.weight.state_dict()[""].view(torch.uint8),
                       stored["double_blocks.0.img_attn.qkv.weight"].view(torch.uint8))
    assert qkv.input_scale.item() == pytest.approx(0.05)
    # The embedders stay unquantized: one model, both kinds of layer.
    assert not isinstance(diffusion_model.img_in.weight, QuantizedTensor)


def test_helpers_rebuild_the_same_quantized_layers(scaled_fp8, monkeypatch):
    """The weight transfer's two ends in one process (broadcast recorded, then replayed): the helper's model has
    ComfyUI's quantized layers with rank 0's fp8 data, scales and formats, not dequantized copies."""
    from comfy.quant_ops import QuantizedTensor
    cpu = torch.device("cpu")
    sent = []
    monkeypatch.setattr(weights.dist, "broadcast", lambda tensor, src: sent.append(tensor.clone()))
    keys = weights.weight_keys(scaled_fp8)
    weights.send_weights(scaled_fp8, keys, cpu)
    replay = iter(sent)
    monkeypatch.setattr(weights.dist, "broadcast", lambda tensor, src: tensor.copy_(next(replay)))
    helper_model = weights.build_diffusion_model(weights.model_spec(scaled_fp8), cpu)
    weights.receive_weights(helper_model, keys, cpu)
    assert next(replay, None) is None

    rank0_model = scaled_fp8.model.diffusion_model
    rank0_state, helper_state = rank0_model.state_dict(), helper_model.state_dict()
    assert list(helper_state) == list(rank0_state)
    for key, value in rank0_state.items():
        assert helper_state[key].dtype == value.dtype and torch.equal(
            helper_state[key].reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), key
    for name, layer in rank0_model.named_modules():
        helper_layer = helper_model.get_submodule(name)
        assert type(helper_layer).__qualname__ == type(layer).__qualname__, name
        if isinstance(getattr(layer, "weight", None), QuantizedTensor):
            assert isinstance(helper_layer.weight, QuantizedTensor), name
            assert (helper_layer.quant_format, helper_layer.layout_type, helper_layer._full_precision_mm) == \
                (layer.quant_format, layer.layout_type, layer._full_precision_mm), name


@pytest.mark.parametrize("parallelism", ["ulysses", "ring"])
def test_scaled_fp8_checkpoint_on_two_ranks(scaled_fp8, conds, parallelism, caplog):
    assert_parallel_equal_on_helpers(caplog, scaled_fp8, parallelism=parallelism, latent=empty_latent(18, 14),
                                     **conds)


def test_scaled_fp8_with_a_lora(scaled_fp8, conds, caplog):
    """A LoRA on quantized layers: ComfyUI re-quantizes each patched weight with a new scale; the helpers get that."""
    lora = nodes.LoraLoaderModelOnly().load_lora_model_only(scaled_fp8, "tiny_lora_a.safetensors", 0.8)[0]
    assert not torch.equal(ksample(lora, latent=empty_latent(16, 16), **conds),
                           ksample(scaled_fp8, latent=empty_latent(16, 16), **conds)), "the LoRA must change the result"
    assert_parallel_equal_on_helpers(caplog, lora, parallelism="ulysses", latent=empty_latent(16, 16), **conds)


def test_fp8_fast_matmuls_are_chosen_on_the_helpers_too(model_files, monkeypatch):
    """UNETLoader's fp8_e4m3fn_fast makes rank 0 pick fp8-matmul operations where the GPU has them; the helper must
    build its model with the same request (on the CPU both fall back to the same layers, so the request is checked)."""
    import comfy.ops
    fast = nodes.UNETLoader().load_unet("tiny_flux.safetensors", "fp8_e4m3fn_fast")[0]
    spec = weights.model_spec(fast)
    assert spec["fp8_optimizations"] is True
    requested = []
    pick = comfy.ops.pick_operations
    monkeypatch.setattr(comfy.ops, "pick_operations",
                        lambda *args, **kwargs: requested.append(kwargs) or pick(*args, **kwargs))
    weights.build_diffusion_model(spec, torch.device("cpu"))
    assert requested and requested[-1]["fp8_optimizations"] is True


def test_an_unsendable_weight_runs_on_one_gpu_and_keeps_the_helpers_in_step(conds, caplog):
    """A weight the wire cannot carry is found before the transfer starts: that prompt runs on one GPU with one log
    line naming it, and the helpers, never engaged, serve the next model in parallel."""
    from comfy_env import load_tiny_flux
    odd = load_tiny_flux(seed=3)
    odd.model.diffusion_model.register_buffer("odd_table", torch.zeros(2, dtype=torch.complex64))
    latent = empty_latent(16, 16)
    expected = ksample(odd, conds["positive"], conds["negative"], latent)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(enable_multigpu(odd, gpus=2, parallelism="ring"), conds["positive"], conds["negative"],
                      latent)
    assert torch.equal(got, expected)
    one_gpu = [r.getMessage() for r in caplog.records if "one GPU" in r.getMessage()]
    assert len(one_gpu) == 1 and "odd_table" in one_gpu[0] and "torch.complex64" in one_gpu[0], one_gpu
    assert_parallel_equal(load_tiny_flux(seed=4), parallelism="ring", positive=conds["positive"],
                          negative=conds["negative"], latent=latent)
