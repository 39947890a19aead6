"""Sharded block weights: every rank keeps 1/N of each transformer block's parameters, and a block's full parameters
exist only while it runs.

A block's parameters, in ``named_parameters`` order, form one flat vector padded to a multiple of N; rank r keeps
the r-th piece. Before block i runs, the pieces of every rank are gathered into one of two alternating buffers and
the block's parameters become views of it; the gather of block i + 1 starts before block i's kernels are queued, so
the transfer overlaps its compute. After the block, the parameters it had before come back (a helper's are meta
placeholders). Everything outside the blocks (embedders, modulation, final layer: ~1% of FLUX) stays whole on every
rank.

Where the ranks share a machine, every rank's pieces live in peer memory (parallel/peer_memory.py) and a gather is
copies from the peers' pieces on a stream of its own: on GPUs the copy engine moves them, so the gather takes no SMs
and no communicator. Through NCCL's all-gather instead, every gather queues on the attention's communicator and holds
the next exchange back, and a second communicator for the gathers cannot be aborted after a helper dies
(docs/benchmarks.md). Ranks on several machines (Ray) all-gather.
"""
from typing import NamedTuple

import torch
import torch.distributed as dist

from .comm import all_gather_single
from .peer_memory import PeerMemory, aligned, settle


def check_shardable(blocks):
    """Raises NotImplementedError naming why these blocks cannot be sharded; nothing is allocated or moved.
    ``blocks``: ((attribute, index), module) of every transformer block (the model's adapter lists them)."""
    for _, module in blocks:
        BlockLayout(module, 1)


def block_prefix(key):
    """The state-dict prefix of block ``key`` = (the model's attribute holding the block list, index)."""
    attribute, index = key
    return f"{attribute}.{index}."


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


class _CopiesDone:
    """A gather by copies, as the all-gather's work handle: ``wait`` orders the current stream after it."""

    def __init__(self, event=None, device=None):
        self.event, self.device = event, device

    def wait(self):
        if self.event is not None:
            torch.cuda.current_stream(self.device).wait_event(self.event)


class ShardedBlocks:
    """This rank's pieces of every block, and the gather that rebuilds one block at a time."""

    def __init__(self, blocks, world_size, device, dtype=None, rank=0, pull=True):
        """``blocks``: ((attribute, index), module) of every transformer block in run order. ``pull``: gather by
        copies from the peers' pieces (ranks on one machine); otherwise all-gather over the default group."""
        self.world_size, self.device, self.rank, self.pull = world_size, device, rank, pull
        blocks = list(blocks)
        self.order = [key for key, _ in blocks]
        self.layouts = {key: BlockLayout(module, world_size, dtype) for key, module in blocks}
        # Blocks alternate between two buffers; each block's successor is prefetched while it runs.
        self.slot = {key: position % 2 for position, key in enumerate(self.order)}
        self.successor = dict(zip(self.order, self.order[1:]))
        self.dtype = self.layouts[self.order[0]].dtype if self.order else dtype
        self.offsets, end = {}, 0   # where each block's piece starts in this rank's peer memory
        for key in self.order:
            self.offsets[key] = end
            end += aligned(self.layouts[key].shard_numel * self.layouts[key].dtype.itemsize)
        self._pieces_bytes = end
        self.pieces = None     # PeerMemory, mapped at the first scatter (a point every rank reaches together)
        self._piece_views = {}  # key -> every rank's piece, as tensors of this process
        self.shards = {}
        self._stream = torch.cuda.Stream(device) if pull and device.type == "cuda" else None
        # Peers' pieces first, starting after this rank, so that ranks copy from different peers at once.
        self._copy_order = [(rank + step) % world_size for step in range(1, world_size + 1)]
        self._buffers = [None, None]
        self._pending = {}     # key -> (buffer, gather handle)
        self._saved = {}       # key -> (the parameters, the LoRA functions) the block had before it was gathered

    # ----- holding --------------------------------------------------------------------------------------------
    def scatter_from_rank0(self, key, flat=None):
        """Collective: rank 0 passes the block's full flat vector, every rank keeps its piece."""
        layout = self.layouts[key]
        if self.pull and self.pieces is None:
            self.pieces = PeerMemory(self._pieces_bytes, self.device, None, self.rank, self.world_size)
            self._piece_views = {
                k: [self.pieces.tensor(r, self.layouts[k].dtype, (self.layouts[k].shard_numel,), self.offsets[k])
                    for r in range(self.world_size)] for k in self.order}
        # Received into torch's memory even where the piece lives in peer memory: the communicator may record the
        # stream on its output, which torch's cudaMallocAsync backend refuses for memory it did not allocate.
        shard = torch.empty(layout.shard_numel, dtype=layout.dtype, device=self.device)
        pieces = list(flat.chunk(self.world_size)) if flat is not None else None
        dist.scatter(shard, pieces, src=0)
        if self.pull:
            shard = self._piece_views[key][self.rank].copy_(shard)
        self.shards[key] = shard

    def publish(self):
        """Collective, after the last scatter: every rank's pieces are in place before any peer copies them."""
        if self.pull:
            settle(self.device)

    def close(self):
        """Collective (a new sync replaces these pieces): frees the peer memory once no rank can be copying it."""
        if self.pieces is not None:
            self.pieces.close()
        self.release()

    def release(self):
        """Not collective (the group is over). Synchronizes the device: never while a kernel may be stuck."""
        if self.pieces is not None:
            self.pieces.release()
        self.pieces, self._piece_views, self.shards = None, {}, {}

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
        if self.pull:
            self._pending[key] = (buffer, self._copy_pieces(key, buffer))
        else:
            self._pending[key] = (buffer, all_gather_single(buffer, self.shards[key], async_op=True))

    def _copy_pieces(self, key, buffer):
        """The gather as copies (``_copy_order``) on the gather stream. That stream first waits for what is queued
        now: the block that used ``buffer`` before."""
        numel = self.layouts[key].shard_numel
        views = self._piece_views[key]
        if self._stream is None:
            for rank in self._copy_order:
                buffer[rank * numel:(rank + 1) * numel].copy_(views[rank])
            return _CopiesDone()
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            for rank in self._copy_order:
                buffer[rank * numel:(rank + 1) * numel].copy_(views[rank], non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        return _CopiesDone(done, self.device)

    def start_call(self):
        """Before a model call: forget the gathers a call that failed midway left pending. A capture that raised
        leaves a captured gather that never ran; its eager rerun must issue that gather again, as every other rank
        does, or the ranks' collectives go out of step."""
        if self._pending and self._stream is not None:
            # Copies still queued may write into a buffer that is about to be replaced or freed.
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
        self._pending.clear()

    def enter(self, key):
        """Before block ``key`` runs: its full parameters in place, and the next block's gather under way."""
        self._start(key)
        buffer, gather = self._pending.pop(key)
        gather.wait()
        # Started here, the next gather runs during the whole block; started after the block's attention it would
        # overlap only the block's later half, which is slower (docs/benchmarks.md, "What each lever bought").
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
