"""GGUF checkpoints loaded by ComfyUI-GGUF (city96/ComfyUI-GGUF, its UnetLoaderGGUF node) on the helpers.

ComfyUI-GGUF builds the diffusion model with its GGMLOps: every Linear holds a GGMLTensor, the file's raw blocks
(uint8 for a quantized type, float for F32/F16) tagged with a ``tensor_type`` and the logical ``tensor_shape``, and
dequantizes it at every call. Rank 0 sends those raw bytes (no dequantized copies: the helpers' memory stays
quantized); the types and logical shapes travel once in the model spec, and each helper builds its model with
ComfyUI-GGUF's own GGMLOps, imported from the very directory rank 0 loaded it from, so it dequantizes exactly as
rank 0 does.

ComfyUI-GGUF applies LoRA and other weight patches while dequantizing, from patches it hangs on the GGMLTensor;
those are not sent yet, so a patched GGUF model runs on one GPU (``check``).
"""
import importlib
import importlib.util
import os
import sys
import types

import torch


def ops_module(diffusion_model):
    """ComfyUI-GGUF's ops module when the model was built with its GGMLOps, else None. Found through the layers'
    classes: the plugin is loaded by ComfyUI under a path-derived module name, not importable by a fixed name."""
    for module in diffusion_model.modules():
        for cls in type(module).__mro__:
            if cls.__name__ == "GGMLLayer":
                return sys.modules[cls.__module__]
    return None


def is_ggml_tensor(tensor):
    return type(tensor).__name__ == "GGMLTensor" and hasattr(tensor, "tensor_type")


def spec(model_patcher):
    """What a helper needs to build rank 0's GGUF layers, or None for any other model: where ComfyUI-GGUF lives, the
    dequantization settings of UnetLoaderGGUF(Advanced) (class attributes of GGMLOps.Linear, shared by every GGUF
    model in the process) and each GGMLTensor's quantization type and logical shape."""
    diffusion_model = model_patcher.model.diffusion_model
    ops = ops_module(diffusion_model)
    if ops is None:
        return None
    tensors = {}
    for name, tensor in list(diffusion_model.named_parameters()) + list(diffusion_model.named_buffers()):
        if is_ggml_tensor(tensor):
            tensor_type = tensor.tensor_type
            tensors[name] = (None if tensor_type is None else int(tensor_type), tuple(tensor.tensor_shape))
    return {
        "package": ops.__name__.rpartition(".")[0],
        "path": os.path.dirname(os.path.abspath(ops.__file__)),
        "dequant_dtype": ops.GGMLOps.Linear.dequant_dtype,
        "patch_dtype": ops.GGMLOps.Linear.patch_dtype,
        "tensors": tensors,
    }


def check(model_patcher):
    """Raises NotImplementedError for a GGUF model with weight patches (a LoRA): ComfyUI-GGUF adds them to each weight
    at dequantization time, from patch lists the helpers do not receive yet. Sending the raw weights alone would give
    the helpers the model without its LoRA: wrong pixels, so that prompt runs on one GPU."""
    if model_patcher.patches and ops_module(model_patcher.model.diffusion_model) is not None:
        first = next(iter(model_patcher.patches))
        raise NotImplementedError(f"the GGUF model has weight patches (a LoRA, e.g. on '{first}'), which ComfyUI-GGUF "
                                  "applies while dequantizing; GGUF with a LoRA is not sent to helper GPUs yet")


def storage(tensor):
    """A GGMLTensor's raw blocks as a plain tensor (its own ``shape`` reports the logical, dequantized shape)."""
    return tensor.as_subclass(torch.Tensor)


def import_ops(gguf_spec):
    """Helpers: ComfyUI-GGUF's ops module, imported from rank 0's directory under rank 0's module name. Only the
    package's ops (and the dequant module it uses) are imported: its __init__ would register nodes and folders that a
    helper has no use for."""
    package, path = gguf_spec["package"], gguf_spec["path"]
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [path]
        module.__spec__ = importlib.util.spec_from_loader(package, None, is_package=True)
        module.__spec__.submodule_search_locations = [path]
        sys.modules[package] = module
    ops = importlib.import_module(package + ".ops")
    if os.path.dirname(os.path.abspath(ops.__file__)) != path:
        raise RuntimeError(f"ComfyUI-GGUF is imported from {ops.__file__}, rank 0 uses {path}")
    return ops


def operations(gguf_spec):
    """Helpers: the GGMLOps rank 0 built its model with, with its dequantization settings."""
    ops = import_ops(gguf_spec)
    ops.GGMLOps.Linear.dequant_dtype = gguf_spec["dequant_dtype"]
    ops.GGMLOps.Linear.patch_dtype = gguf_spec["patch_dtype"]
    return ops.GGMLOps


def wrap(raw, gguf_spec, key):
    """Helpers: rank 0's raw blocks for ``key`` as the GGMLTensor ComfyUI-GGUF's layers dequantize."""
    import gguf
    ops = import_ops(gguf_spec)
    tensor_type, shape = gguf_spec["tensors"][key]
    return ops.GGMLTensor(raw, tensor_type=None if tensor_type is None else gguf.GGMLQuantizationType(tensor_type),
                          tensor_shape=torch.Size(shape))
