"""The diffusion model's weights as ComfyUI computes them, sent once from rank 0 and rebuilt on every helper.

Rank 0 sends what ComfyUI would run with: LoRA and other weight patches applied, whether the model is fully loaded
(patched in place), partially loaded, or in dynamic-VRAM mode (never patched in place; each weight is computed with
``ModelPatcher.patch_weight_to_device(..., return_weight=True)``). A fingerprint of the model and its patches skips
the transfer when nothing changed.
"""
import importlib

import torch
import torch.distributed as dist

PREFIX = "diffusion_model."


def fingerprint(model_patcher):
    """Identifies the effective diffusion-model weights: the base model object and the patch set applied to it.
    (Object patches on the diffusion model never reach here: such calls run on one GPU, see multigpu.py.)"""
    return (id(model_patcher.model), str(model_patcher.patches_uuid))


def model_spec(model_patcher):
    """What a helper needs to build the same (empty) diffusion model class: module, class, constructor config."""
    base = model_patcher.model
    diffusion_model = base.diffusion_model
    cls = type(diffusion_model)
    return {
        "module": cls.__module__,
        "class": cls.__qualname__,
        "unet_config": dict(base.model_config.unet_config),
        "manual_cast_dtype": base.manual_cast_dtype,
    }


def effective_weight(model_patcher, key, device):
    import comfy.utils
    if key in model_patcher.patches and key not in model_patcher.backup:
        weight = model_patcher.patch_weight_to_device(key, device_to=device, return_weight=True)
    else:
        # Unpatched, or already patched in place for this very patcher (the backup holds the original).
        weight = comfy.utils.get_attr(model_patcher.model, key)
    if type(weight) not in (torch.Tensor, torch.nn.Parameter):
        raise NotImplementedError(f"weight '{key}' is a {type(weight).__name__}; quantized weight formats are not "
                                  "sent to helper GPUs yet")
    return weight


_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
           torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
_HEADER = 10  # dtype code, ndim, up to 8 dims


def weight_keys(model_patcher):
    return list(model_patcher.model.diffusion_model.state_dict(keep_vars=True).keys())


def send_weights(model_patcher, keys, device):
    """Rank 0: for every key, a small header (dtype, shape) then the effective weight itself. The shape travels
    because a patch may change it (e.g. a LoRA that widens img_in)."""
    for key in keys:
        weight = effective_weight(model_patcher, PREFIX + key, device).detach()
        header = torch.zeros(_HEADER, dtype=torch.int64)
        header[0], header[1] = _DTYPES.index(weight.dtype), weight.ndim
        header[2:2 + weight.ndim] = torch.tensor(weight.shape, dtype=torch.int64)
        dist.broadcast(header.to(device), src=0)
        dist.broadcast(_as_bytes(weight.to(device).contiguous()), src=0)


def _as_bytes(tensor):
    """Weights travel as raw bytes: gloo has no fp8 types, and bytes need no dtype on the wire."""
    return tensor.reshape(-1).view(torch.uint8)


def build_diffusion_model(spec, device):
    """Helpers: an empty diffusion model of rank 0's class and config, built with the operations ComfyUI picks."""
    import comfy.ops
    cls = getattr(importlib.import_module(spec["module"]), spec["class"])
    config = spec["unet_config"]
    operations = comfy.ops.pick_operations(config.get("dtype"), spec["manual_cast_dtype"], load_device=device)
    with torch.device("meta"):
        model = cls(**config, device="meta", operations=operations)
    return model.eval().requires_grad_(False)


def receive_weights(diffusion_model, keys, device):
    """Helpers: receive every weight straight into a freshly allocated parameter."""
    import comfy.utils
    header = torch.empty(_HEADER, dtype=torch.int64, device=device)
    for key in keys:
        dist.broadcast(header, src=0)
        meta = header.tolist()
        shape, dtype = meta[2:2 + meta[1]], _DTYPES[meta[0]]
        current = comfy.utils.get_attr(diffusion_model, key)
        if not current.is_meta and list(current.shape) == shape and current.dtype == dtype:
            dist.broadcast(_as_bytes(current.data), src=0)   # same layout as before: overwrite in place
            continue
        tensor = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(_as_bytes(tensor), src=0)
        comfy.utils.set_attr_param(diffusion_model, key, tensor)
    left = [name for name, t in list(diffusion_model.named_parameters()) + list(diffusion_model.named_buffers())
            if t.is_meta]
    if left:
        raise RuntimeError(f"rank 0 sent no value for {left[:5]}")
