"""The Ulysses exchange over peer memory, for a Ulysses group whose GPUs share one host.

NCCL's all-to-all wants its data packed per destination and hands it back packed, so a block pays a pass over q, k and
v before it and after it, and one more each way for the output. On 2×H200 at 1024² a block spent ≈290 µs in pack,
all-to-all and unpack, while its 28 MB cross the link in ≈90 µs at the ≈350 GB/s that a copy engine reaches
(docs/benchmarks.md, "The Ulysses exchange"). Here every rank maps its peers' receive buffers
(parallel/peer_memory.py): one kernel reads q, k, v where ComfyUI left them (any strides) and writes every member's
heads straight into the layout the attention reads on that member's GPU, and the output goes back the same way into
the token-major layout ComfyUI's blocks expect. A barrier after each direction says the data is there. A block's
exchange takes 123 µs at 1024² (395 µs at 2048², against NCCL's 916), the output unchanged. One kernel for every
member and tensor launches 4 kernels a block instead of 10 at two GPUs (4 instead of 4N + 2 at N): Triton's launches
cost the host tens of µs, which counts in steps that run eagerly (ComfyUI's dynamic VRAM, sharded weights).

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
from typing import NamedTuple

import torch

from .peer_memory import PeerMemory, aligned, settle

log = logging.getLogger(__name__)

_scatter_kernel = _gather_kernel = _barrier_kernel = None   # compiled by _kernels() on first use
# Every abort flag this process made, never freed: captured graphs and barriers still queued after a failure hold its
# address, and a freed pinned block goes back to torch's cache for the next user (a few bytes a group).
_abort_flags = []
_build_problems = {}   # device -> build_problem's answer


def unavailable_reason():
    """Why this process cannot run the exchange (it needs Triton, which comes with torch's CUDA wheels), or None."""
    try:
        if importlib.util.find_spec("triton") is not None:
            return None
    except ImportError:
        pass
    return "triton is not installed"


def _kernels():
    """Compiled on first use, so that importing the plugin never needs Triton. Returns (scatter, gather, barrier)."""
    global _scatter_kernel, _gather_kernel, _barrier_kernel
    if _scatter_kernel is not None:
        return _scatter_kernel, _gather_kernel, _barrier_kernel
    import triton
    import triton.language as tl

    @triton.jit
    def scatter_qkv(q, k, v, destinations, length, local_heads, start,
                    s_qb, s_qh, s_ql, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, d_w, d_b, d_h, d_l,
                    DIM: tl.constexpr, BLOCK: tl.constexpr):
        """For every member p (program_id(2) // 3) and each of q, k, v (program_id(2) % 3): this member's tokens
        of p's heads, into p's receive buffer (3, B, H / n, sum(seq_lens), D) from token ``start`` on.
        ``destinations``: every member's receive buffer address; a peer's stores cross the link. q, k, v are
        (B, H, L, D) with any strides but a contiguous last dimension."""
        row = tl.program_id(1).to(tl.int64)
        target = tl.program_id(2).to(tl.int64)
        peer, which = target // 3, target % 3
        b, h = row // local_heads, row % local_heads
        head = peer * local_heads + h
        tokens = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, DIM)[None, :]
        keep = (tokens < length)[:, None]
        rows = tokens.to(tl.int64)[:, None]
        if which == 0:
            source = q + b * s_qb + head * s_qh + rows * s_ql + cols
        elif which == 1:
            source = k + b * s_kb + head * s_kh + rows * s_kl + cols
        else:
            source = v + b * s_vb + head * s_vh + rows * s_vl + cols
        values = tl.load(source, mask=keep)
        base = tl.load(destinations + peer).to(tl.pointer_type(q.dtype.element_ty))
        tl.store(base + which * d_w + b * d_b + h * d_h + (start + rows) * d_l + cols, values, mask=keep)

    @triton.jit
    def gather_out(out, destinations, spans, local_heads, member, s_b, s_h, s_l, d_b, d_l, d_h,
                   DIM: tl.constexpr, BLOCK: tl.constexpr):
        """For every member p (program_id(2)): this member's heads of p's tokens (``spans[2p]``, ``spans[2p + 1]``:
        their start and count in the gathered sequence), into p's output buffer (B, longest, H, D) at this member's
        heads. ``out`` is (B, H / n, sum(seq_lens), D) with a contiguous last dimension."""
        row = tl.program_id(1).to(tl.int64)
        peer = tl.program_id(2).to(tl.int64)
        b, h = row // local_heads, row % local_heads
        start = tl.load(spans + 2 * peer).to(tl.int64)
        length = tl.load(spans + 2 * peer + 1)
        tokens = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, DIM)[None, :]
        keep = (tokens < length)[:, None]
        rows = tokens.to(tl.int64)[:, None]
        values = tl.load(out + b * s_b + h * s_h + (start + rows) * s_l + cols, mask=keep)
        base = tl.load(destinations + peer).to(tl.pointer_type(out.dtype.element_ty))
        tl.store(base + b * d_b + rows * d_l + (member * local_heads + h) * d_h + cols, values, mask=keep)

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

    _scatter_kernel, _gather_kernel, _barrier_kernel = scatter_qkv, gather_out, barrier
    return _scatter_kernel, _gather_kernel, _barrier_kernel


def build_problem(device):
    """Why the exchange's kernels cannot be compiled and run on ``device``, or None: Triton builds its launcher with
    a C compiler the first time, which some machines lack. A one-member exchange through all three kernels (the
    barrier has no peer to wait for), checked once per process and device."""
    key = str(device)
    if key not in _build_problems:
        try:
            with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                problem = _one_member_exchange(device)
        except torch.cuda.OutOfMemoryError as error:   # says nothing about the kernels: not remembered
            return f"{type(error).__name__}: {error}"
        except Exception as error:
            problem = f"{type(error).__name__}: {error}"
        _build_problems[key] = problem
    return _build_problems[key]


def _one_member_exchange(device):
    scatter, gather, barrier = _kernels()
    q, k, v = (torch.arange(256, dtype=torch.float32, device=device).reshape(1, 1, 16, 16) + 1000 * i
               for i in range(3))
    received = torch.full((3, 1, 1, 16, 16), -1.0, device=device)
    scatter[(1, 1, 3)](q, k, v, torch.tensor([received.data_ptr()], dtype=torch.int64, device=device), 16, 1, 0,
                       *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *received.stride()[:4], DIM=16, BLOCK=16)
    out = received[0] * 2
    target = torch.full((1, 16, 1, 16), -1.0, device=device)
    gather[(1, 1, 1)](out, torch.tensor([target.data_ptr()], dtype=torch.int64, device=device),
                      torch.tensor([0, 16], dtype=torch.int32, device=device), 1, 0, *out.stride()[:3],
                      *target.stride()[:3], DIM=16, BLOCK=16)
    epoch, flags = torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(1, dtype=torch.int32, device=device)
    abort_flag = torch.zeros(1, dtype=torch.int32, pin_memory=device.type == "cuda")
    _abort_flags.append(abort_flag)   # never freed, as every abort flag a barrier saw
    barrier[(1,)](epoch, flags, torch.tensor([flags.data_ptr()], dtype=torch.int64, device=device),
                  abort_flag.data_ptr(), 0, SIZE=1, num_warps=1)
    right = (torch.equal(received, torch.stack([q, k, v])) and torch.equal(target, out.transpose(1, 2))
             and epoch.item() == 1)
    return None if right else "a test exchange came out wrong"


def _block(dim):
    """Tokens per program: 16–64 rows of ``dim`` elements (8192 elements, 16 KB of bf16, at most)."""
    return max(16, min(64, 8192 // dim))


class _Shape(NamedTuple):
    """The buffers of one exchange shape: the peer memory, every member's receive buffer (3, B, H / n,
    sum(seq_lens), D) and output buffer (B, longest, H, D) as tensors of this process, and the kernels' tables."""
    memory: object
    received: list
    outputs: list
    received_at: torch.Tensor   # int64 addresses of ``received``, by member
    outputs_at: torch.Tensor    # int64 addresses of ``outputs``, by member
    spans: torch.Tensor         # int32 (start, count) of every member's tokens in the gathered sequence

    @classmethod
    def of(cls, memory, received, outputs, seq_lens, device):
        starts = [sum(seq_lens[:member]) for member in range(len(seq_lens))]
        return cls(memory, received, outputs,
                   torch.tensor([t.data_ptr() for t in received], dtype=torch.int64, device=device),
                   torch.tensor([t.data_ptr() for t in outputs], dtype=torch.int64, device=device),
                   torch.tensor([x for span in zip(starts, seq_lens) for x in span], dtype=torch.int32, device=device))


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
        self._own_flags = self._flags.tensor(member, torch.int32, (self.size,)).zero_()
        # Our slot in every peer's flags (peer p reads it as own_flags[member]).
        self._peer_flags = torch.tensor([self._flags.address(p, 4 * member) for p in range(self.size)],
                                        dtype=torch.int64, device=device)
        self._shapes = {}   # key -> _Shape
        settle(device, group)   # every member's flags are zero before anyone raises one

    def _barrier(self):
        _, _, barrier = _kernels()
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
        return _Shape.of(memory, received, outputs, seq_lens, self.device)

    # Under ComfyUI's TorchCompileModel the exchange stays outside the compiled graphs (a break at each side, as
    # NCCL's all-to-all makes): it maps memory on a shape's first call, launches its own kernels from addresses, and
    # its barrier must run exactly where the stream reaches it.
    @torch.compiler.disable
    def scatter_heads(self, q, k, v, seq_lens):
        """q, k, v: (B, H, L_member, D). Returns (3, B, H / n, sum(seq_lens), D): this member's heads over the whole
        sequence, members' tokens in member order (as parallel/comm.py's all-to-all returns them). One kernel
        writes every member's part, this member's own included."""
        batch, heads, length, dim = q.shape
        shape = self._buffers(batch, heads, dim, seq_lens, q.dtype)
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        local_heads, block = heads // self.size, _block(dim)
        scatter, _, _ = _kernels()
        grid = ((length + block - 1) // block, batch * local_heads, 3 * self.size)
        scatter[grid](q, k, v, shape.received_at, length, local_heads, sum(seq_lens[:self.member]),
                      *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *shape.received[0].stride()[:4],
                      DIM=dim, BLOCK=block)
        self._barrier()
        return shape.received[self.member]

    @torch.compiler.disable
    def gather_heads(self, out, seq_lens):
        """out: (B, H / n, sum(seq_lens), D). Returns (B, L_member, H * D), token-major. The result lives in a buffer
        that the next call of the same shape overwrites: it is used by the block's projection right away."""
        batch, local_heads, _, dim = out.shape
        shape = self._buffers(batch, local_heads * self.size, dim, seq_lens, out.dtype)
        if out.stride(-1) != 1:
            out = out.contiguous()
        block = _block(dim)
        _, gather, _ = _kernels()
        grid = ((max(seq_lens) + block - 1) // block, batch * local_heads, self.size)
        gather[grid](out, shape.outputs_at, shape.spans, local_heads, self.member, *out.stride()[:3],
                     *shape.outputs[0].stride()[:3], DIM=dim, BLOCK=block)
        self._barrier()
        length = seq_lens[self.member]
        return shape.outputs[self.member][:, :length].reshape(batch, length, local_heads * self.size * dim)

    def attention(self, q, k, v, seq_lens, local_attention):
        """Ulysses attention of this member's tokens, q, k, v (B, H, L_member, D), with ``local_attention(q, k, v)``
        the single-device kernel on (B, heads, L, D). Returns (B, L_member, H * D). (copy_engine.py pipelines the
        exchange with the attention behind the same call.)"""
        qkv = self.scatter_heads(q, k, v, seq_lens)
        return self.gather_heads(local_attention(qkv[0], qkv[1], qkv[2]), seq_lens)

    def abort(self):
        """After a failure: every barrier of this process spinning now or later returns at once (their results are
        garbage; the group is not used again). A host store: no CUDA call (see the module's docstring). The failure
        path and the health monitor may both call it; it acts once."""
        if self.abort_flag[0]:
            return
        self.abort_flag[0] = 1
        log.info("Enable Multi-GPU: released the symmetric exchange's barriers")

    def release(self):
        """Frees every receive buffer and the flags (not collective: the group is over). Synchronizes the device,
        so never while a barrier may still spin (``abort`` first)."""
        for shape in self._shapes.values():
            shape.memory.release()
        self._shapes.clear()
        self._flags.release()
