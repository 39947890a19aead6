"""Sharded block weights: every rank keeps 1/N of each transformer block's parameters, and a block's full parameters
exist only while it runs.

A block's parameters, in ``named_parameters`` order, form one flat vector padded to a multiple of N; rank r keeps
the r-th piece. Before block i runs, the pieces of every rank are all-gathered into one of two alternating buffers
and the block's parameters become views of it; the gather of block i + 1 starts before block i's kernels are
queued, so the transfer overlaps its compute. After the block, the parameters it had before come back (a helper's
are meta placeholders). Everything outside the blocks (embedders, modulation, final layer: ~1% of FLUX) stays whole
on every rank.
"""
from typing import NamedTuple

import torch
import torch.distributed as dist

from .comm import all_gather_single

BLOCK_LISTS = (("double_blocks", "double_block"), ("single_blocks", "single_block"))


def blocks(diffusion_model):
    """((kind, index), module) of every transformer block, in the order the forward runs them."""
    for attribute, kind in BLOCK_LISTS:
        for index, module in enumerate(getattr(diffusion_model, attribute)):
            yield (kind, index), module


def block_prefix(key):
    kind, index = key
    return f"{kind}s.{index}."


def is_block_weight(state_key):
    return state_key.startswith(tuple(f"{attribute}." for attribute, _ in BLOCK_LISTS))


class Entry(NamedTuple):
    """One parameter of a block: its name, shape and place in the flat vector, and the module that holds it."""
    name: str
    shape: tuple
    offset: int
    numel: int
    holder: torch.nn.Module
    attribute: str


class BlockLayout:
    """Where each parameter of one block sits in the block's flat vector, and which submodule holds it."""

    def __init__(self, module, world_size, dtype=None):
        """``dtype``: the weights' dtype where the module only holds placeholders (a helper's meta model)."""
        self.entries = []
        offset = 0
        dtypes = set()
        for name, parameter in module.named_parameters():
            owner, _, attribute = name.rpartition(".")
            holder = module.get_submodule(owner) if owner else module
            self.entries.append(Entry(name, tuple(parameter.shape), offset, parameter.numel(), holder, attribute))
            offset += parameter.numel()
            dtypes.add(dtype or parameter.dtype)
        if len(dtypes) != 1:
            raise NotImplementedError(f"shard_weights needs one dtype per block; this block has {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise NotImplementedError(f"shard_weights supports bf16, fp16 and fp32 weights, not {self.dtype} (use "
                                      "replicated weights for quantized models)")
        self.numel = offset
        self.shard_numel = -(-offset // world_size)
        # ComfyUI's low-VRAM layers apply LoRA patches while casting their weights; gathered weights are already the
        # patched ones, so those functions are set aside while the block runs.
        self.patching_layers = [sub for sub in module.modules() if hasattr(sub, "weight_function")]

    def flatten(self, tensors, world_size, device):
        """The block's full flat vector (padded) from ``tensors`` (name -> tensor)."""
        flat = torch.zeros(self.shard_numel * world_size, dtype=self.dtype, device=device)
        for entry in self.entries:
            flat[entry.offset:entry.offset + entry.numel].copy_(tensors[entry.name].reshape(-1))
        return flat


class ShardedBlocks:
    """This rank's pieces of every block, and the gather that rebuilds one block at a time."""

    def __init__(self, diffusion_model, world_size, device, dtype=None, group=None):
        """``group``: where the blocks are gathered (None: the default group, shared with the attention exchange)."""
        self.world_size, self.device, self.group = world_size, device, group
        self.order = [key for key, _ in blocks(diffusion_model)]
        self.layouts = {key: BlockLayout(module, world_size, dtype) for key, module in blocks(diffusion_model)}
        # Blocks alternate between two buffers; each block's successor is prefetched while it runs.
        self.slot = {key: position % 2 for position, key in enumerate(self.order)}
        self.successor = dict(zip(self.order, self.order[1:]))
        self.dtype = self.layouts[self.order[0]].dtype if self.order else dtype
        self.shards = {}
        self._buffers = [None, None]
        self._pending = {}     # key -> (buffer, async gather)
        self._saved = {}       # key -> (the parameters, the LoRA functions) the block had before it was gathered

    # ----- holding --------------------------------------------------------------------------------------------
    def scatter_from_rank0(self, key, flat=None):
        """Collective: rank 0 passes the block's full flat vector, every rank keeps its piece."""
        layout = self.layouts[key]
        shard = torch.empty(layout.shard_numel, dtype=layout.dtype, device=self.device)
        pieces = list(flat.chunk(self.world_size)) if flat is not None else None
        dist.scatter(shard, pieces, src=0)
        self.shards[key] = shard

    def full_bytes(self):
        """What every block's full weights take (the replicated size)."""
        return sum(layout.numel * layout.dtype.itemsize for layout in self.layouts.values())

    def shard_bytes(self):
        return sum(s.numel() * s.element_size() for s in self.shards.values())

    # ----- running --------------------------------------------------------------------------------------------
    def _start(self, key):
        if key in self._pending:
            return
        layout = self.layouts[key]
        size = layout.shard_numel * self.world_size
        slot = self.slot[key]
        held = self._buffers[slot]
        if held is None or held.numel() < size or held.dtype != layout.dtype:
            held = self._buffers[slot] = torch.empty(size, dtype=layout.dtype, device=self.device)
        buffer = held[:size]
        self._pending[key] = (buffer, all_gather_single(buffer, self.shards[key], group=self.group, async_op=True))

    def start_call(self):
        """Before a model call: forget the gathers a call that failed midway left pending. A capture that raised
        leaves a captured gather that never ran; its eager rerun must issue that gather again, as every other rank
        does, or the ranks' collectives go out of step."""
        self._pending.clear()

    def enter(self, key):
        """Before block ``key`` runs: its full parameters in place, and the next block's gather under way."""
        self._start(key)
        buffer, gather = self._pending.pop(key)
        gather.wait()
        # Started here, the next gather runs during this block's projections and holds its attention exchange back
        # (one communicator runs collectives in issue order). Started after the exchange instead, it overlaps only
        # the block's later half, and that measured worse: 153.5 vs 140.7 ms per 1024² step (2×H200, session 4).
        if key in self.successor:
            self._start(self.successor[key])
        layout = self.layouts[key]
        parameters = []
        for entry in layout.entries:
            parameters.append(entry.holder._parameters[entry.attribute])
            entry.holder._parameters[entry.attribute] = buffer[entry.offset:entry.offset + entry.numel].view(entry.shape)
        functions = [(sub.weight_function, sub.bias_function) for sub in layout.patching_layers]
        for sub in layout.patching_layers:
            sub.weight_function, sub.bias_function = [], []
        self._saved[key] = parameters, functions

    def exit(self, key):
        layout = self.layouts[key]
        parameters, functions = self._saved.pop(key)
        for entry, parameter in zip(layout.entries, parameters):
            entry.holder._parameters[entry.attribute] = parameter
        for sub, (weight_function, bias_function) in zip(layout.patching_layers, functions):
            sub.weight_function, sub.bias_function = weight_function, bias_function
