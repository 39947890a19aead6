"""GGUF checkpoints under Enable Multi-GPU: a tiny FLUX GGUF file loaded by ComfyUI-GGUF's UnetLoaderGGUF computes on
N ranks as on 1, and the helpers hold its quantized blocks (dequantized at every call, as on rank 0).

ComfyUI-GGUF (city96/ComfyUI-GGUF) is a custom node, not part of ComfyUI: it is loaded from COMFY_XDIT_GGUF_PATH
(default /opt/ComfyUI-GGUF) the way ComfyUI loads custom nodes, and the module is skipped, saying so, without it.
"""
import asyncio
import logging
import os
import uuid

import nodes
import pytest
import torch

from comfy_env import empty_latent, flux_conditioning, tiny_flux_state_dict
from test_community import assert_parallel_equal, ksample, with_loras
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import gguf_weights, weights
from comfy_xdit_patch.runtime import helper_group as helpers

GGUF_PATH = os.path.abspath(os.environ.get("COMFY_XDIT_GGUF_PATH", "/opt/ComfyUI-GGUF"))
if not os.path.isfile(os.path.join(GGUF_PATH, "nodes.py")):
    pytest.skip(f"ComfyUI-GGUF not found at COMFY_XDIT_GGUF_PATH='{GGUF_PATH}' (a checkout of city96/ComfyUI-GGUF)",
                allow_module_level=True)
gguf = pytest.importorskip("gguf", reason="the 'gguf' package (tests/requirements.txt) is needed by ComfyUI-GGUF")

Q = gguf.GGMLQuantizationType


def tensor_type_for(key, value):
    """Three kinds of block in one file, as real GGUF FLUX files mix them: Q8_0 double blocks, Q4_0 single blocks,
    F16 embedders and final layer, F32 biases and norms (ComfyUI-GGUF's converter keeps 1-D tensors F32)."""
    if value.ndim == 1:
        return Q.F32
    if key.startswith("double_blocks."):
        return Q.Q8_0
    if key.startswith("single_blocks."):
        return Q.Q4_0
    return Q.F16


def write_tiny_flux_gguf(path):
    writer = gguf.GGUFWriter(path, arch="flux")   # 'general.architecture' = flux: ComfyUI-GGUF's image-model check
    for key, value in tiny_flux_state_dict().items():
        tensor_type = tensor_type_for(key, value)
        writer.add_tensor(key, gguf.quants.quantize(value.numpy(), tensor_type), raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def k_quant_blocks(rows, cols, tensor_type, seed):
    """Raw K-quant blocks (gguf-py cannot quantize to these): random quants and scales, with the fp16 super-block
    scales set small so that the weights stay in a tiny model's range. Each 256 weights: Q4_K is d, dmin (fp16),
    12 scale bytes, 128 quant bytes (144 bytes); Q6_K is 128 + 64 quant bytes, 16 int8 scales, then d (210 bytes)."""
    import numpy as np
    block_bytes = {Q.Q4_K: 144, Q.Q6_K: 210}[tensor_type]
    blocks = np.random.default_rng(seed).integers(0, 256, size=(rows, cols // 256, block_bytes), dtype=np.uint8)
    scale = np.array([2e-5], dtype=np.float16).view(np.uint8)
    if tensor_type == Q.Q4_K:
        blocks[..., 0:2] = scale                                                    # d
        blocks[..., 2:4] = np.array([1e-5], dtype=np.float16).view(np.uint8)       # dmin
    else:
        blocks[..., 208:210] = scale                                                # d
    return blocks.reshape(rows, -1)


def write_tiny_flux_k_quant_gguf(path):
    """Q6_K double blocks and Q4_K single blocks (their 2-D weights' rows are multiples of 256 in the tiny model)."""
    writer = gguf.GGUFWriter(path, arch="flux")
    for index, (key, value) in enumerate(tiny_flux_state_dict().items()):
        if value.ndim == 2 and key.startswith(("double_blocks.", "single_blocks.")) and value.shape[1] % 256 == 0:
            tensor_type = Q.Q6_K if key.startswith("double_blocks.") else Q.Q4_K
            writer.add_tensor(key, k_quant_blocks(*value.shape, tensor_type, seed=index), raw_dtype=tensor_type)
        else:
            tensor_type = Q.F32 if value.ndim == 1 else Q.F16
            writer.add_tensor(key, gguf.quants.quantize(value.numpy(), tensor_type), raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def gguf_nodes():
    """ComfyUI-GGUF loaded as ComfyUI loads a custom node (module named after its path)."""
    assert asyncio.run(nodes.load_custom_node(GGUF_PATH)), f"ComfyUI-GGUF at {GGUF_PATH} failed to load"
    return nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def gguf_file(model_files):
    """The file's name in ComfyUI's diffusion_models folder, where UnetLoaderGGUF lists .gguf files."""
    write_tiny_flux_gguf(str(model_files / "diffusion_models" / "tiny_flux_q8.gguf"))
    return "tiny_flux_q8.gguf"


@pytest.fixture(scope="module")
def gguf_unet(gguf_file, gguf_nodes):
    return gguf_nodes["UnetLoaderGGUF"]().load_unet(gguf_file)[0]


@pytest.fixture
def conds():
    return dict(positive=flux_conditioning(77, seed=1), negative=flux_conditioning(77, seed=2))


def one_gpu_lines(caplog):
    return [r.getMessage() for r in caplog.records if "one GPU" in r.getMessage()]


def assert_parallel_equal_on_helpers(caplog, model, **kwargs):
    """assert_parallel_equal, and no call went to one GPU (a model the helpers cannot hold would)."""
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        assert_parallel_equal(model, **kwargs)
    assert not one_gpu_lines(caplog)


def test_unet_loader_gguf_builds_ggml_layers(gguf_unet):
    diffusion_model = gguf_unet.model.diffusion_model
    qkv = diffusion_model.double_blocks[0].img_attn.qkv.weight
    assert gguf_weights.is_ggml_tensor(qkv) and qkv.tensor_type == Q.Q8_0 and qkv.dtype == torch.uint8
    assert tuple(qkv.shape) == (1536, 512) and qkv.numel() < 1536 * 512 * 2   # quantized: ~1.06 bytes a weight
    assert diffusion_model.single_blocks[0].linear1.weight.tensor_type == Q.Q4_0
    assert diffusion_model.img_in.weight.tensor_type == Q.F16
    assert gguf_weights.ops_module(diffusion_model) is not None


def test_helpers_rebuild_the_same_ggml_layers(gguf_unet, monkeypatch):
    """The weight transfer's two ends in one process (broadcast recorded, then replayed): the helper's model has
    ComfyUI-GGUF's layers holding rank 0's raw quantized blocks with their types and shapes, not dequantized copies."""
    cpu = torch.device("cpu")
    sent = []
    monkeypatch.setattr(weights.dist, "broadcast", lambda tensor, src: sent.append(tensor.clone()))
    keys = weights.weight_keys(gguf_unet)
    assert not [key for key in keys if key.endswith(".temp.weight")], "ComfyUI-GGUF's memory-estimate placeholder"
    weights.send_weights(gguf_unet, keys, cpu)
    replay = iter(sent)
    monkeypatch.setattr(weights.dist, "broadcast", lambda tensor, src: tensor.copy_(next(replay)))
    spec = weights.model_spec(gguf_unet)
    assert spec["gguf"]["path"] == GGUF_PATH
    helper_model = weights.build_diffusion_model(spec, cpu)
    weights.receive_weights(helper_model, keys, cpu, spec)
    assert next(replay, None) is None

    rank0_model = gguf_unet.model.diffusion_model
    rank0_tensors = dict(list(rank0_model.named_parameters()) + list(rank0_model.named_buffers()))
    helper_tensors = dict(list(helper_model.named_parameters()) + list(helper_model.named_buffers()))
    assert set(helper_tensors) == set(rank0_tensors)
    quantized = 0
    for key, value in rank0_tensors.items():
        got = helper_tensors[key]
        assert type(got) is type(value), key
        if gguf_weights.is_ggml_tensor(value):
            assert (got.tensor_type, got.tensor_shape) == (value.tensor_type, value.tensor_shape), key
            quantized += value.tensor_type in (Q.Q8_0, Q.Q4_0)
        raw, expected = gguf_weights.storage(got), gguf_weights.storage(value)
        assert raw.dtype == expected.dtype and raw.shape == expected.shape, key
        assert torch.equal(raw.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), key
    blocks = [key for key, value in tiny_flux_state_dict().items()
              if key.startswith(("double_blocks.", "single_blocks.")) and value.ndim == 2]
    assert quantized == len(blocks), "every Linear weight of the double and single blocks stays quantized"
    for name, layer in rank0_model.named_modules():
        assert type(helper_model.get_submodule(name)) is type(layer), name


@pytest.mark.parametrize("parallelism", ["ring", "ulysses"])
def test_gguf_checkpoint_on_two_ranks(gguf_unet, conds, parallelism, caplog):
    assert_parallel_equal_on_helpers(caplog, gguf_unet, parallelism=parallelism, latent=empty_latent(18, 14), **conds)


def test_gguf_advanced_loader_dequant_dtype_reaches_the_helpers(gguf_file, gguf_nodes, conds, caplog):
    """UnetLoaderGGUFAdvanced's dequant_dtype is a setting of ComfyUI-GGUF's Linear class, not of the model: it
    travels in the model spec and a helper's build sets it. (float32 multiplies the fp16 block scales exactly; on this
    tiny model that moves the latent by only ~1e-5, so the build itself is checked, besides the parallel run.)"""
    loader = gguf_nodes["UnetLoaderGGUFAdvanced"]()
    try:
        model = loader.load_unet(gguf_file, dequant_dtype="float32", patch_dtype="default")[0]
        spec = weights.model_spec(model)
        assert spec["gguf"]["dequant_dtype"] == torch.float32
        assert_parallel_equal_on_helpers(caplog, model, parallelism="ring", latent=empty_latent(16, 16), **conds)
        linear = type(model.model.diffusion_model.img_in)
        linear.dequant_dtype = None   # as in a fresh helper process
        helper_model = weights.build_diffusion_model(spec, torch.device("cpu"))
        assert type(helper_model.img_in) is linear and linear.dequant_dtype == torch.float32
    finally:
        loader.load_unet(gguf_file)   # the default settings again, for the other tests


@pytest.mark.parametrize("parallelism", ["ring", "ulysses"])
def test_lora_on_gguf_runs_on_two_ranks(gguf_unet, conds, parallelism, caplog):
    """ComfyUI-GGUF adds a LoRA to a quantized weight while dequantizing it: the helpers get the patch lists and hang
    them on their own GGMLTensors (still quantized); F16/F32 weights (img_in here) arrive patched. A strength change
    between two prompts re-sends them."""
    latent = empty_latent(18, 14)
    lora = with_loras(gguf_unet, 0.8, 0.5)
    assert "diffusion_model.img_in.weight" in lora.patches, "a LoRA on an F16 weight (patched in place)"
    assert "diffusion_model.double_blocks.0.img_attn.qkv.weight" in lora.patches, "and on a quantized one"
    assert not torch.equal(ksample(lora, latent=latent, **conds), ksample(gguf_unet, latent=latent, **conds)), \
        "the LoRA must change the result"
    assert_parallel_equal_on_helpers(caplog, lora, parallelism=parallelism, latent=latent, **conds)
    group = helpers.current_group()
    syncs = group.weight_syncs
    assert_parallel_equal_on_helpers(caplog, with_loras(gguf_unet, 0.3, 1.2), parallelism=parallelism,
                                     latent=latent, **conds)
    assert helpers.current_group() is group and group.weight_syncs == syncs + 1, "the new strength was not re-sent"
    assert_parallel_equal_on_helpers(caplog, gguf_unet, parallelism=parallelism, latent=latent, **conds)


def test_gguf_patch_with_a_function_runs_on_one_gpu_with_a_log_line(gguf_unet, conds, caplog):
    """A patch the helpers cannot rebuild exactly (one applying a function) is found before anything is sent: that
    prompt runs on one GPU with one log line naming it, and the helpers stay in step."""
    lora = nodes.LoraLoaderModelOnly().load_lora_model_only(gguf_unet, "tiny_lora_a.safetensors", 0.8)[0]
    patched = lora.clone()
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    patched.patches[key] = [patch[:4] + (lambda weight: weight,) for patch in patched.patches[key]]
    patched.patches_uuid = uuid.uuid4()
    latent = empty_latent(16, 16)
    expected = ksample(patched, latent=latent, **conds)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(enable_multigpu(patched, gpus=2, parallelism="ring"), latent=latent, **conds)
    assert torch.equal(got, expected)
    lines = one_gpu_lines(caplog)
    assert len(lines) == 1 and "GGUF" in lines[0] and "function" in lines[0], lines
    caplog.clear()
    assert_parallel_equal_on_helpers(caplog, gguf_unet, parallelism="ring", latent=latent, **conds)


def test_k_quant_checkpoint_on_two_ranks(model_files, gguf_nodes, conds, caplog):
    """Q4_K and Q6_K blocks (the K-quants most FLUX GGUF files use) travel as raw blocks like Q8_0 and Q4_0."""
    write_tiny_flux_k_quant_gguf(str(model_files / "diffusion_models" / "tiny_flux_k.gguf"))
    model = gguf_nodes["UnetLoaderGGUF"]().load_unet("tiny_flux_k.gguf")[0]
    diffusion_model = model.model.diffusion_model
    assert diffusion_model.double_blocks[0].img_attn.qkv.weight.tensor_type == Q.Q6_K
    assert diffusion_model.single_blocks[0].linear1.weight.tensor_type == Q.Q4_K
    assert_parallel_equal_on_helpers(caplog, model, parallelism="ulysses", latent=empty_latent(18, 14), **conds)
