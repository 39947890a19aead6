"""Moving one model call's arguments from rank 0 to the helpers.

The structure (dicts, lists, numbers, strings) goes as one pickled message over each helper's control connection;
every tensor in it is replaced by a slot and all tensors travel together as ONE byte buffer in one broadcast over the
process group (NCCL on GPUs), so a step costs one small message and one collective, never a pickled tensor.
"""
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorSlot:
    index: int


def extract_tensors(obj, tensors, _seen=None):
    """Returns ``obj`` with every tensor replaced by a TensorSlot; the tensors are appended to ``tensors``.
    A tensor that appears several times travels once (FLUX ControlNets repeat each residual over many blocks)."""
    seen = {} if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        if id(obj) not in seen:
            tensors.append(obj)
            seen[id(obj)] = TensorSlot(len(tensors) - 1)
        return seen[id(obj)]
    if isinstance(obj, dict):
        return {k: extract_tensors(v, tensors, seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(extract_tensors(v, tensors, seen) for v in obj)
    return obj


def insert_tensors(obj, tensors):
    if isinstance(obj, TensorSlot):
        return tensors[obj.index]
    if isinstance(obj, dict):
        return {k: insert_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(insert_tensors(v, tensors) for v in obj)
    return obj


_ALIGN = 16  # every tensor starts 16-byte aligned inside the buffer, so a byte view can become any dtype


def layout(tensors):
    """What a receiver needs to cut the broadcast buffer: (shape, dtype) per tensor, in order."""
    return [(tuple(t.shape), t.dtype) for t in tensors]


def _span(shape, dtype):
    nbytes = dtype.itemsize
    for size in shape:
        nbytes *= size
    return nbytes, -(-nbytes // _ALIGN) * _ALIGN


def send_tensors(tensors, device):
    """Rank 0: broadcast ``tensors`` as one buffer."""
    if not tensors:
        return
    spans = [_span(t.shape, t.dtype) for t in tensors]
    buffer = torch.empty(sum(span for _, span in spans), dtype=torch.uint8, device=device)
    offset = 0
    for t, (nbytes, span) in zip(tensors, spans):
        if nbytes:
            buffer[offset:offset + nbytes].view(t.dtype).copy_(t.detach().reshape(-1), non_blocking=True)
        offset += span
    dist.broadcast(buffer, src=0)


def receive_tensors(tensor_layout, device):
    """Helpers: receive the buffer of ``send_tensors`` and cut it into tensors as ``layout`` describes them."""
    if not tensor_layout:
        return []
    spans = [_span(shape, dtype) for shape, dtype in tensor_layout]
    buffer = torch.empty(sum(span for _, span in spans), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    tensors, offset = [], 0
    for (shape, dtype), (nbytes, span) in zip(tensor_layout, spans):
        tensors.append(buffer[offset:offset + nbytes].view(dtype).view(shape))
        offset += span
    return tensors
