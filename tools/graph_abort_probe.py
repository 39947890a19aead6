"""Measuring tool (not product code): what frees rank 0 when its peer dies while rank 0 replays a CUDA graph that
captured NCCL collectives. Session 4's ring-attention kill under graphs hung in the graph's destructor, the Ulysses
one did not; this isolates the order of "destroy the graphs" and "abort the communicator" for both kinds of exchange.

    python3 tools/graph_abort_probe.py --op a2a|p2p --order clear-first|abort-first|abort-keep

Rank 0 (this process) starts rank 1, both capture a graph of 20 x (matmul + exchange) and replay it once together;
then rank 0 replays again alone, kills rank 1 and tries the order. Every stage prints its time; a stage that never
returns is reported by faulthandler after --limit seconds and the process exits.
"""
import argparse
import faulthandler
import gc
import os
import signal
import subprocess
import sys
import time

import torch
import torch.distributed as dist


def stage(t0, text):
    print(f"[{time.perf_counter() - t0:7.2f} s] {text}", flush=True)


def exchange(op, x, rank):
    if op == "a2a":
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x)
        return out
    peer = 1 - rank
    out = torch.empty_like(x)
    works = dist.batch_isend_irecv([dist.P2POp(dist.isend, x, peer), dist.P2POp(dist.irecv, out, peer)])
    for work in works:
        work.wait()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--op", choices=("a2a", "p2p"), required=True)
    parser.add_argument("--order", choices=("clear-first", "abort-first", "abort-keep"), required=True)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--port", type=int, default=29611)
    parser.add_argument("--limit", type=float, default=30)
    args = parser.parse_args()
    os.environ.setdefault("NCCL_GRAPH_REGISTER", "0")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    t0 = time.perf_counter()
    peer = None
    if args.rank == 0:
        peer = subprocess.Popen([sys.executable, __file__, "--op", args.op, "--order", args.order, "--rank", "1",
                                 "--port", str(args.port)])
    device = torch.device("cuda", args.rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=args.rank, world_size=2, device_id=device)
    x = torch.randn(8192, 3072, device=device, dtype=torch.bfloat16)
    w = torch.randn(3072, 3072, device=device, dtype=torch.bfloat16)

    def step(inp):
        y = inp
        for _ in range(20):
            y = exchange(args.op, y @ w * 0.01, args.rank)
        return y

    step(x)  # warm-up: communicator, cuBLAS
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = step(x)
    graph.replay()
    torch.cuda.synchronize()
    dist.barrier()
    if args.rank == 1:
        time.sleep(3600)   # never replays again: rank 0's next replay waits for it until it is killed
        return
    stage(t0, f"{args.op}: captured and replayed once on both ranks")
    graph.replay()
    time.sleep(1.0)
    peer.kill()
    peer.wait()
    stage(t0, "peer killed while rank 0's replay waits for it")
    faulthandler.dump_traceback_later(args.limit, exit=True)
    graphs = [(graph, out)]
    del graph, out
    if args.order == "clear-first":
        graphs.clear()
        gc.collect()
        stage(t0, "graph destroyed")
        dist.distributed_c10d._abort_process_group()
        stage(t0, "communicator aborted")
    else:
        dist.distributed_c10d._abort_process_group()
        stage(t0, "communicator aborted")
        torch.cuda.synchronize(device)
        stage(t0, "stream drained")
        if args.order == "abort-first":
            graphs.clear()
            gc.collect()
            stage(t0, "graph destroyed")
    y = (x @ w).sum().item()
    stage(t0, f"device usable afterwards (checksum {y:.3g}); {len(graphs)} graph(s) kept")
    faulthandler.cancel_dump_traceback_later()
    os.kill(os.getpid(), signal.SIGKILL) if graphs else None   # a kept graph is never destroyed: leave at once


if __name__ == "__main__":
    main()
