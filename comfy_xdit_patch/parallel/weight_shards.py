"""Sharded block weights: every rank keeps 1/N of each transformer block's parameters, and a block's full parameters
exist only while it runs.

A block's parameters, in ``named_parameters`` order, form one flat vector padded to a multiple of N; rank r keeps
the r-th piece. Before block i runs, the pieces of every rank are all-gathered into one of two alternating buffers
and the block's parameters become views of it; the gather of block i + 1 starts before block i's kernels are
queued, so the transfer overlaps its compute. After the block, the parameters it had before come back (a helper's
are meta placeholders). Everything outside the blocks (embedders, modulation, final layer: ~1% of FLUX) stays whole
on every rank.
"""
import torch
import torch.distributed as dist

from .sharding import _all_gather_single

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


class BlockLayout:
    """Where each parameter of one block sits in the block's flat vector."""

    def __init__(self, module, world_size, dtype=None):
        """``dtype``: the weights' dtype where the module only holds placeholders (a helper's meta model)."""
        self.entries = []   # (name, shape, offset, numel)
        offset = 0
        dtypes = set()
        for name, parameter in module.named_parameters():
            self.entries.append((name, tuple(parameter.shape), offset, parameter.numel()))
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

    def flatten(self, tensors, world_size, device):
        """The block's full flat vector (padded) from ``tensors`` (name -> tensor)."""
        flat = torch.zeros(self.shard_numel * world_size, dtype=self.dtype, device=device)
        for name, shape, offset, numel in self.entries:
            flat[offset:offset + numel].copy_(tensors[name].reshape(-1))
        return flat


class ShardedBlocks:
    """This rank's pieces of every block, and the gather that rebuilds one block at a time."""

    def __init__(self, diffusion_model, rank, world_size, device, group=None, dtype=None):
        self.rank, self.world_size, self.device, self.group = rank, world_size, device, group
        self.modules = dict(blocks(diffusion_model))
        self.order = list(self.modules)
        self.layouts = {key: BlockLayout(module, world_size, dtype) for key, module in self.modules.items()}
        self.dtype = self.layouts[self.order[0]].dtype if self.order else dtype
        self.shards = {}
        self._buffers = [None, None]
        self._pending = {}     # key -> (buffer, async work or None)
        self._saved = {}       # key -> the parameters the block had before it was gathered

    # ----- holding --------------------------------------------------------------------------------------------
    def scatter_from_rank0(self, key, flat=None):
        """Collective: rank 0 passes the block's full flat vector, every rank keeps its piece."""
        layout = self.layouts[key]
        shard = torch.empty(layout.shard_numel, dtype=layout.dtype, device=self.device)
        pieces = list(flat.chunk(self.world_size)) if flat is not None else None
        dist.scatter(shard, pieces, src=0, group=self.group)
        self.shards[key] = shard

    def full_bytes(self):
        """What every block's full weights take (the replicated size)."""
        return sum(layout.numel * layout.dtype.itemsize for layout in self.layouts.values())

    def shard_bytes(self):
        return sum(s.numel() * s.element_size() for s in self.shards.values())

    # ----- running --------------------------------------------------------------------------------------------
    def _buffer(self, key):
        slot = self.order.index(key) % 2
        layout = self.layouts[key]
        size = layout.shard_numel * self.world_size
        buffer = self._buffers[slot]
        if buffer is None or buffer.numel() < size or buffer.dtype != layout.dtype:
            buffer = self._buffers[slot] = torch.empty(max(size, 0 if buffer is None else buffer.numel()),
                                                       dtype=layout.dtype, device=self.device)
        return buffer[:size]

    def _start(self, key):
        if key in self._pending:
            return
        buffer = self._buffer(key)
        work = _all_gather_single(buffer, self.shards[key], group=self.group, async_op=True)
        self._pending[key] = (buffer, work)

    def enter(self, key):
        """Before block ``key`` runs: its full parameters in place, and the next block's gather under way."""
        self._start(key)
        buffer, work = self._pending.pop(key)
        if work is not None:
            work.wait()
        position = self.order.index(key)
        if position + 1 < len(self.order):
            self._start(self.order[position + 1])
        module = self.modules[key]
        saved = {}
        for name, shape, offset, numel in self.layouts[key].entries:
            owner, _, attribute = name.rpartition(".")
            holder = module.get_submodule(owner) if owner else module
            saved[name] = holder._parameters[attribute]
            holder._parameters[attribute] = buffer[offset:offset + numel].view(shape)
        # ComfyUI's low-VRAM layers apply LoRA patches while casting their weights; the gathered ones are already
        # the patched weights.
        for sub in module.modules():
            if hasattr(sub, "weight_function"):
                saved[(sub, "functions")] = (sub.weight_function, sub.bias_function)
                sub.weight_function, sub.bias_function = [], []
        self._saved[key] = saved

    def exit(self, key):
        module = self.modules[key]
        for name, value in self._saved.pop(key).items():
            if isinstance(name, tuple):
                name[0].weight_function, name[0].bias_function = value
                continue
            owner, _, attribute = name.rpartition(".")
            holder = module.get_submodule(owner) if owner else module
            holder._parameters[attribute] = value

    def finish(self):
        """After a model call: no gather left in flight (the next call starts from the first block)."""
        for buffer, work in self._pending.values():
            if work is not None:
                work.wait()
        self._pending.clear()
