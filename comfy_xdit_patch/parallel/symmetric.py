"""The Ulysses exchange over peer memory, for a Ulysses group whose GPUs share one host.

NCCL's all-to-all wants its data packed per destination and hands it back packed, so a block pays a pass over q, k and
v before it and after it, and one more each way for the output. On 2×H200 at 1024² a block spent ≈290 µs in pack,
all-to-all and unpack, while its 28 MB cross the link in ≈90 µs at the ≈350 GB/s that a copy engine reaches
(tools/symm_exchange_probe.py, docs/benchmarks.md). Here every rank maps its peers' receive buffers
(parallel/peer_memory.py): one kernel per destination reads q, k, v where ComfyUI left them (any strides) and writes them straight into
the layout the attention reads on that GPU, and the output goes back the same way into the token-major layout
ComfyUI's blocks expect; the part that stays on this GPU is copied on a side stream beside the remote ones (−19 µs a
block, sixth session). A barrier after each direction says the data is there. Measured: 123 µs a block at 1024²
(395 µs at 2048², against 916), the step 1.56× → 1.69× (1.80× → 1.90×), the output unchanged.

The barrier is our own small kernel for one reason: a peer that dies leaves it spinning, and rank 0 (ComfyUI's own
process) must get its stream back to finish the image on one GPU. While it waits it also reads an abort flag of its
own process kept in pinned host memory; ``abort`` sets that flag with a plain CPU store, so freeing the stream needs
no CUDA call at all (a kernel launched to free it may itself wait behind the spinning one under CUDA's lazy loading,
and a copy on a pooled stream may queue behind NCCL work that waits for it).

Receive buffers are kept per shape for the life of the group: freeing them synchronizes the device, and every member
must map at the same calls, which a rank replaying a CUDA graph (no Python runs) would not do. At 1024² a shape takes
56 MB per GPU, at 2048² 208 MB. ``release`` frees them with the group.
"""
import contextlib
import importlib.util
import logging

import torch
import torch.distributed as dist

from .peer_memory import PeerMemory, aligned

log = logging.getLogger(__name__)

_copy_kernel = _barrier_kernel = None   # compiled by _kernels() on first use
# Every abort flag this process made, never freed: captured graphs and barriers still queued after a failure hold its
# address, and a freed pinned block goes back to torch's cache for the next user (a few bytes a group).
_abort_flags = []


def unavailable_reason():
    """Why this process cannot run the exchange (it needs Triton, which comes with torch's CUDA wheels), or None."""
    try:
        if importlib.util.find_spec("triton") is not None:
            return None
    except ImportError:
        pass
    return "triton is not installed"


def _kernels():
    """Compiled on first use, so that importing the plugin never needs Triton."""
    global _copy_kernel, _barrier_kernel
    if _copy_kernel is not None:
        return _copy_kernel, _barrier_kernel
    import triton
    import triton.language as tl

    @triton.jit
    def copy_heads(src, dst, length, heads, s_b, s_h, s_l, d_b, d_h, d_l, DIM: tl.constexpr, BLOCK: tl.constexpr):
        """dst[b, h, l, :] = src[b, h, l, :] for l < length; the last dimension is contiguous on both sides. dst may
        be a peer GPU's memory: the stores then cross the link."""
        row = tl.program_id(1).to(tl.int64)
        b, h = row // heads, row % heads
        tokens = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, DIM)
        keep = (tokens < length)[:, None]
        rows = tokens.to(tl.int64)[:, None]
        values = tl.load(src + b * s_b + h * s_h + rows * s_l + cols[None, :], mask=keep)
        tl.store(dst + b * d_b + h * d_h + rows * d_l + cols[None, :], values, mask=keep)

    @triton.jit
    def barrier(epoch, own_flags, peer_flags, abort_address, member, SIZE: tl.constexpr):
        """Every member raises its epoch in each peer's flag slot for it, then waits until every peer has raised it
        in ours, or until the abort flag (host memory, read only while waiting) is set. The epoch lives on the
        device, so a replayed CUDA graph counts on."""
        now = tl.load(epoch) + 1
        tl.store(epoch, now)
        abort = abort_address.to(tl.pointer_type(tl.int32))
        for peer in tl.static_range(SIZE):
            if peer != member:
                slot = tl.load(peer_flags + peer).to(tl.pointer_type(tl.int32))
                tl.atomic_xchg(slot, now, sem="release", scope="sys")
        for peer in tl.static_range(SIZE):
            if peer != member:
                seen = tl.atomic_add(own_flags + peer, 0, sem="acquire", scope="sys")
                stop = seen * 0   # an int32 like the flag it will hold
                while (seen < now) & (stop == 0):
                    stop = tl.load(abort, volatile=True)
                    seen = tl.atomic_add(own_flags + peer, 0, sem="acquire", scope="sys")

    _copy_kernel, _barrier_kernel = copy_heads, barrier
    return _copy_kernel, _barrier_kernel


def _copy(src, dst):
    """``dst[...] = src`` for two (B, H, L, D) tensors whose last dimension is contiguous."""
    copy_heads, _ = _kernels()
    if src.stride(-1) != 1:
        src = src.contiguous()
    batch, heads, length, dim = src.shape
    block = max(16, min(64, 8192 // dim))
    grid = ((length + block - 1) // block, batch * heads)
    copy_heads[grid](src, dst, length, heads, *src.stride()[:3], *dst.stride()[:3], DIM=dim, BLOCK=block)


class SymmetricUlysses:
    """The two all-to-alls of Ulysses attention for one Ulysses group of GPUs on one host (``ranks``, this process
    being ``ranks[member]``). Collective over ``group`` (the Ulysses group): its members construct one at the same
    point, and call ``scatter_heads`` and ``gather_heads`` for the same shapes in the same order."""

    def __init__(self, group, ranks, member, device):
        self.size, self.member, self.device, self.group = len(ranks), member, device, group
        self.epoch = torch.zeros(1, dtype=torch.int32, device=device)
        # Pinned: the device reads it through its host address (unified addressing), the host writes it directly.
        self.abort_flag = torch.zeros(1, dtype=torch.int32, pin_memory=True)
        _abort_flags.append(self.abort_flag)
        self._flags = PeerMemory(4 * self.size, device, group, member, self.size)
        self._flags.tensor(member, torch.int32, (self.size,)).zero_()
        # Our slot in every peer's flags (peer p reads it as own_flags[member]).
        self._peer_flags = torch.tensor([self._flags.address(p, 4 * member) for p in range(self.size)],
                                        dtype=torch.int64, device=device)
        self._own_flags = self._flags.tensor(member, torch.int32, (self.size,))
        self._shapes = {}   # key -> (memory, [received q/k/v by member], [output by member])
        self._side = torch.cuda.Stream(device)
        torch.cuda.synchronize(device)
        with torch.cuda.device(device):   # NCCL's barrier runs on the current CUDA device
            dist.barrier(group=group)     # every member's flags are zero before anyone raises one

    def _barrier(self):
        _, barrier = _kernels()
        barrier[(1,)](self.epoch, self._own_flags, self._peer_flags, self.abort_flag.data_ptr(), self.member,
                      SIZE=self.size, num_warps=1)

    def _buffers(self, batch, heads, dim, seq_lens, dtype):
        """Collective on first use of a shape: the receive buffers of every member, mapped into this process."""
        key = (batch, heads, dim, tuple(seq_lens), dtype)
        if key not in self._shapes:   # a shape's first call is eager on every rank (step_graphs.py)
            self._shapes[key] = self._allocate(batch, heads, dim, seq_lens, dtype)
        return self._shapes[key]

    def _allocate(self, batch, heads, dim, seq_lens, dtype):
        local_heads, total, longest = heads // self.size, sum(seq_lens), max(seq_lens)
        gathered = (3, batch, local_heads, total, dim)
        output = (batch, longest, heads, dim)
        output_offset = aligned(3 * batch * local_heads * total * dim * dtype.itemsize)
        memory = PeerMemory(output_offset + batch * longest * heads * dim * dtype.itemsize, self.device, self.group,
                            self.member, self.size)
        received = [memory.tensor(p, dtype, gathered) for p in range(self.size)]
        outputs = [memory.tensor(p, dtype, output, output_offset) for p in range(self.size)]
        return memory, received, outputs

    def _each_destination(self):
        """The members in the order their copies are queued, each with the stream context to queue them in: the
        peers (over the link) on the current stream, this member's own part (local memory only) last, on a side
        stream beside them. Without a side stream (Triton's interpreter on CPU) everything goes on one."""
        if self._side is None:
            for member in range(self.size):
                yield member, contextlib.nullcontext()
            return
        main = torch.cuda.current_stream(self.device)
        self._side.wait_stream(main)
        for peer in range(self.size):
            if peer != self.member:
                yield peer, contextlib.nullcontext()
        yield self.member, torch.cuda.stream(self._side)
        main.wait_stream(self._side)

    def scatter_heads(self, q, k, v, seq_lens):
        """q, k, v: (B, H, L_member, D). Returns (3, B, H / n, sum(seq_lens), D): this member's heads over the whole
        sequence, members' tokens in member order (as parallel/comm.py's all-to-all returns them)."""
        batch, heads, length, dim = q.shape
        _, received, _ = self._buffers(batch, heads, dim, seq_lens, q.dtype)
        local_heads = heads // self.size
        start = sum(seq_lens[:self.member])
        for peer, stream in self._each_destination():
            head_range = slice(peer * local_heads, (peer + 1) * local_heads)
            with stream:
                for i, tensor in enumerate((q, k, v)):
                    _copy(tensor[:, head_range], received[peer][i, :, :, start:start + length])
        self._barrier()
        return received[self.member]

    def gather_heads(self, out, seq_lens):
        """out: (B, H / n, sum(seq_lens), D). Returns (B, L_member, H * D), token-major. The result lives in a buffer
        that the next call of the same shape overwrites: it is used by the block's projection right away."""
        batch, local_heads, _, dim = out.shape
        _, _, outputs = self._buffers(batch, local_heads * self.size, dim, seq_lens, out.dtype)
        heads = slice(self.member * local_heads, (self.member + 1) * local_heads)
        starts = [sum(seq_lens[:peer]) for peer in range(self.size)]
        for peer, stream in self._each_destination():
            target = outputs[peer][:, :seq_lens[peer], heads].transpose(1, 2)
            with stream:
                _copy(out[:, :, starts[peer]:starts[peer] + seq_lens[peer]], target)
        self._barrier()
        length = seq_lens[self.member]
        return outputs[self.member][:, :length].reshape(batch, length, local_heads * self.size * dim)

    def abort(self):
        """After a failure: every barrier of this process spinning now or later returns at once (their results are
        garbage; the group is not used again). A host store: no CUDA call (see the module's docstring). The failure
        path and the health monitor may both call it; it acts once."""
        if self.abort_flag[0]:
            return
        self.abort_flag[0] = 1
        log.info("Enable Multi-GPU: released the symmetric-memory exchange's barriers")

    def release(self):
        """Frees every receive buffer and the flags (not collective: the group is over). Synchronizes the device,
        so never while a barrier may still spin (``abort`` first)."""
        for memory, _, _ in self._shapes.values():
            memory.release()
        self._shapes.clear()
        self._flags.release()
