"""The copy-engine Ulysses exchange (parallel/copy_engine.py) computes the attention of the whole sequence for every
member's tokens, in any number of head parts.

The members run as threads of this process on CPU tensors: their buffers are plain tensors all of them write into, as
peers write into mapped GPU memory, the 2-D copies are plain copies through the same addresses, and the barrier is a
thread barrier. What needs GPUs (the copies on a copy engine, their capture, the streams) is checked by
tests/gpu/test_cuda_exchange.py (bit-equal to the symmetric exchange, eager and graphed).
"""
import threading

import pytest
import torch
import torch.nn.functional as F

from comfy_env import attention_inputs
from comfy_xdit_patch.parallel import copy_engine, symmetric


def simulated_group(seq_lens, batch, heads, dim, parts):
    size = len(seq_lens)
    received = [torch.full((3, batch, heads // size, sum(seq_lens), dim), float("nan")) for _ in range(size)]
    outputs = [torch.full((batch, max(seq_lens), heads, dim), float("nan")) for _ in range(size)]
    barrier = threading.Barrier(size, timeout=30)
    members = []
    for member in range(size):
        exchange = copy_engine.CopyEngineUlysses.__new__(copy_engine.CopyEngineUlysses)
        exchange.size, exchange.member, exchange.device = size, member, torch.device("cpu")
        exchange.parts, exchange.side = parts, None
        exchange._shapes = {(batch, heads, dim, tuple(seq_lens), torch.float32):
                            symmetric._Shape.of(None, received, outputs, seq_lens, "cpu")}
        exchange._barrier = barrier.wait
        members.append(exchange)
    return members


def attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("seq_lens,parts,batch", [([6, 6], 1, 1), ([6, 6], 2, 2), ([5, 7], 3, 1),
                                                  ([5, 3, 4], 2, 1), ([3, 4, 5, 4], 3, 2)])
def test_every_member_gets_the_attention_over_the_whole_sequence(seq_lens, parts, batch):
    heads, dim = 12, 16
    members = simulated_group(seq_lens, batch, heads, dim, parts)
    inputs = attention_inputs(seq_lens, batch, heads, dim)   # q and v token-major, k head-major: both paths
    results = [None] * len(members)

    def run(member):
        results[member] = members[member].attention(*inputs[member], seq_lens, attention).clone()

    threads = [threading.Thread(target=run, args=(m,)) for m in range(len(members))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    whole = [torch.cat(ts, dim=2) for ts in zip(*inputs)]
    expected = attention(*whole).transpose(1, 2).reshape(batch, sum(seq_lens), heads * dim)
    start = 0
    for member, length in enumerate(seq_lens):
        assert results[member] is not None, f"member {member} did not finish"
        torch.testing.assert_close(results[member], expected[:, start:start + length], rtol=1e-5, atol=1e-5)
        start += length


def test_the_2d_copy_moves_rows_between_pitches():
    source = torch.arange(24, dtype=torch.uint8).reshape(4, 6)
    target = torch.zeros(3, 8, dtype=torch.uint8)
    copy_engine.copy_2d(torch.device("cpu"), target.data_ptr() + 1, 8, source.data_ptr() + 2, 6, 3, 3)
    assert torch.equal(target[:, 1:4], source[:3, 2:5])
    assert target[:, 0].eq(0).all() and target[:, 4:].eq(0).all()


def test_the_copy_engine_exchange_is_only_used_when_asked_for_and_its_parts_are_checked(monkeypatch):
    """Not yet timed on two GPUs: ``auto`` never picks it. Asked for, it takes the symmetric exchange's conditions
    (CUDA GPUs of one machine, peer access) and a part count that divides each GPU's heads."""
    from comfy_xdit_patch.config import ParallelPlan, check_peer_access
    from comfy_env import plan_for as resolve_plan
    cuda = torch.device("cuda", 0)
    assert all(resolve_plan(2, "ulysses", 24, cuda, visible_cuda=2).ulysses_exchange != "copy-engine"
               for _ in range(2))
    plan = resolve_plan(2, "ulysses", 24, cuda, visible_cuda=2, exchange="copy-engine")
    assert (plan.ulysses_exchange, plan.exchange_parts) == ("copy-engine", 2)
    assert "copy-engine exchange in 2 head parts" in plan.describe()
    assert resolve_plan(2, "ulysses", 24, cuda, visible_cuda=2, exchange="copy-engine", exchange_parts=3
                        ).exchange_parts == 3
    with pytest.raises(ValueError, match=r"exchange_parts must divide the 12 heads each GPU computes: "
                                         r"one of 1, 2, 3, 4, 6, 12, not 5"):
        resolve_plan(2, "ulysses", 24, cuda, visible_cuda=2, exchange="copy-engine", exchange_parts=5)
    with pytest.raises(ValueError, match="exchange 'copy-engine' needs the CUDA GPUs of one machine"):
        resolve_plan(2, "ulysses", 24, torch.device("cpu"), visible_cuda=0, exchange="copy-engine")
    with pytest.raises(ValueError, match=r"exchange 'copy-engine': GPU 0 cannot access GPU 1's memory"):
        check_peer_access(ParallelPlan("cuda", (0, 1), 2, 1, ulysses_exchange="copy-engine", exchange_parts=2,
                                       requested_exchange="copy-engine"), lambda a, b: False)


def test_ulysses_attention_hands_the_whole_call_to_the_copy_engine_exchange():
    """parallel/attention.py: with a copy-engine exchange and no ring, the exchange runs the attention itself (its
    parts pipelined); the result is the attention over the whole sequence."""
    from types import SimpleNamespace
    from comfy_xdit_patch.parallel.attention import sequence_parallel_attention
    seq_lens, batch, heads, dim = [6, 5], 1, 12, 16
    members = simulated_group(seq_lens, batch, heads, dim, parts=2)
    inputs = attention_inputs(seq_lens, batch, heads, dim, seed=3)
    layout = SimpleNamespace(u_lens=seq_lens)
    results = [None] * len(members)

    def run(member):
        mesh = SimpleNamespace(ulysses_exchange=members[member], ulysses_degree=2, ring_degree=1)
        results[member] = sequence_parallel_attention(*inputs[member], mesh, layout, attention).clone()

    threads = [threading.Thread(target=run, args=(m,)) for m in range(len(members))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    expected = attention(*[torch.cat(ts, dim=2) for ts in zip(*inputs)]).transpose(1, 2).reshape(
        batch, sum(seq_lens), heads * dim)
    torch.testing.assert_close(torch.cat(results, dim=1), expected, rtol=1e-5, atol=1e-5)
