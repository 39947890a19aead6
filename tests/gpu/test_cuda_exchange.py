"""The Ulysses exchanges through peer memory on CUDA, two processes: the symmetric exchange (parallel/symmetric.py,
Triton kernels) and the copy-engine exchange (parallel/copy_engine.py, 2-D copies in head parts).

Each member's q, k, v are laid out as ComfyUI's FLUX blocks hand them over (token-major views of a fused projection
and contiguous head-major tensors), bf16, 24 heads of 128, an uneven split of the sequence.
"""
import time

import pytest
import torch
import torch.nn.functional as F

from rank_processes import join_group, placements, run_ranks

HEADS, DIM = 24, 128
SEQ_LENS = [1282, 1278]   # 512 text tokens + a 1024² image's 4096 would be 4608; smaller keeps the check quick
PARTS = (1, 2, 3)


def _member_inputs(member, device):
    """q as a single block's token-major view, k contiguous, v a view into a fused (L, 3, H, D) projection."""
    generator = torch.Generator().manual_seed(100 + member)
    length = SEQ_LENS[member]
    q = torch.randn(1, length, HEADS, DIM, generator=generator).to(device, torch.bfloat16).transpose(1, 2)
    k = torch.randn(1, HEADS, length, DIM, generator=generator).to(device, torch.bfloat16)
    fused = torch.randn(1, length, 3, HEADS, DIM, generator=generator).to(device, torch.bfloat16)
    return q, k, fused[:, :, 2].transpose(1, 2)


def _attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _graphed(function, device):
    """``function()`` captured as a CUDA graph (after a warm-up on the capture's side stream) and replayed once;
    returns a copy of its output."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        function()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = function()
    graph.replay()
    torch.cuda.synchronize(device)
    result = out.clone()
    del graph
    return result


def _exchanges(rank, world_size, port, one_gpu):
    import torch.distributed as dist
    from comfy_xdit_patch.parallel.copy_engine import CopyEngineUlysses
    from comfy_xdit_patch.parallel.peer_memory import settle
    from comfy_xdit_patch.parallel.symmetric import SymmetricUlysses
    device = join_group(rank, world_size, port, one_gpu)
    ranks = list(range(world_size))
    q, k, v = _member_inputs(rank, device)
    whole = [torch.cat(parts, dim=2) for parts in zip(*(_member_inputs(m, device) for m in ranks))]
    start = sum(SEQ_LENS[:rank])
    reference = _attention(*whole).transpose(1, 2).reshape(1, sum(SEQ_LENS), HEADS * DIM)[
        :, start:start + SEQ_LENS[rank]]

    symmetric = SymmetricUlysses(None, ranks, rank, device)
    eager = symmetric.attention(q, k, v, SEQ_LENS, _attention).clone()
    result = {"symmetric": {"error": _relative_error(eager, reference), "graphed_equal": torch.equal(
        _graphed(lambda: symmetric.attention(q, k, v, SEQ_LENS, _attention), device), eager)}}
    copy_engines = []
    for parts in PARTS:
        exchange = CopyEngineUlysses(None, ranks, rank, device, parts)
        copy_engines.append(exchange)
        out = exchange.attention(q, k, v, SEQ_LENS, _attention).clone()
        graphed = _graphed(lambda: exchange.attention(q, k, v, SEQ_LENS, _attention), device)
        result[f"copy-engine-{parts}"] = {"equal": torch.equal(out, eager),
                                          "graphed_equal": torch.equal(graphed, eager)}
    settle(device)
    for exchange in copy_engines + [symmetric]:
        exchange.release()
    dist.destroy_process_group()
    return result


@pytest.mark.parametrize("one_gpu", placements())
def test_both_exchanges_give_the_attention_over_the_whole_sequence_eager_and_graphed(one_gpu):
    """The symmetric exchange against the attention of the gathered sequence on one device: the same kernel on the
    same values, so only a kernel choice for another head count can differ, at bf16's last bit (1e-2 allows that; a
    misplaced token or head gives an error near 1). The copy-engine exchange in 1, 2, 3 head parts, and every
    exchange replayed from a CUDA graph, bit-equal to the symmetric exchange: the same elements reach the same
    attention."""
    for rank, result in enumerate(run_ranks(_exchanges, 2, one_gpu)):
        assert result["symmetric"]["error"] <= 1e-2, f"rank {rank}: {result}"
        assert result["symmetric"]["graphed_equal"], f"rank {rank}: {result}"
        for parts in PARTS:
            assert result[f"copy-engine-{parts}"] == {"equal": True, "graphed_equal": True}, f"rank {rank}: {result}"


RELEASE_DEADLINE_S = 2.0   # measured on 2xH200: 15 ms (docs/benchmarks.md)


def _abandoned_barrier(rank, world_size, port, one_gpu):
    """Both members exchange once; then member 0 starts another exchange that member 1 never joins, as after a
    helper's death. ``abort`` (a host store) must free member 0's stream."""
    import torch.distributed as dist
    from comfy_xdit_patch.parallel.symmetric import SymmetricUlysses
    device = join_group(rank, world_size, port, one_gpu)
    exchange = SymmetricUlysses(None, list(range(world_size)), rank, device)
    q, k, v = _member_inputs(rank, device)
    exchange.attention(q, k, v, SEQ_LENS, _attention)   # maps the buffers: collective
    torch.cuda.synchronize(device)
    dist.barrier()
    result = {}
    if rank == 0:
        waiting = torch.cuda.Stream(device)
        waiting.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(waiting):
            exchange.scatter_heads(q, k, v, SEQ_LENS)   # its barrier waits for member 1
        time.sleep(0.5)
        result["waiting_before_abort"] = not waiting.query()
        start = time.perf_counter()
        exchange.abort()
        while not waiting.query() and time.perf_counter() - start < 10 * RELEASE_DEADLINE_S:
            time.sleep(0.001)
        result["freed_s"] = time.perf_counter() - start if waiting.query() else None
        torch.cuda.synchronize(device)
    dist.barrier()
    exchange.release()
    dist.destroy_process_group()
    return result


@pytest.mark.parametrize("one_gpu", placements())
def test_a_barrier_whose_peer_never_comes_is_freed_by_abort_within_the_deadline(one_gpu):
    result = run_ranks(_abandoned_barrier, 2, one_gpu)[0]
    assert result["waiting_before_abort"], "the barrier did not wait for the absent member"
    assert result["freed_s"] is not None and result["freed_s"] <= RELEASE_DEADLINE_S, result
