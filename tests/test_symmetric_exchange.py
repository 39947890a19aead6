"""The symmetric-memory Ulysses exchange (parallel/symmetric.py) moves every element where NCCL's all-to-all would.

Its kernels run here in Triton's interpreter on CPU tensors, for every member of a simulated group in one process:
the members' receive buffers are plain tensors that all of them write into, as peers write into mapped GPU memory.
What needs GPUs (the mapping, the barrier, its release after a failure) is measured by tools/symm_exchange_probe.py
on 2×H200 (docs/benchmarks.md).
"""
import os

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"   # before the kernels are compiled (on first use)

from comfy_xdit_patch.parallel import symmetric  # noqa: E402


def simulated_group(seq_lens, batch, heads, dim, dtype):
    """One SymmetricUlysses per member, sharing receive buffers as mapped peers would; barriers are no-ops (the
    members run one after the other)."""
    size = len(seq_lens)
    received = [torch.full((3, batch, heads // size, sum(seq_lens), dim), float("nan"), dtype=dtype)
                for _ in range(size)]
    outputs = [torch.full((batch, max(seq_lens), heads, dim), float("nan"), dtype=dtype) for _ in range(size)]
    members = []
    for member in range(size):
        exchange = symmetric.SymmetricUlysses.__new__(symmetric.SymmetricUlysses)
        exchange.size, exchange.member, exchange.device = size, member, torch.device("cpu")
        exchange._shapes = {(batch, heads, dim, tuple(seq_lens), dtype): (None, None, received, outputs)}
        exchange._barrier = lambda: None
        members.append(exchange)
    return members


@pytest.mark.parametrize("seq_lens", [[6, 6], [5, 3, 4]])
def test_scatter_then_gather_moves_every_element_like_the_all_to_all(seq_lens):
    batch, heads, dim, dtype = 2, 6, 16, torch.float32
    members = simulated_group(seq_lens, batch, heads, dim, dtype)
    torch.manual_seed(0)
    inputs = []
    for length in seq_lens:
        # As ComfyUI hands them over: q token-major (a single block's permuted view), k contiguous, v a view into a
        # packed qkv tensor (last dimension contiguous in every case).
        q = torch.randn(batch, length, heads, dim).transpose(1, 2)
        k = torch.randn(batch, heads, length, dim)
        v = torch.randn(batch, length, 3, heads, dim)[:, :, 2].transpose(1, 2)
        inputs.append((q, k, v))
    gathered = [m.scatter_heads(*inputs[i], seq_lens) for i, m in enumerate(members)]
    local_heads = heads // len(seq_lens)
    for member, qkv in enumerate(gathered):
        heads_of_member = slice(member * local_heads, (member + 1) * local_heads)
        expected = torch.stack([torch.cat([t[:, heads_of_member] for t in ts], dim=2) for ts in zip(*inputs)])
        assert torch.equal(qkv, expected)
    # Back: with the attention left out (its output = the gathered q), every member gets its own q, token-major.
    # The members run one after the other here, so only after the last one are all outputs complete.
    last = [m.gather_heads(gathered[i][0], seq_lens) for i, m in enumerate(members)][-1]
    outputs = members[0]._shapes[next(iter(members[0]._shapes))][3]
    for member, (q, _, _) in enumerate(inputs):
        length = seq_lens[member]
        expected = q.transpose(1, 2).reshape(batch, length, heads * dim)
        assert torch.equal(outputs[member][:, :length].reshape(batch, length, heads * dim), expected)
    assert torch.equal(last, inputs[-1][0].transpose(1, 2).reshape(batch, seq_lens[-1], heads * dim))



def test_only_the_first_group_of_a_process_uses_symmetric_memory(monkeypatch, caplog):
    """torch numbers symmetric-memory rendezvous per process: a second group (after a failure or a settings change)
    would wait for keys its fresh helpers never write (it hung on 2×H200), so it uses NCCL and says so."""
    from comfy_xdit_patch.config import ParallelPlan
    from comfy_xdit_patch.runtime import group
    monkeypatch.setattr(group, "_symmetric_exchange_used", False)
    symmetric_plan = ParallelPlan("cuda", (0, 1), 2, 1, ulysses_exchange="symmetric")
    assert group._exchange_for_this_group(ParallelPlan("cuda", (0, 1), 2, 1)) == "nccl"
    # A ring-only group has no Ulysses exchange: it does not use up the process's one symmetric group.
    group._exchange_for_this_group(ParallelPlan("cuda", (0, 1), 1, 2, ulysses_exchange="symmetric"))
    assert group._exchange_for_this_group(symmetric_plan) == "symmetric"
    with caplog.at_level("WARNING"):
        assert group._exchange_for_this_group(symmetric_plan) == "nccl"
    assert "one group per ComfyUI process" in caplog.text
    assert "nccl" not in symmetric_plan.describe() and "symmetric exchange" in symmetric_plan.describe()
    assert "symmetric" not in symmetric_plan.describe("nccl")


def test_buffers_a_captured_graph_writes_into_outlive_their_eviction(monkeypatch):
    """A graph replays into the buffers it was captured with, without passing through the exchange's Python: so the
    exchange lists what a capture used and the step graph holds it, while the exchange itself keeps only the most
    recently used shapes."""
    import contextlib
    from comfy_xdit_patch.runtime import step_graphs

    exchange = symmetric.SymmetricUlysses.__new__(symmetric.SymmetricUlysses)
    exchange._shapes = {}
    allocated = []

    def allocate(batch, heads, dim, seq_lens, dtype):
        allocated.append(object())
        return allocated[-1]

    exchange._allocate = allocate
    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])

    class FakeGraph:
        def replay(self):
            pass

    @contextlib.contextmanager
    def fake_capture(graph, **kwargs):
        capturing[0] = True
        yield
        capturing[0] = False

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_capture)
    graphs = step_graphs.StepGraphs()
    shape = lambda length: exchange._buffers(1, 2, 8, [length, length], torch.float32)
    graphs.run("1024", step_graphs.CAPTURE, lambda inputs: shape(1024) and torch.zeros(1), [torch.zeros(1)])
    captured = allocated[0]
    assert graphs.entries["1024"][3] == [captured]
    for length in (1, 2, 3, 4):   # four more shapes, run eagerly, evict the captured one from the exchange
        shape(length)
    assert captured not in exchange._shapes.values() and len(exchange._shapes) == symmetric._KEPT_SHAPES
    assert graphs.entries["1024"][3] == [captured]    # still held by its graph
    assert symmetric.captured_buffers == []           # nothing listed outside a capture
    shape(3)
    assert list(exchange._shapes.values())[-1] is allocated[3]   # a hit becomes the most recently used
