"""Measuring tool: can the copy engine hide a Ulysses block's exchange behind the attention?

    python3 tools/ce_exchange_probe.py [--res 1024,2048] [--blocks 8] [--replays 15] [--same-gpu]

Two ranks (this process starts both). Per resolution, one rank's half of the joint sequence (512 text tokens + the
image tokens, 24 heads of 128, bf16): q and k head-major, as a double block's are after their concatenation, v a
token-major view of a fused qkv buffer, as a single block's is. Each variant runs one block's exchange, attention
and return of the output, captured as a CUDA graph of --blocks blocks and replayed; the figure is the median time
per block. Variants:
  floor     the attention alone over the gathered sequence (12 heads)
  symmetric the default exchange (parallel/symmetric.py): one kernel writes q, k, v into the peer's attention
            layout, a barrier; the attention; one kernel writes the output back, a barrier
  ce-P      parallel/copy_engine.py: the copy engine instead of SM kernels, in P head parts (P = 1: no overlap):
            per part and peer, q, k and v are one 2-D copy each (cuMemcpy2DAsync: rows of a head's tokens for q and
            k, rows of a token's heads for the token-major v, straight into the peer's buffer, no pack or unpack
            pass) on a side stream, then the barrier there; the attention of part j runs while part j + 1 crosses, and part j's output goes back by
            2-D copies while part j + 1 is computed
Every ce variant's output is compared with the symmetric exchange's first (it must be bit-equal: the attention of a head does not
depend on which other heads run with it). ``--same-gpu``: both ranks on GPU 0 over gloo, for checking the copies,
their capture and the outputs on a one-GPU machine (the times then mean nothing). Results: docs/benchmarks.md.
"""
import argparse
import os
import statistics
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from comfy_xdit_patch.parallel.copy_engine import CopyEngineUlysses  # noqa: E402
from comfy_xdit_patch.parallel.peer_memory import settle  # noqa: E402
from comfy_xdit_patch.parallel.symmetric import SymmetricUlysses  # noqa: E402

HEADS, DIM, TEXT = 24, 128, 512


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


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
            symmetric = SymmetricUlysses(None, [0, 1], rank, device)
            local = HEADS // 2

            def symmetric_block():
                received = symmetric.scatter_heads(q, k, v, seq_lens)
                out = F.scaled_dot_product_attention(received[0], received[1], received[2])
                return symmetric.gather_heads(out, seq_lens)

            floor_q = torch.randn(1, local, sum(seq_lens), DIM, device=device, dtype=torch.bfloat16)
            variants = {"floor": lambda: F.scaled_dot_product_attention(floor_q, floor_q, floor_q),
                        "symmetric": symmetric_block}
            exchanges = {parts: CopyEngineUlysses(None, [0, 1], rank, device, parts) for parts in args.parts}
            for parts, exchange in exchanges.items():
                variants[f"ce-{parts}"] = (lambda e: lambda: e.attention(q, k, v, seq_lens, sdpa))(exchange)
            expected = symmetric_block().clone()
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
                print("| variant | µs a block | equal to symmetric (eager and graphed) | max abs diff |")
                print("|---|---|---|---|")
                for name, per_block, equal, diff in rows:
                    print(f"| {name} | {per_block:.0f} | {'' if equal is None else equal} | {diff:.3g} |")
            settle(device)
            for exchange in exchanges.values():
                exchange.release()
            symmetric.release()
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
