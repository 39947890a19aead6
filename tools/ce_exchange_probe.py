"""Measuring tool (not product code): can the copy engine hide a Ulysses block's exchange behind the attention?

    python3 tools/ce_exchange_probe.py [--res 1024,2048] [--blocks 8] [--replays 15] [--same-gpu]

Two ranks (this process starts both). Per resolution, one rank's half of the joint sequence (512 text tokens + the
image tokens, 24 heads of 128, bf16): q and k head-major, as a double block's are after their concatenation, v a
token-major view of a fused qkv buffer, as a single block's is. Each variant runs one block's exchange, attention
and return of the output, captured as a CUDA graph of --blocks blocks and replayed; the figure is the median time
per block. Variants:
  floor     the attention alone over the gathered sequence (12 heads)
  product   the product's exchange (parallel/symmetric.py): one kernel writes q, k, v into the peer's attention
            layout, a barrier; the attention; one kernel writes the output back, a barrier
  ce-P      the copy engine instead of SM kernels, in P head parts (P = 1: no overlap): per part and peer, q, k and v
            are one 2-D copy each (cuMemcpy2DAsync: rows of a head's tokens for q and k, rows of a token's heads for
            v, straight into the peer's buffer, no pack or unpack pass) on a side stream, then the product's
            barrier there; the attention of part j runs while part j + 1 crosses, and part j's output goes back
            by 2-D copies while part j + 1 is computed
Every variant's output is compared with the product's first (it must be bit-equal: the attention of a head does not
depend on which other heads run with it). ``--same-gpu``: both ranks on GPU 0 over gloo, for checking the copies,
their capture and the outputs on a one-GPU machine (the times then mean nothing). Results: docs/benchmarks.md.
"""
import argparse
import ctypes
import os
import statistics
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from comfy_xdit_patch.parallel.peer_memory import PeerMemory, aligned, settle  # noqa: E402
from comfy_xdit_patch.parallel.symmetric import SymmetricUlysses  # noqa: E402

HEADS, DIM, TEXT = 24, 128, 512


class Memcpy2D(ctypes.Structure):
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


def copy_2d(dst, dst_pitch, src, src_pitch, width, height, stream):
    """``height`` rows of ``width`` bytes from address ``src`` (rows ``src_pitch`` apart) to ``dst`` on ``stream``;
    where the two are on different GPUs the copy engine moves them."""
    global _driver
    if _driver is None:
        _driver = ctypes.CDLL("libcuda.so.1")
        _driver.cuMemcpy2DAsync_v2.argtypes = [ctypes.POINTER(Memcpy2D), ctypes.c_void_p]
    spec = Memcpy2D(srcMemoryType=_DEVICE_MEMORY, srcDevice=src, srcPitch=src_pitch, dstMemoryType=_DEVICE_MEMORY,
                    dstDevice=dst, dstPitch=dst_pitch, WidthInBytes=width, Height=height)
    result = _driver.cuMemcpy2DAsync_v2(ctypes.byref(spec), ctypes.c_void_p(stream.cuda_stream))
    if result != 0:
        raise RuntimeError(f"cuMemcpy2DAsync failed: CUDA error {result}")


class CopyEngineExchange:
    """The exchange of a Ulysses group of ``size`` ranks by 2-D copies, in ``parts`` head parts (probe version).
    Every member's receive buffers: q and k (B=1, H / n, L, D) head-major, v (1, L, H / n, D) token-major, and the
    output (1, longest L_m, H, D); the product's barrier (on the side stream) says a part arrived."""

    def __init__(self, member, size, seq_lens, device, group, parts):
        self.member, self.size, self.seq_lens, self.device, self.parts = member, size, seq_lens, device, parts
        self.local = HEADS // size
        assert self.local % parts == 0, (self.local, parts)
        total, longest = sum(seq_lens), max(seq_lens)
        self.starts = [sum(seq_lens[:m]) for m in range(size)]
        item = 2   # bf16
        self.q_bytes = self.local * total * DIM * item
        self.v_offset = aligned(2 * self.q_bytes)
        self.out_offset = aligned(self.v_offset + total * self.local * DIM * item)
        nbytes = self.out_offset + longest * HEADS * DIM * item
        self.memory = PeerMemory(nbytes, device, group, member, size)
        self.barrier = SymmetricUlysses(group, list(range(size)), member, device)   # only its barrier is used
        self.side = torch.cuda.Stream(device)
        mine = self.memory
        self.q = mine.tensor(member, torch.bfloat16, (1, self.local, total, DIM))
        self.k = mine.tensor(member, torch.bfloat16, (1, self.local, total, DIM), self.q_bytes)
        self.v = mine.tensor(member, torch.bfloat16, (1, total, self.local, DIM), self.v_offset)
        self.out = mine.tensor(member, torch.bfloat16, (1, longest, HEADS, DIM), self.out_offset)
        self.total = total

    def _send_part(self, q, k, v_rows, v_pitch, part):
        """This member's tokens of every member's heads of ``part``, into that member's buffers."""
        item, rows, span = 2, self.seq_lens[self.member], self.local // self.parts
        start = self.starts[self.member]
        for peer in range(self.size):
            first = peer * self.local + part * span     # the first head of the part, in this member's q, k, v
            for source, base in ((q, 0), (k, self.q_bytes)):
                # q, k: (1, H, L_m, D) contiguous: the part's heads are `span` rows of L_m·D, into rows of L·D.
                copy_2d(self.memory.address(peer, base) + ((part * span) * self.total + start) * DIM * item,
                        self.total * DIM * item, source.data_ptr() + first * rows * DIM * item, rows * DIM * item,
                        rows * DIM * item, span, self.side)
            # v: token-major with rows v_pitch bytes apart: each token's `span` heads, into rows of (H / n)·D.
            copy_2d(self.memory.address(peer, self.v_offset) + (start * self.local + part * span) * DIM * item,
                    self.local * DIM * item, v_rows + first * DIM * item, v_pitch, span * DIM * item, rows,
                    self.side)

    def _return_part(self, out, part):
        """``out``: this member's heads of ``part`` over the whole sequence, (1, L, span, D) token-major; each
        member's tokens go back to it, at this member's heads."""
        item, span = 2, self.local // self.parts
        for peer in range(self.size):
            copy_2d(self.memory.address(peer, self.out_offset) + (self.member * self.local + part * span) * DIM * item,
                    HEADS * DIM * item, out.data_ptr() + self.starts[peer] * span * DIM * item, span * DIM * item,
                    span * DIM * item, self.seq_lens[peer], self.side)

    def block(self, q, k, v):
        """q, k: (1, H, L_m, D) contiguous; v: (1, H, L_m, D) with a contiguous last dimension and a token stride.
        Returns (1, L_m, H·D)."""
        compute = torch.cuda.current_stream(self.device)
        self.side.wait_stream(compute)   # q, k, v are ready (and the last block's output was read)
        span = self.local // self.parts
        arrived = []
        with torch.cuda.stream(self.side):
            for part in range(self.parts):
                self._send_part(q, k, v.data_ptr(), v.stride(2) * 2, part)
                self.barrier._barrier()
                arrived.append(torch.cuda.Event())
                arrived[-1].record(self.side)
        computed = []
        outs = []
        for part in range(self.parts):
            compute.wait_event(arrived[part])
            heads = slice(part * span, (part + 1) * span)
            out = F.scaled_dot_product_attention(self.q[:, heads], self.k[:, heads],
                                                 self.v[:, :, heads].permute(0, 2, 1, 3))
            out = out.transpose(1, 2)
            if not out.is_contiguous():   # the 2-D copies read token-major rows
                out = out.contiguous()
            outs.append(out)              # kept alive until the side stream copied it
            computed.append(torch.cuda.Event())
            computed[-1].record(compute)
        with torch.cuda.stream(self.side):
            for part in range(self.parts):
                self.side.wait_event(computed[part])
                self._return_part(outs[part], part)
            self.barrier._barrier()
        # The parts' outputs are freed on the compute stream after this wait, i.e. after the copies that read them.
        compute.wait_stream(self.side)
        length = self.seq_lens[self.member]
        return self.out[:, :length].reshape(1, length, HEADS * DIM)


def timed_graph(fn, blocks, replays, device):
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(blocks):
            out = fn()
    times = []
    for _ in range(replays):
        torch.cuda.synchronize(device)
        dist.barrier()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) * 1e3 / blocks)
    result = out.clone()
    del graph
    return statistics.median(times), result


def worker(rank, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    device = torch.device("cuda", 0 if args.same_gpu else rank)
    torch.cuda.set_device(device)
    dist.init_process_group("gloo" if args.same_gpu else "nccl", rank=rank, world_size=2,
                            **({} if args.same_gpu else {"device_id": device}))
    try:
        for res in args.res:
            tokens = TEXT + (res // 16) ** 2
            seq_lens = [tokens // 2, tokens - tokens // 2]
            length = seq_lens[rank]
            generator = torch.Generator(device=device).manual_seed(100 + rank)
            q, k = (torch.randn(1, HEADS, length, DIM, generator=generator, device=device, dtype=torch.bfloat16)
                    for _ in range(2))
            qkv = torch.randn(1, length, 3, HEADS, DIM, generator=generator, device=device, dtype=torch.bfloat16)
            v = qkv.permute(2, 0, 3, 1, 4)[2]   # (1, H, L_m, D), token-major, as a single block's v
            product = SymmetricUlysses(None, [0, 1], rank, device)
            local = HEADS // 2

            def product_block():
                received = product.scatter_heads(q, k, v, seq_lens)
                out = F.scaled_dot_product_attention(received[0], received[1], received[2])
                return product.gather_heads(out, seq_lens)

            floor_q = torch.randn(1, local, sum(seq_lens), DIM, device=device, dtype=torch.bfloat16)
            variants = {"floor": lambda: F.scaled_dot_product_attention(floor_q, floor_q, floor_q),
                        "product": product_block}
            exchanges = {parts: CopyEngineExchange(rank, 2, seq_lens, device, None, parts) for parts in args.parts}
            for parts, exchange in exchanges.items():
                variants[f"ce-{parts}"] = (lambda e: lambda: e.block(q, k, v))(exchange)
            expected = product_block().clone()
            torch.cuda.synchronize(device)
            rows = []
            for name, fn in variants.items():
                if name.startswith("ce-"):
                    got = fn().clone()
                    torch.cuda.synchronize(device)
                    equal = torch.equal(got, expected)
                    diff = (got.float() - expected.float()).abs().max().item()
                else:
                    equal, diff = None, 0.0
                per_block, graphed = timed_graph(fn, args.blocks, args.replays, device)
                if name.startswith("ce-"):
                    equal = equal and torch.equal(graphed, expected)
                rows.append((name, per_block, equal, diff))
            if rank == 0:
                where = ("one GPU, both ranks (--same-gpu: the times mean nothing)" if args.same_gpu else
                         torch.cuda.get_device_name(device) + " x2")
                print(f"\n{res}²: {tokens} tokens, {seq_lens} per rank, {where}")
                print("| variant | µs a block | equal to the product (eager and graphed) | max abs diff |")
                print("|---|---|---|---|")
                for name, per_block, equal, diff in rows:
                    print(f"| {name} | {per_block:.0f} | {'' if equal is None else equal} | {diff:.3g} |")
            for exchange in exchanges.values():
                settle(device)
                exchange.memory.release()
                exchange.barrier.release()
            product.release()
    finally:
        dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--res", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048])
    parser.add_argument("--parts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--replays", type=int, default=15)
    parser.add_argument("--port", type=int, default=29641)
    parser.add_argument("--same-gpu", action="store_true")
    args = parser.parse_args()
    if not args.same_gpu and torch.cuda.device_count() < 2:
        sys.exit("ce_exchange_probe: needs 2 GPUs (or --same-gpu to check the copies on one)")
    mp.spawn(worker, args=(args,), nprocs=2)


if __name__ == "__main__":
    main()
