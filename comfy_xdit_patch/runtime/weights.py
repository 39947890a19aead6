"""The diffusion model's weights as ComfyUI computes them, sent once from rank 0 and rebuilt on every helper.

Rank 0 sends what ComfyUI would run with: LoRA and other weight patches applied, whether the model is fully loaded
(patched in place), partially loaded, or in dynamic-VRAM mode (never patched in place; each weight is computed with
``ModelPatcher.patch_weight_to_device(..., return_weight=True)``). A fingerprint of the model and its patches skips
the transfer when nothing changed.

Quantized checkpoints (ComfyUI's "scaled fp8" files and its per-layer 'comfy_quant' formats) load with ComfyUI's
mixed-precision operations: each quantized weight is a QuantizedTensor. Those travel in ComfyUI's own state-dict form
(the fp8 data under '<layer>.weight', its scale under '<layer>.weight_scale', the format under '<layer>.comfy_quant')
and each helper loads them through the layer's own loader, so it computes with the same quantized layers as rank 0.
GGUF checkpoints (ComfyUI-GGUF's GGMLTensors) travel as their raw blocks: see gguf_weights.
"""
import importlib
import types

import torch
import torch.distributed as dist

from . import gguf_weights

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
    from ..patches import ANY_MODEL, adapter_for
    return {
        "adapter": (adapter_for(diffusion_model) or ANY_MODEL).name,   # the helpers install the same hooks
        "module": cls.__module__,
        "class": cls.__qualname__,
        "unet_config": dict(base.model_config.unet_config),
        "manual_cast_dtype": base.manual_cast_dtype,
        # e.g. {"mixed_ops": True} for a scaled fp8 checkpoint: ComfyUI then builds the model with mixed-precision ops.
        "quant_config": base.model_config.quant_config,
        # UNETLoader's fp8_e4m3fn_fast: rank 0 then computes with fp8 matmuls, and so must the helpers.
        "fp8_optimizations": base.model_config.optimizations.get("fp8", False),
        # A GGUF model (ComfyUI-GGUF): where its ops live, its settings, each tensor's quantization type and shape.
        "gguf": gguf_weights.spec(model_patcher),
    }


def check_transferable(model_patcher):
    """Raises NotImplementedError naming the first weight the helpers cannot receive (an unknown tensor type, a dtype
    the wire does not carry), before anything is sent: a transfer that stopped halfway would leave the helpers out of
    step. (A GGUF patch they cannot rebuild is found by gguf_weights.patch_message, also before any transfer.)"""
    for key, value in _state(model_patcher.model.diffusion_model).items():
        if not isinstance(value, torch.Tensor):
            continue
        _check_format(key, value)
        if value.dtype not in _DTYPES:
            raise NotImplementedError(f"weight '{key}' is stored as {value.dtype}, which is not sent to helper GPUs "
                                      "yet")


def effective_weight(model_patcher, key, device):
    import comfy.utils
    current = comfy.utils.get_attr(model_patcher.model, key)
    if gguf_weights.is_ggml_tensor(current):
        return gguf_weights.effective_weight(model_patcher, key, current, device)
    if key in model_patcher.patches and key not in model_patcher.backup:
        weight = model_patcher.patch_weight_to_device(key, device_to=device, return_weight=True)
    else:
        # Unpatched, or already patched in place for this very patcher (the backup holds the original).
        weight = current
    _check_format(key, weight)
    return weight


def _check_format(key, weight):
    """Plain tensors, ComfyUI's QuantizedTensors and ComfyUI-GGUF's tensors travel; any other tensor type does not."""
    from comfy.quant_ops import QuantizedTensor
    if type(weight) not in (torch.Tensor, torch.nn.Parameter, QuantizedTensor) and \
            not gguf_weights.is_ggml_tensor(weight):
        raise NotImplementedError(f"weight '{key}' is a {type(weight).__name__}; this weight format is not sent to "
                                  "helper GPUs yet")


_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
           torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
_HEADER = 10  # dtype code, ndim, up to 8 dims


def _state(diffusion_model):
    """The model's state_dict(keep_vars=True), except that ComfyUI-GGUF's layers write placeholders there (on meta,
    plus a 'temp.weight' for memory estimates): for those the tensors the layers really hold, in state_dict order."""
    state = diffusion_model.state_dict(keep_vars=True)
    if gguf_weights.ops_module(diffusion_model) is None:
        return state
    held = dict(diffusion_model.named_parameters())
    held.update(diffusion_model.named_buffers())
    return {key: held[key] for key in state if key in held}


def weight_keys(model_patcher):
    return list(_state(model_patcher.model.diffusion_model).keys())


def effective_state(model_patcher, keys, device):
    """(key, tensor) for every state-dict key, with patches applied. A quantized weight (a QuantizedTensor, re-quantized
    by ComfyUI when a LoRA patches it) yields the tensors its own state_dict names: its data under the key itself and
    its scales right after it ('.weight_scale', ...), the order ComfyUI's quantized layers write them in. Keys that are
    no tensor of the model, a quantized layer's '.comfy_quant' format record, come from the model's state_dict."""
    from comfy.quant_ops import QuantizedTensor
    diffusion_model = model_patcher.model.diffusion_model
    tensors = {name for name, _ in diffusion_model.named_parameters()} | \
        {name for name, _ in diffusion_model.named_buffers()}
    stored = None
    parts = {}
    for key in keys:
        if key in parts:
            yield key, parts.pop(key)
        elif key in tensors:
            weight = effective_weight(model_patcher, PREFIX + key, device).detach()
            if isinstance(weight, QuantizedTensor):
                parts = weight.state_dict(key)
                weight = parts.pop(key)
            elif gguf_weights.is_ggml_tensor(weight):
                weight = gguf_weights.storage(weight)   # its raw blocks; type and shape went in the model spec
            yield key, weight
        else:
            stored = diffusion_model.state_dict(keep_vars=True) if stored is None else stored
            yield key, stored[key]


class WeightDigest:
    """A position-sensitive checksum of the bytes a weight sync moved, computed where they are (on the GPU): rank 0
    over the weights it sent, each helper over what it received; compared once per sync, so a transfer that changed
    a weight's bytes is caught. Partial sums stay on the device until ``value`` is read: the sync's broadcasts are
    never held up by it. Not cryptographic: the peers are authenticated; this guards the transfer itself."""
    _MODULUS = (1 << 61) - 1
    _CHUNK = 1 << 20   # int32 words per partial sum: 2^31 * 251 * 2^20 stays within int64

    def __init__(self):
        self._sums = []
        self._weights = {}

    def add(self, data):
        data = data.reshape(-1)
        words = data.view(torch.int32) if data.numel() % 4 == 0 and data.data_ptr() % 4 == 0 else data
        for start in range(0, words.numel(), self._CHUNK):
            part = words[start:start + self._CHUNK].to(torch.int64)
            self._sums.append((part * self._position_weights(part.numel(), part.device)).sum())

    def _position_weights(self, count, device):
        key = (count, str(device))
        if key not in self._weights:
            self._weights[key] = torch.arange(1, count + 1, device=device, dtype=torch.int64).remainder_(251).add_(1)
        return self._weights[key]

    @property
    def value(self):
        total = 0
        for partial in (torch.stack(self._sums).tolist() if self._sums else ()):
            total = (total * 1000003 + partial) % self._MODULUS
        return total


def _broadcast_bytes(data, digest):
    dist.broadcast(data, src=0)
    if digest is not None:
        digest.add(data)


def send_weights(model_patcher, keys, device, digest=None):
    """Rank 0: for every key, a small header (dtype, shape) then the effective weight itself. The shape travels
    because a patch may change it (e.g. a LoRA that widens img_in). ``digest`` (a WeightDigest) adds what was sent."""
    for key, weight in effective_state(model_patcher, keys, device):
        header = torch.zeros(_HEADER, dtype=torch.int64)
        header[0], header[1] = _DTYPES.index(weight.dtype), weight.ndim
        header[2:2 + weight.ndim] = torch.tensor(weight.shape, dtype=torch.int64)
        dist.broadcast(header.to(device), src=0)
        _broadcast_bytes(_as_bytes(weight.to(device).contiguous()), digest)


def scatter_block_shards(model_patcher, shards, device):
    """Rank 0: every block's effective weights (patches applied), one block at a time, as the flat vector of
    ``shards``' layout; each rank keeps its piece."""
    from ..parallel.weight_shards import block_prefix
    for key in shards.order:
        prefix = PREFIX + block_prefix(key)
        layout = shards.layouts[key]
        tensors = {entry.name: effective_weight(model_patcher, prefix + entry.name, device).detach()
                   for entry in layout.entries}
        shards.scatter_from_rank0(key, layout.flatten(tensors, shards.world_size, device))
    shards.publish()


def receive_block_shards(shards):
    """Helpers: this rank's piece of every block."""
    for key in shards.order:
        shards.scatter_from_rank0(key)
    shards.publish()


def _as_bytes(tensor):
    """Weights travel as raw bytes: gloo has no fp8 types, and bytes need no dtype on the wire."""
    return tensor.reshape(-1).view(torch.uint8)


def build_diffusion_model(spec, device):
    """Helpers: an empty diffusion model of rank 0's class and config, built with the operations ComfyUI picks."""
    import comfy.ops
    cls = getattr(importlib.import_module(spec["module"]), spec["class"])
    config = spec["unet_config"]
    # pick_operations reads only quant_config from a model config: with one it returns ComfyUI's mixed-precision
    # operations, as rank 0's loader did. Without them the helper would build plain layers for quantized weights.
    operations = comfy.ops.pick_operations(config.get("dtype"), spec["manual_cast_dtype"], load_device=device,
                                           fp8_optimizations=spec["fp8_optimizations"],
                                           model_config=types.SimpleNamespace(quant_config=spec["quant_config"]))
    if spec.get("gguf"):
        operations = gguf_weights.operations(spec["gguf"])   # rank 0's loader passed them as custom_operations
    # Mixed-precision layers create their weights only when loaded, on the device they were built for: a quantized
    # model is built on the real device (only biases and norms are allocated now), any other model on meta.
    build_device = device if spec["quant_config"] else "meta"
    with torch.device("meta"):
        model = cls(**config, device=build_device, operations=operations)
    return model.eval().requires_grad_(False)


def receive_weights(diffusion_model, keys, device, spec=None, sharded=None, digest=None):
    """Helpers: receive every weight straight into a freshly allocated parameter. A quantized layer's tensors are
    gathered and loaded through the layer itself once the last of them has arrived; a GGUF tensor's raw blocks become
    the GGMLTensor the model spec describes."""
    import comfy.utils
    gguf_spec = (spec or {}).get("gguf")
    quantized_layers = {key.rpartition(".")[0] for key in keys if key.endswith(".comfy_quant")}
    layer_state = {}
    header = torch.empty(_HEADER, dtype=torch.int64, device=device)
    for index, key in enumerate(keys):
        dist.broadcast(header, src=0)
        meta = header.tolist()
        shape, dtype = meta[2:2 + meta[1]], _DTYPES[meta[0]]
        layer, _, name = key.rpartition(".")
        if layer in quantized_layers:
            layer_state[name] = torch.empty(shape, dtype=dtype, device=device)
            _broadcast_bytes(_as_bytes(layer_state[name]), digest)
            if name == "comfy_quant":   # the layer's format record, JSON bytes that ComfyUI's loader reads on the host
                layer_state[name] = layer_state[name].cpu()
            if index + 1 == len(keys) or keys[index + 1].rpartition(".")[0] != layer:
                _load_quantized_layer(comfy.utils.get_attr(diffusion_model, layer), layer_state)
                layer_state = {}
            continue
        # A mixed-precision layer without quantization (e.g. img_in of a scaled fp8 model) has no weight until set.
        owner = comfy.utils.get_attr(diffusion_model, layer) if layer else diffusion_model
        current = getattr(owner, name, None)
        if gguf_spec and key in gguf_spec["tensors"]:
            raw = gguf_weights.storage(current) if gguf_weights.is_ggml_tensor(current) else None
            if raw is not None and list(raw.shape) == shape and raw.dtype == dtype:
                _broadcast_bytes(_as_bytes(raw), digest)   # same layout as before: overwrite the raw blocks in place
                continue
            raw = torch.empty(shape, dtype=dtype, device=device)
            _broadcast_bytes(_as_bytes(raw), digest)
            comfy.utils.set_attr_param(diffusion_model, key, gguf_weights.wrap(raw, gguf_spec, key))
            continue
        if current is not None and not current.is_meta and list(current.shape) == shape and current.dtype == dtype:
            _broadcast_bytes(_as_bytes(current.data), digest)   # same layout as before: overwrite in place
            continue
        tensor = torch.empty(shape, dtype=dtype, device=device)
        _broadcast_bytes(_as_bytes(tensor), digest)
        comfy.utils.set_attr_param(diffusion_model, key, tensor)
    left = [name for name, t in list(diffusion_model.named_parameters()) + list(diffusion_model.named_buffers())
            if t.is_meta and not (sharded and sharded(name))]
    if left:
        raise RuntimeError(f"rank 0 sent no value for {left[:5]}")


def _load_quantized_layer(module, state):
    """ComfyUI's own loader for the layer (mixed-precision ops' _load_from_state_dict) rebuilds the QuantizedTensor
    from its data, scales and 'comfy_quant' format and sets the layer's quantization attributes, exactly as loading
    the checkpoint did on rank 0. assign=True: the new tensors replace the layer's (meta or previous) ones."""
    module.load_state_dict(state, strict=True, assign=True)
