"""The symmetric Ulysses exchange through peer memory (parallel/symmetric.py) moves every element where NCCL's all-to-all would.

Its kernels run here in Triton's interpreter on CPU tensors, for every member of a simulated group in one process:
the members' receive buffers are plain tensors that all of them write into, as peers write into mapped GPU memory.
What needs GPUs (the mapping, the barrier, its release after a failure) is checked by tests/gpu/test_cuda_exchange.py.
"""
import pytest
import torch

from comfy_env import attention_inputs
from comfy_xdit_patch.parallel import symmetric


@pytest.fixture(autouse=True)
def interpreted(monkeypatch):
    """The kernels compiled for Triton's interpreter (read when they are compiled, on first use), for these tests
    only: the compiled-kernel cache is emptied before and restored after."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(symmetric, "_scatter_kernel", None)
    monkeypatch.setattr(symmetric, "_gather_kernel", None)
    monkeypatch.setattr(symmetric, "_barrier_kernel", None)
    monkeypatch.setattr(symmetric, "_build_problems", {})


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
        exchange._shapes = {(batch, heads, dim, tuple(seq_lens), dtype):
                            symmetric._Shape.of(None, received, outputs, seq_lens, "cpu")}
        exchange._barrier = lambda: None
        members.append(exchange)
    return members


@pytest.mark.parametrize("seq_lens", [[6, 6], [5, 3, 4]])
def test_scatter_then_gather_moves_every_element_like_the_all_to_all(seq_lens):
    batch, heads, dim, dtype = 2, 6, 16, torch.float32
    members = simulated_group(seq_lens, batch, heads, dim, dtype)
    inputs = attention_inputs(seq_lens, batch, heads, dim)
    gathered = [m.scatter_heads(*inputs[i], seq_lens) for i, m in enumerate(members)]
    local_heads = heads // len(seq_lens)
    for member, qkv in enumerate(gathered):
        heads_of_member = slice(member * local_heads, (member + 1) * local_heads)
        expected = torch.stack([torch.cat([t[:, heads_of_member] for t in ts], dim=2) for ts in zip(*inputs)])
        assert torch.equal(qkv, expected)
    # Back: with the attention left out (its output = the gathered q), every member gets its own q, token-major.
    # The members run one after the other here, so only after the last one are all outputs complete.
    last = [m.gather_heads(gathered[i][0], seq_lens) for i, m in enumerate(members)][-1]
    outputs = members[0]._shapes[next(iter(members[0]._shapes))].outputs
    for member, (q, _, _) in enumerate(inputs):
        length = seq_lens[member]
        expected = q.transpose(1, 2).reshape(batch, length, heads * dim)
        assert torch.equal(outputs[member][:, :length].reshape(batch, length, heads * dim), expected)
    assert torch.equal(last, inputs[-1][0].transpose(1, 2).reshape(batch, seq_lens[-1], heads * dim))



def test_the_exchange_runs_the_same_inside_a_compiled_model():
    """TorchCompileModel compiles ComfyUI's forward around our attention: the exchange is kept out of the graph and
    moves the same elements (Triton's interpreter on CPU; dynamo with its eager backend)."""
    seq_lens, batch, heads, dim = [6, 6], 1, 4, 16
    members = simulated_group(seq_lens, batch, heads, dim, torch.float32)
    torch.manual_seed(0)
    inputs = [tuple(torch.randn(batch, heads, length, dim) for _ in range(3)) for length in seq_lens]
    received = members[0]._shapes[next(iter(members[0]._shapes))].received   # shared by the simulated members
    for i, m in enumerate(members):
        m.scatter_heads(*inputs[i], seq_lens)
    expected = [buffer.clone() for buffer in received]
    for buffer in received:
        buffer.fill_(float("nan"))

    def block(member, q, k, v):
        return member.scatter_heads(q * 1.0, k, v, seq_lens) + 0.0

    torch._dynamo.reset()
    compiled = torch.compile(block, backend="eager")
    for i, m in enumerate(members):
        compiled(m, *inputs[i])
    for buffer, reference in zip(received, expected):
        assert torch.equal(buffer, reference)


def test_every_group_of_a_process_uses_the_exchange_it_was_configured_with(monkeypatch):
    """Through torch's symmetric memory, a second group in ComfyUI's process (after a failure or a settings change)
    waits for rendezvous keys its fresh helpers never write, so only the first could use it. With our
    own peer mapping every group uses its plan's exchange; a group without Ulysses (ring only) has none to make."""
    from comfy_xdit_patch.config import ParallelPlan
    from comfy_env import plan_for as resolve_plan
    cuda = torch.device("cuda", 0)
    assert resolve_plan(2, "ring", 24, cuda, visible_cuda=2, exchange="symmetric").ulysses_exchange == "nccl"
    assert [resolve_plan(2, "ulysses", 24, cuda, visible_cuda=2, exchange="symmetric").ulysses_exchange
            for _ in range(3)] == ["symmetric"] * 3
    symmetric_plan = ParallelPlan("cuda", (0, 1), 2, 1, ulysses_exchange="symmetric")
    assert "nccl" not in symmetric_plan.describe() and "symmetric exchange" in symmetric_plan.describe()
    assert "symmetric" not in ParallelPlan("cuda", (0, 1), 2, 1).describe()


def barrier_member(member, size=2):
    """One member's barrier state on CPU tensors: its epoch, its flags (one slot per peer), the address of its slot
    in every peer's flags, and its host abort flag."""
    exchange = symmetric.SymmetricUlysses.__new__(symmetric.SymmetricUlysses)
    exchange.size, exchange.member = size, member
    exchange.epoch = torch.zeros(1, dtype=torch.int32)
    exchange._own_flags = torch.zeros(size, dtype=torch.int32)
    exchange.abort_flag = torch.zeros(1, dtype=torch.int32)
    return exchange


def link(members):
    for exchange in members:
        exchange._peer_flags = torch.tensor([peer._own_flags.data_ptr() + 4 * exchange.member for peer in members],
                                            dtype=torch.int64)


def test_barrier_raises_its_epoch_in_every_peer_and_passes_once_they_raised_theirs():
    a, b = barrier_member(0), barrier_member(1)
    link([a, b])
    b._own_flags[0] = 1            # member 0 has already arrived at member 1's first barrier... and vice versa:
    a._own_flags[1] = 1
    a._barrier()
    b._barrier()
    assert a.epoch.item() == b.epoch.item() == 1
    assert b._own_flags[0].item() == 1 and a._own_flags[1].item() == 1   # each raised epoch 1 in the other's slot
    a._own_flags[1] = 2            # the peer's second arrival
    a._barrier()
    assert a.epoch.item() == 2 and b._own_flags[0].item() == 2


def test_a_barrier_whose_peer_never_comes_returns_once_the_host_sets_the_abort_flag():
    """What rank 0 needs after a helper died: ``abort`` is a host store; the waiting barrier reads it and returns.
    (Set before the call here: the interpreter runs the kernel on this thread.)"""
    a, b = barrier_member(0), barrier_member(1)
    link([a, b])
    a.abort()
    a._barrier()               # would spin for ever without the flag: member 1 never raised epoch 1
    assert a.epoch.item() == 1 and b._own_flags[0].item() == 1


def test_the_kernels_compile_for_hopper_gpus(monkeypatch):
    """Triton's interpreter runs Python as written; the CUDA compiler is stricter (a loop-carried value must keep one
    type, an integer becomes a pointer only from 64 bits). All three kernels go through it here, for sm_90, no GPU needed;
    the barrier must read the peers' flags with system-scope acquire loads and the host abort flag as volatile."""
    monkeypatch.delenv("TRITON_INTERPRET")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    scatter, gather, barrier = symmetric._kernels()
    target = GPUTarget("cuda", 90, 32)
    compiled = triton.compile(ASTSource(fn=barrier, signature={
        "epoch": "*i32", "own_flags": "*i32", "peer_flags": "*i64", "abort_address": "i64", "member": "i32",
        "SIZE": "constexpr"}, constexprs={"SIZE": 2}), target=target)
    ptx = compiled.asm["ptx"]
    assert "atom.global.sys.release.exch.b32" in ptx and "ld.global.sys.acquire.b32" in ptx
    assert "ld.volatile.global.b32" in ptx
    strides = {name: "i32" for name in ("s_qb", "s_qh", "s_ql", "s_kb", "s_kh", "s_kl", "s_vb", "s_vh", "s_vl",
                                        "d_w", "d_b", "d_h", "d_l")}
    triton.compile(ASTSource(fn=scatter, signature={
        "q": "*bf16", "k": "*bf16", "v": "*bf16", "destinations": "*i64", "length": "i32", "local_heads": "i32",
        "start": "i32", **strides, "DIM": "constexpr", "BLOCK": "constexpr"},
        constexprs={"DIM": 128, "BLOCK": 64}), target=target)
    triton.compile(ASTSource(fn=gather, signature={
        "out": "*bf16", "destinations": "*i64", "spans": "*i32", "local_heads": "i32", "member": "i32", "s_b": "i32",
        "s_h": "i32", "s_l": "i32", "d_b": "i32", "d_l": "i32", "d_h": "i32", "DIM": "constexpr", "BLOCK": "constexpr"},
        constexprs={"DIM": 128, "BLOCK": 64}), target=target)


def test_kernels_that_cannot_be_built_fall_back_to_nccl_or_name_the_setting(monkeypatch):
    """Triton compiles on first use (a C compiler is needed): the node checks once, before any helper starts, with
    a small copy through the gather kernel. Here in Triton's interpreter on CPU, then with kernels that fail."""
    from comfy_xdit_patch.config import ParallelPlan, check_exchange_kernels
    assert symmetric.build_problem(torch.device("cpu")) is None
    plan = ParallelPlan("cuda", (0, 1), 2, 1, ulysses_exchange="symmetric")
    assert check_exchange_kernels(plan, lambda: None) is plan
    assert check_exchange_kernels(plan, lambda: "no C compiler").ulysses_exchange == "nccl"
    asked = ParallelPlan("cuda", (0, 1), 2, 1, ulysses_exchange="symmetric", requested_exchange="symmetric")
    with pytest.raises(ValueError, match=r"cannot be built here \(no C compiler\); set exchange to auto"):
        check_exchange_kernels(asked, lambda: "no C compiler")

    def broken():
        raise RuntimeError("Failed to find C compiler")
    monkeypatch.setattr(symmetric, "_kernels", broken)
    monkeypatch.setattr(symmetric, "_build_problems", {})
    assert "C compiler" in symmetric.build_problem(torch.device("cpu"))
