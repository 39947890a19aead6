"""The Ulysses exchange through peer memory by the GPUs' copy engines, pipelined against the attention.

The symmetric exchange (symmetric.py) moves q, k, v and the output with SM kernels; inside a CUDA graph those get no SMs
while an attention kernel runs, so splitting the heads into parts to overlap them slows the step (docs/benchmarks.md). A
copy engine needs no SM. Here the buffers, their layout and the barrier are the symmetric exchange's; the data moves by
2-D copies (``cuMemcpy2DAsync``) straight into each member's receive buffer, with no pack or unpack pass: per member and
head part, q, k and v are one copy each — rows of a head's tokens where they are head-major (a double block's), rows of
a token's heads where they are token-major (a single block's views of its fused projection), each into a slot of the
same layout that the attention then reads in place — and the output goes back as rows of a token's heads. With ``parts``
> 1 the copies and the barriers run on a stream of their own: part j + 1 crosses while part j's attention runs, and part
j's output goes back while part j + 1 is computed.

Bit-equal to the symmetric exchange in 1–3 parts, eager and replayed from a CUDA graph, on one H200 with both ranks on
it (tests/gpu/test_cuda_exchange.py checks it). Its speed on two GPUs is not measured yet, so it is only used when asked
for (the node's ``exchange`` = copy-engine, ``exchange_parts``).
"""
import contextlib
import ctypes

import torch

from .symmetric import SymmetricUlysses


class _Memcpy2D(ctypes.Structure):
    """The driver's CUDA_MEMCPY2D."""
    _fields_ = [("srcXInBytes", ctypes.c_size_t), ("srcY", ctypes.c_size_t), ("srcMemoryType", ctypes.c_int),
                ("srcHost", ctypes.c_void_p), ("srcDevice", ctypes.c_uint64), ("srcArray", ctypes.c_void_p),
                ("srcPitch", ctypes.c_size_t),
                ("dstXInBytes", ctypes.c_size_t), ("dstY", ctypes.c_size_t), ("dstMemoryType", ctypes.c_int),
                ("dstHost", ctypes.c_void_p), ("dstDevice", ctypes.c_uint64), ("dstArray", ctypes.c_void_p),
                ("dstPitch", ctypes.c_size_t),
                ("WidthInBytes", ctypes.c_size_t), ("Height", ctypes.c_size_t)]


_DEVICE_MEMORY = 2   # CU_MEMORYTYPE_DEVICE
_driver = None


def copy_2d(device, dst, dst_pitch, src, src_pitch, width, height, stream=None):
    """``height`` rows of ``width`` bytes from address ``src`` (rows ``src_pitch`` bytes apart) to ``dst`` (rows
    ``dst_pitch`` apart). On CUDA an asynchronous copy on ``stream``, by a copy engine where the two addresses are on
    different GPUs; on the CPU (ranks sharing /dev/shm memory) a plain copy."""
    if device.type == "cuda":
        global _driver
        if _driver is None:
            _driver = ctypes.CDLL("libcuda.so.1")
            _driver.cuMemcpy2DAsync_v2.argtypes = [ctypes.POINTER(_Memcpy2D), ctypes.c_void_p]
        spec = _Memcpy2D(srcMemoryType=_DEVICE_MEMORY, srcDevice=src, srcPitch=src_pitch,
                         dstMemoryType=_DEVICE_MEMORY, dstDevice=dst, dstPitch=dst_pitch, WidthInBytes=width,
                         Height=height)
        result = _driver.cuMemcpy2DAsync_v2(ctypes.byref(spec), ctypes.c_void_p(stream.cuda_stream))
        if result != 0:
            raise RuntimeError(f"cuMemcpy2DAsync failed: CUDA error {result}")
        return
    if height:
        _rows(dst, dst_pitch, width, height).copy_(_rows(src, src_pitch, width, height))


def _rows(address, pitch, width, height):
    nbytes = (height - 1) * pitch + width
    storage = torch._C._construct_storage_from_data_pointer(address, torch.device("cpu"), nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (height, width), (pitch, 1))


class CopyEngineUlysses(SymmetricUlysses):
    """The symmetric exchange's buffers and barrier, moved by copies. Collective like it; ``parts`` head parts per
    attention call (it must divide the heads each member computes)."""

    def __init__(self, group, ranks, member, device, parts=2):
        super().__init__(group, ranks, member, device)
        self.parts = parts
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _on_side(self):
        return torch.cuda.stream(self.side) if self.side is not None else contextlib.nullcontext()

    def _send(self, shape, tensors, token_major, first, count, start):
        """This member's tokens of heads ``first`` .. ``first + count - 1`` of every member's share (counted within
        a share), into that member's receive buffer. ``tensors``: q, k, v (B, H, L_member, D); a token-major one
        (a token's heads adjacent) goes as rows of a token's heads into a token-major slot, any other (made
        contiguous) as rows of a head's tokens."""
        batch, heads, length, dim = tensors[0].shape
        local, item = heads // self.size, tensors[0].element_size()
        received = shape.received[0]   # every member's buffer has this layout: (3, B, H / n, L, D) slots
        total = received.shape[3]
        for peer in range(self.size):
            for which, (source, by_token) in enumerate(zip(tensors, token_major)):
                slot = shape.received[peer].data_ptr() + which * received.stride(0) * item
                head = peer * local + first
                for b in range(batch):
                    base = source.data_ptr() + (b * source.stride(0) + head * source.stride(1)) * item
                    if by_token:   # the slot as (B, L, H / n, D)
                        copy_2d(self.device, slot + ((b * total + start) * local + first) * dim * item,
                                local * dim * item, base, source.stride(2) * item, count * dim * item, length,
                                self.side)
                    else:          # the slot as (B, H / n, L, D)
                        copy_2d(self.device, slot + ((b * local + first) * total + start) * dim * item,
                                total * dim * item, base, source.stride(1) * item, length * dim * item, count,
                                self.side)

    def _return(self, shape, out, first, count, seq_lens):
        """``out``: this member's heads ``first`` .. ``first + count - 1`` (of its share) over the whole sequence,
        (B, L, count, D) token-major; every member's tokens go back to its output buffer, at these heads."""
        batch, total, _, dim = out.shape
        item = out.element_size()
        outputs = shape.outputs[0]   # (B, longest, H, D)
        local = outputs.shape[2] // self.size
        width = count * dim * item
        starts = [sum(seq_lens[:m]) for m in range(self.size)]
        for peer in range(self.size):
            destination = shape.outputs[peer].data_ptr()
            for b in range(batch):
                copy_2d(self.device,
                        destination + (b * outputs.stride(0) + (self.member * local + first) * outputs.stride(2))
                        * item, outputs.stride(1) * item,
                        out.data_ptr() + (b * total + starts[peer]) * width, width, width, seq_lens[peer], self.side)

    @torch.compiler.disable
    def attention(self, q, k, v, seq_lens, local_attention):
        """Ulysses attention of this member's tokens: q, k, v (B, H, L_member, D); ``local_attention(q, k, v)`` the
        single-device kernel on (B, heads, L, D). Returns (B, L_member, H * D)."""
        batch, heads, length, dim = q.shape
        if min(seq_lens) < 2:
            # A single token's layout cannot be told apart, and every member must read a slot the way its peers
            # wrote it.
            raise ValueError("the copy-engine exchange needs at least two tokens on every GPU")
        shape = self._buffers(batch, heads, dim, seq_lens, q.dtype)
        # A single block's q, k, v are views of one fused projection, its tokens' heads adjacent: they travel as
        # rows of a token's heads and are read in place (a pass making them head-major costs 67 µs a block and
        # tensor at 2048² on an H200); a double block's are contiguous, head by head.
        token_major = [t.stride(1) == dim and t.stride(-1) == 1 for t in (q, k, v)]
        tensors = [t if by_token or t.is_contiguous() else t.contiguous()
                   for t, by_token in zip((q, k, v), token_major)]
        local = heads // self.size
        span = local // self.parts
        start = sum(seq_lens[:self.member])
        compute = torch.cuda.current_stream(self.device) if self.side is not None else None
        arrived, computed, outs = [], [], []
        if compute is not None:
            self.side.wait_stream(compute)   # q, k, v are ready, and the last call's output was read
        with self._on_side():
            for part in range(self.parts):
                self._send(shape, tensors, token_major, part * span, span, start)
                self._barrier()
                arrived.append(self._event())
        received = [self._slot(shape, which, by_token) for which, by_token in enumerate(token_major)]
        for part in range(self.parts):
            if compute is not None:
                compute.wait_event(arrived[part])
            heads_of_part = slice(part * span, (part + 1) * span)
            out = local_attention(*(slot[:, heads_of_part] for slot in received)).transpose(1, 2)
            outs.append(out if out.is_contiguous() else out.contiguous())   # rows of a token's heads
            computed.append(self._event())
        with self._on_side():
            for part in range(self.parts):
                if compute is not None:
                    self.side.wait_event(computed[part])
                self._return(shape, outs[part], part * span, span, seq_lens)
            self._barrier()
        if compute is not None:
            # The parts' outputs are freed on the compute stream after this, i.e. after the copies that read them.
            compute.wait_stream(self.side)
        return shape.outputs[self.member][:, :length].reshape(batch, length, heads * dim)

    def _slot(self, shape, which, token_major):
        """This member's received q, k or v as (B, H / n, L, D): a view of its slot in either layout."""
        slot = shape.received[self.member][which]
        if not token_major:
            return slot
        batch, local, total, dim = slot.shape
        return slot.as_strided((batch, local, total, dim), (total * local * dim, dim, local * dim, 1))

    def _event(self):
        if self.side is None:
            return None
        event = torch.cuda.Event()
        event.record()
        return event
