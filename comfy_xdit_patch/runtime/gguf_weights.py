"""GGUF checkpoints loaded by ComfyUI-GGUF (city96/ComfyUI-GGUF, its UnetLoaderGGUF node) on the helpers.

ComfyUI-GGUF builds the diffusion model with its GGMLOps: every Linear holds a GGMLTensor, the file's raw blocks
(uint8 for a quantized type, float for F32/F16) tagged with a ``tensor_type`` and the logical ``tensor_shape``, and
dequantizes it at every call. Rank 0 sends those raw bytes (no dequantized copies: the helpers' memory stays
quantized); the types and logical shapes travel once in the model spec, and each helper builds its model with
ComfyUI-GGUF's own GGMLOps, imported from the very directory rank 0 loaded it from, so it dequantizes exactly as
rank 0 does.

ComfyUI-GGUF applies LoRA and other weight patches to a quantized weight while dequantizing, from the patch list it
hangs on the GGMLTensor (GGUFModelPatcher.patch_weight_to_device); F32/F16 weights it patches in place instead. So the
helpers get the quantized weights' patch lists too (``patch_message``: their structure in the load message, their
tensors in one broadcast) and hang them on their own GGMLTensors (``attach_patches``); the F32/F16 weights travel
already patched, with no patch list, so nothing is applied twice. A patch the helpers cannot rebuild exactly (one with
a function, an unknown adapter) makes ``patch_message`` raise before anything is sent: that model runs on one GPU.
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


def _is_quantized(ops, tensor):
    """ComfyUI-GGUF's own test: only these weights keep patch lists; F32/F16 ones are patched in place."""
    return importlib.import_module(ops.__package__ + ".dequant").is_quantized(tensor)


def _quantized_patches(model_patcher):
    """(key in the diffusion model, rank 0's patch list) for every patched quantized GGMLTensor: what
    GGUFModelPatcher hangs on it as ``weight.patches = [(patches, key)]``. Empty for any other model."""
    import comfy.utils
    ops = ops_module(model_patcher.model.diffusion_model)
    if ops is None:
        return
    for key, patches in model_patcher.patches.items():
        if not key.startswith(PREFIX):
            continue
        weight = comfy.utils.get_attr(model_patcher.model, key)
        if is_ggml_tensor(weight) and _is_quantized(ops, weight):
            yield key[len(PREFIX):], patches


PREFIX = "diffusion_model."
_ADAPTER = "__comfy_xdit_weight_adapter__"   # marks a weight adapter's description among the patch data


def _describe(value, key):
    """A patch's data as plain containers (tensors left in place for the transport), or NotImplementedError when the
    helpers could not rebuild it exactly."""
    from comfy import weight_adapter
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value) in (torch.Tensor, torch.nn.Parameter):
        return value
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return type(value)(_describe(v, key) for v in value)
    if type(value) is dict and all(isinstance(k, str) for k in value):
        return {k: _describe(v, key) for k, v in value.items()}
    if type(value) in (set, frozenset) and all(isinstance(v, str) for v in value):
        return value
    # A weight adapter (LoRA, LoHa, LoKr, ...) is its class plus loaded_keys and weights: rebuilt from those alone.
    if isinstance(value, weight_adapter.WeightAdapterBase) and set(vars(value)) <= {"loaded_keys", "weights"}:
        cls = type(value)
        return {_ADAPTER: (cls.__module__, cls.__qualname__),
                "state": {name: _describe(v, key) for name, v in vars(value).items()}}
    raise NotImplementedError(f"the GGUF model's weight patch on '{key}' holds a {type(value).__name__}, which the "
                              "helper GPUs cannot rebuild")


def _describe_patches(key, patches):
    described = []
    for patch in patches:
        if not isinstance(patch, tuple) or len(patch) != 5:
            raise NotImplementedError(f"the GGUF model's weight patch on '{key}' has an unknown form")
        strength_patch, data, strength_model, offset, function = patch
        if function is not None:
            raise NotImplementedError(f"the GGUF model's weight patch on '{key}' applies a function, which the "
                                      "helper GPUs cannot rebuild")
        described.append((_describe(strength_patch, key), _describe(data, key), _describe(strength_model, key),
                          _describe(offset, key), None))
    return described


def patch_message(model_patcher):
    """Rank 0: the quantized weights' patch lists as (structure with TensorSlots for the load message, tensors for
    one broadcast after the weights); (None, []) for a model without any. Raises NotImplementedError when a patch
    (ComfyUI-GGUF applies them while dequantizing) cannot be rebuilt exactly on the helpers: sending the weights
    without it would give wrong pixels, so the caller builds this before anything is sent and that prompt runs on
    one GPU."""
    from . import transport
    described = {key: _describe_patches(PREFIX + key, patches) for key, patches in _quantized_patches(model_patcher)}
    if not described:
        return None, []
    tensors = []
    return transport.extract_tensors(described, tensors), tensors


def _rebuild(value):
    if isinstance(value, dict) and _ADAPTER in value:
        module, qualname = value[_ADAPTER]
        cls = importlib.import_module(module)
        for name in qualname.split("."):
            cls = getattr(cls, name)
        adapter = cls.__new__(cls)   # its state is exactly loaded_keys and weights (see _describe)
        adapter.__dict__.update({name: _rebuild(v) for name, v in value["state"].items()})
        return adapter
    if isinstance(value, dict):
        return {k: _rebuild(v) for k, v in value.items()}
    if type(value) in (tuple, list):
        return type(value)(_rebuild(v) for v in value)
    return value


def attach_patches(diffusion_model, patches, tensors):
    """Helpers: hang rank 0's patch lists on the quantized GGMLTensors as GGUFModelPatcher does, and clear them on
    every other one (weights overwritten in place keep the previous load's list; F32/F16 weights arrive patched)."""
    from . import transport
    rebuilt = {key: _rebuild(value) for key, value in transport.insert_tensors(patches or {}, tensors).items()}
    for key, tensor in list(diffusion_model.named_parameters()) + list(diffusion_model.named_buffers()):
        if is_ggml_tensor(tensor):
            tensor.patches = [(rebuilt.pop(key), PREFIX + key)] if key in rebuilt else []
    if rebuilt:
        raise RuntimeError(f"rank 0 sent weight patches for {list(rebuilt)[:5]}, which are no GGUF weights here")


def effective_weight(model_patcher, key, weight, device):
    """Rank 0: what a helper needs for the GGMLTensor ``weight`` at ``key``: a quantized one as is (its raw blocks;
    its patches travel with ``patch_message``), an F32/F16 one patched as GGUFModelPatcher patches it in place (its
    backup then holds the original; GGUFModelPatcher.patch_weight_to_device has no return_weight)."""
    import comfy.float
    import comfy.lora
    import comfy.model_management
    ops = ops_module(model_patcher.model.diffusion_model)
    if key not in model_patcher.patches or key in model_patcher.backup or _is_quantized(ops, weight):
        return weight
    temp_weight = comfy.model_management.cast_to_device(weight, device, torch.float32, copy=True)
    patched = comfy.lora.calculate_weight(model_patcher.patches[key], temp_weight, key)
    return comfy.float.stochastic_rounding(patched, weight.dtype)


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
