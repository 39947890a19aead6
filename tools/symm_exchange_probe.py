"""Measuring tool (not product code): can the Ulysses exchange of one FLUX block run faster over symmetric memory
(peer GPU buffers mapped into each process, pulled by the copy engines) than over NCCL's all-to-all, and can a rank
whose peer never signals be released from the host (the failure path must never hang ComfyUI)?

    python3 tools/symm_exchange_probe.py [--res 1024,2048] [--blocks 8] [--replays 15]

Two ranks (this process starts the second). Per resolution, q, k, v of one rank's half of the joint sequence
(512 text tokens + the image tokens, 24 heads of 128, bf16) go through one block's attention with each exchange:
  floor      no exchange: attention over a local sequence of the gathered length (the compute alone)
  nccl       the product's exchange (parallel/comm.py): pack, all-to-all, unpack; back the same way
  symm-ce    pack into a symmetric buffer, barrier, pull the peer's part with a contiguous copy (copy engine),
             unpack; back the same way
  symm-sm    as symm-ce, but the peer's part is read straight into the gathered layout by a copy kernel
  symm-ce-2  symm-ce in two head chunks: the copy engine pulls chunk 2 while chunk 1's attention runs
Each variant is captured as a CUDA graph of --blocks blocks and replayed; the figure is the median time per block.
Then the release test: rank 0 waits for a signal that rank 1 never sends, and a write into rank 0's own signal pad
from a second stream must let the waiting stream finish.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from comfy_xdit_patch.parallel.comm import scatter_heads_gather_sequence, scatter_sequence_gather_heads  # noqa: E402
from comfy_xdit_patch.parallel.symmetric import SymmetricUlysses  # noqa: E402

HEADS, DIM, TEXT = 24, 128, 512


def log(rank, text):
    if rank == 0:
        print(text, flush=True)


def attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


class SymmetricExchange:
    """Ulysses exchange of a 2-rank group over symmetric memory (probe version)."""

    def __init__(self, rank, n, length, group, symm_mem):
        self.rank, self.n, self.length = rank, n, length
        hl = HEADS // n
        self.fwd_shape = (n, 3, 1, hl, length, DIM)
        self.bwd_shape = (n, 1, hl, length, DIM)
        fwd = 3 * hl * length * DIM * n
        bwd = hl * length * DIM * n
        self.buffer = symm_mem.empty(fwd + bwd, dtype=torch.bfloat16, device=torch.device("cuda", rank))
        self.handle = symm_mem.rendezvous(self.buffer, group.group_name)
        self.fwd = [self.handle.get_buffer(r, self.fwd_shape, torch.bfloat16, 0) for r in range(n)]
        self.bwd = [self.handle.get_buffer(r, self.bwd_shape, torch.bfloat16, fwd) for r in range(n)]
        self.side = torch.cuda.Stream()
        self._streams = []

    def streams(self, count):
        while len(self._streams) < count:
            self._streams.append(torch.cuda.Stream())
        return self._streams[:count]

    def pull_split(self, source, streams):
        """A contiguous peer -> local copy split over several streams, so that several copy engines work at once."""
        out = torch.empty_like(source)
        main = torch.cuda.current_stream()
        flat_out, flat_src = out.view(-1), source.reshape(-1)
        pieces = zip(flat_out.chunk(len(streams)), flat_src.chunk(len(streams)))
        for stream, (dst, src) in zip(streams, pieces):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                dst.copy_(src)
        for stream in streams:
            main.wait_stream(stream)
        return out

    def pack(self, q, k, v):
        """q, k, v into this rank's symmetric send buffer, destination first; then every rank's is ready."""
        send = self.fwd[self.rank]
        hl = HEADS // self.n
        for i, t in enumerate((q, k, v)):
            send[:, i].copy_(t.view(1, self.n, hl, self.length, DIM).transpose(0, 1))
        self.handle.barrier(channel=0)
        return send

    def forward(self, q, k, v, pull="ce"):
        n, rank = self.n, self.rank
        hl = HEADS // n
        send = self.pack(q, k, v)
        if pull == "ce":   # contiguous peer -> local copies: cudaMemcpyAsync, i.e. the copy engines
            parts = [send[rank] if r == rank else self.fwd[r][rank].clone() for r in range(n)]
            out = torch.cat(parts, dim=3)
        elif pull.startswith("ce"):   # "ce4": the peer's part pulled in 4 pieces on 4 streams
            streams = self.streams(int(pull[2:]))
            parts = [send[rank] if r == rank else self.pull_split(self.fwd[r][rank], streams) for r in range(n)]
            out = torch.cat(parts, dim=3)
        else:
            out = q.new_empty((3, 1, hl, n * self.length, DIM))
            for r in range(n):
                out[:, :, :, r * self.length:(r + 1) * self.length].copy_(self.fwd[r][rank])
        self.handle.barrier(channel=1)   # the peer has read our send buffer: it may be written again
        return out

    def backward(self, out, pull="ce"):
        n, rank = self.n, self.rank
        send = self.bwd[rank]
        send.copy_(out.reshape(1, out.shape[1], n, self.length, DIM).permute(2, 0, 1, 3, 4))
        self.handle.barrier(channel=0)
        if pull != "ce":   # "ce4"
            streams = self.streams(int(pull[2:]))
            parts = [send[rank] if r == rank else self.pull_split(self.bwd[r][rank], streams) for r in range(n)]
        else:
            parts = [send[rank] if r == rank else self.bwd[r][rank].clone() for r in range(n)]
        self.handle.barrier(channel=1)
        # (n, B, Hl, L, D) -> (B, L, H * D)
        return torch.stack(parts).permute(1, 3, 0, 2, 4).reshape(1, self.length, HEADS * DIM)

    def chunked_block(self, q, k, v, chunks=2):
        """Forward exchange pulled chunk by chunk on a side stream, attention of chunk c overlapping the pull of
        chunk c + 1; then the backward exchange whole."""
        n, rank = self.n, self.rank
        hl = HEADS // n
        send = self.pack(q, k, v)
        main = torch.cuda.current_stream()
        self.side.wait_stream(main)
        step = hl // chunks
        pulled, ready = [], []
        with torch.cuda.stream(self.side):
            for c in range(chunks):
                heads = slice(c * step, (c + 1) * step)
                parts = []
                for r in range(n):
                    if r == rank:
                        parts.append(send[rank][:, :, heads])
                        continue
                    part = q.new_empty((3, 1, step, self.length, DIM))
                    for i in range(3):   # each of q, k, v's head range is contiguous: one copy-engine copy each
                        part[i].copy_(self.fwd[r][rank][i][:, heads])
                    parts.append(part)
                pulled.append(parts)
                event = torch.cuda.Event()
                event.record()
                ready.append(event)
        outs = []
        for c in range(chunks):
            main.wait_event(ready[c])
            qkv = torch.cat(pulled[c], dim=3)
            outs.append(attention(qkv[0], qkv[1], qkv[2]))
        main.wait_stream(self.side)
        self.handle.barrier(channel=1)
        return self.backward(torch.cat(outs, dim=1))


def nccl_block(q, k, v, seq_lens, rank):
    qkv = scatter_heads_gather_sequence(q, k, v, seq_lens, None)
    out = attention(qkv[0], qkv[1], qkv[2])
    return scatter_sequence_gather_heads(out, seq_lens, rank, None)


def timed_graph(fn, blocks, replays):
    """Median ms per block of a CUDA graph of ``blocks`` calls of ``fn``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(blocks):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    dist.barrier()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / blocks)
    del graph
    return statistics.median(times)


def worker(rank, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), NCCL_GRAPH_REGISTER="0",
                      TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NCCL_NVLS_ENABLE="0")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=2, device_id=device)
    import torch.distributed._symmetric_memory as symm_mem
    group = dist.group.WORLD
    log(rank, f"torch {torch.__version__}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, "
              f"{torch.cuda.get_device_name(device)}")
    try:
        symm_mem.enable_symm_mem_for_group(group.group_name)
    except Exception as error:   # newer torch enables it on rendezvous
        log(rank, f"enable_symm_mem_for_group: {error!r}")
    n = 2
    product = SymmetricUlysses(group, [0, 1], rank, device)
    for res in args.res:
        tokens = TEXT + (res // 16) ** 2
        length = tokens // n
        seq_lens = [length] * n
        gen = torch.Generator(device=device).manual_seed(rank)
        q, k, v = (torch.randn((1, HEADS, length, DIM), device=device, dtype=torch.bfloat16, generator=gen)
                   for _ in range(3))
        try:
            exchange = SymmetricExchange(rank, n, length, group, symm_mem)
            # Correctness first: every symmetric variant against NCCL's.
            reference = nccl_block(q, k, v, seq_lens, rank)
            checks = {"symm-ce": exchange.backward(attention(*exchange.forward(q, k, v, "ce"))),
                      "symm-sm": exchange.backward(attention(*exchange.forward(q, k, v, "sm"))),
                      "symm-ce-2": exchange.chunked_block(q, k, v)}
            checks["product"] = product.gather_heads(attention(*product.scatter_heads(q, k, v, seq_lens)), seq_lens)
            for name, out in checks.items():
                diff = (out.float() - reference.float()).abs().max().item()
                log(rank, f"{res}²: {name} max |diff| vs nccl {diff:.3g}")
        except Exception as error:
            log(rank, f"{res}²: symmetric memory FAILED {error!r}")
            exchange = None
        lq, lk, lv = (torch.randn((1, HEADS // n, tokens, DIM), device=device, dtype=torch.bfloat16)
                      for _ in range(3))
        variants = {
            "floor": lambda: attention(lq, lk, lv),
            "nccl": lambda: nccl_block(q, k, v, seq_lens, rank),
            "symm-ce": lambda: exchange.backward(attention(*exchange.forward(q, k, v, "ce"))),
            "symm-sm": lambda: exchange.backward(attention(*exchange.forward(q, k, v, "sm"))),
            "symm-ce-2": lambda: exchange.chunked_block(q, k, v),
            "symm-ce4": lambda: exchange.backward(attention(*exchange.forward(q, k, v, "ce4")), "ce4"),
            "symm-ce4-only": lambda: exchange.backward(exchange.forward(q, k, v, "ce4")[0], "ce4"),
            "product": lambda: product.gather_heads(attention(*product.scatter_heads(q, k, v, seq_lens)), seq_lens),
            "product-only": lambda: product.gather_heads(product.scatter_heads(q, k, v, seq_lens)[0], seq_lens),
            "nccl-only": lambda: scatter_sequence_gather_heads(
                scatter_heads_gather_sequence(q, k, v, seq_lens, None)[0], seq_lens, rank, None),
            "symm-ce-only": lambda: exchange.backward(exchange.forward(q, k, v, "ce")[0]),
        }
        for name, fn in variants.items():
            if exchange is None and name.startswith("symm") or args.only and name not in args.only:
                continue
            try:
                ms = timed_graph(fn, args.blocks, args.replays)
            except Exception as error:
                log(rank, f"{res}² {name}: FAILED {error!r}")
                continue
            log(rank, f"| {res}² | {name} | {ms * 1000:.0f} µs/block | {ms * 57:.1f} ms per 57 blocks |")
        exchange = None
        torch.cuda.synchronize()
        dist.barrier()
    bandwidth(rank, group, symm_mem, device)
    if args.skip_release:
        dist.barrier()
        dist.destroy_process_group()
        return
    try:
        release_product(rank, product, device)
    except Exception as error:
        log(rank, f"product release test FAILED {error!r}")
    try:
        release_test(rank, group, symm_mem, device)
    except Exception as error:
        log(rank, f"release test FAILED {error!r}")
    dist.barrier()
    dist.destroy_process_group()


def bandwidth(rank, group, symm_mem, device):
    """Link rate at the exchange's sizes and beyond: NCCL all-to-all and copy-engine pulls on 1 and 4 streams."""
    for mbytes in (7, 21, 84, 256):
        numel = mbytes * 2 ** 20 // 2
        buffer = symm_mem.empty(numel, dtype=torch.bfloat16, device=device)
        handle = symm_mem.rendezvous(buffer, group.group_name)
        peer = handle.get_buffer(1 - rank, (numel,), torch.bfloat16, 0)
        send = torch.randn(2 * numel, device=device, dtype=torch.bfloat16)
        recv = torch.empty_like(send)
        streams = [torch.cuda.Stream() for _ in range(4)]

        def pull(count):
            main = torch.cuda.current_stream()
            out = torch.empty_like(peer)
            for stream, dst, src in zip(streams[:count], out.chunk(count), peer.chunk(count)):
                stream.wait_stream(main)
                with torch.cuda.stream(stream):
                    dst.copy_(src)
            for stream in streams[:count]:
                main.wait_stream(stream)

        rows = {"nccl a2a": lambda: dist.all_to_all_single(recv, send),
                "ce pull x1": lambda: pull(1), "ce pull x4": lambda: pull(4)}
        for name, fn in rows.items():
            ms = timed_graph(fn, 4, 10)
            log(rank, f"| bandwidth | {mbytes} MB one way | {name} | {ms * 1000:.0f} µs | "
                      f"{mbytes * 2 ** 20 / ms / 1e6:.0f} GB/s |")
        handle = peer = None
        torch.cuda.synchronize()
        dist.barrier()


def release_product(rank, product, device):
    """The product's barrier: rank 0 enters one alone (rank 1 never does); ``abort`` must free it."""
    dist.barrier()
    if rank == 0:
        waiting = torch.cuda.Stream()
        with torch.cuda.stream(waiting):
            product._barrier()
        time.sleep(1.0)
        stuck = not waiting.query()
        t0 = time.perf_counter()
        product.abort()
        while not waiting.query() and time.perf_counter() - t0 < 5:
            time.sleep(0.001)
        log(rank, f"product release: barrier pending after 1 s: {stuck}; freed by abort(): {waiting.query()} in "
                  f"{(time.perf_counter() - t0) * 1000:.1f} ms")
    dist.barrier()


def release_test(rank, group, symm_mem, device):
    """Rank 0 waits for a signal rank 1 never sends; a write into rank 0's own signal pad from another stream frees
    it. (Signal pad layout assumed: pad[channel * world_size + src_rank]; the test says whether it holds.)"""
    buffer = symm_mem.empty(1024, dtype=torch.uint8, device=device)
    handle = symm_mem.rendezvous(buffer, group.group_name)
    if rank == 0:
        waiting = torch.cuda.Stream()
        with torch.cuda.stream(waiting):
            handle.wait_signal(src_rank=1, channel=3)
            marker = torch.ones(1, device=device)
        time.sleep(1.0)
        stuck = not waiting.query()
        pad = handle.get_signal_pad(0)
        log(rank, f"release test: wait pending after 1 s: {stuck}; signal pad {tuple(pad.shape)} {pad.dtype}")
        freeing = torch.cuda.Stream()
        ones = torch.ones(pad.numel(), dtype=torch.int32, device=device)
        with torch.cuda.stream(freeing):   # every slot; a copy (no kernel to load while one spins)
            pad.view(torch.int32).copy_(ones)
        t0 = time.perf_counter()
        while not waiting.query() and time.perf_counter() - t0 < 5:
            time.sleep(0.01)
        freed = waiting.query()
        if freed:
            waiting.synchronize()
        log(rank, f"release test: waiting stream finished after the pad write: {freed} "
                  f"({(time.perf_counter() - t0) * 1000:.1f} ms), marker {marker.item() if freed else '-'}")
    dist.barrier()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--res", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--replays", type=int, default=15)
    parser.add_argument("--port", type=int, default=29631)
    parser.add_argument("--only", type=lambda s: s.split(","), default=None, help="variants to time")
    parser.add_argument("--skip-release", action="store_true")
    args = parser.parse_args()
    mp.spawn(worker, args=(args,), nprocs=2)


if __name__ == "__main__":
    main()
