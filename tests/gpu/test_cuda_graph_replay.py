"""The step replayed as a CUDA graph (runtime/step_graphs.py): captured on the second call of a key, replayed after,
with the same result as the eager call; with NCCL collectives inside, on two GPUs, every replay completes."""
import time

import pytest
import torch

from rank_processes import join_group, needs_gpus, run_ranks

REPLAY_DEADLINE_S = 30   # a replay that stalls waits until the collective timeout instead


def _matmuls(weight):
    def forward(inputs):
        x = inputs[0]
        for _ in range(8):
            x = torch.nn.functional.gelu(x @ weight) * 0.5
        return x
    return forward


def test_the_captured_step_replays_what_the_eager_step_computes():
    from comfy_xdit_patch.runtime.step_graphs import CAPTURE, EAGER, REPLAY, StepGraphs
    device = torch.device("cuda", 0)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(512, 512, generator=generator).div(16).to(device)
    inputs = [torch.randn(256, 512, generator=generator).to(device) for _ in range(3)]
    forward, graphs = _matmuls(weight), StepGraphs()
    assert graphs.choose("step") == EAGER
    expected = [forward([x]).clone() for x in inputs]
    assert graphs.choose("step") == CAPTURE
    captured = graphs.run("step", CAPTURE, forward, [inputs[0]]).clone()
    assert "step" in graphs.entries and "step" not in graphs.uncapturable
    assert graphs.choose("step") == REPLAY
    replayed = [graphs.run("step", REPLAY, forward, [x]).clone() for x in inputs[1:]]
    assert torch.equal(captured, expected[0])
    assert all(torch.equal(got, want) for got, want in zip(replayed, expected[1:]))


def _exchange_step(rank, world_size, port):
    """20 x (matmul, NCCL all-to-all) as one step: eager, captured, then replayed on new inputs."""
    import torch.distributed as dist
    from comfy_xdit_patch.runtime.step_graphs import CAPTURE, EAGER, REPLAY, StepGraphs
    device = join_group(rank, world_size, port, one_gpu=False)
    generator = torch.Generator().manual_seed(rank)
    weight = torch.randn(1024, 1024, generator=generator).div(32).to(device, torch.bfloat16)

    def forward(inputs):
        x = inputs[0]
        for _ in range(20):
            y = torch.empty_like(x)
            dist.all_to_all_single(y, x @ weight)
            x = y
        return x

    inputs = [torch.randn(2048, 1024, generator=generator).to(device, torch.bfloat16) for _ in range(4)]
    graphs = StepGraphs()
    expected = [graphs.run("step", EAGER, forward, [x]).clone() for x in inputs]
    equal = [torch.equal(graphs.run("step", CAPTURE, forward, [inputs[0]]), expected[0])]
    slowest = 0.0
    for x, want in zip(inputs[1:], expected[1:]):
        start = time.perf_counter()
        got = graphs.run("step", REPLAY, forward, [x])
        torch.cuda.synchronize(device)
        slowest = max(slowest, time.perf_counter() - start)
        equal.append(torch.equal(got, want))
    captured = "step" in graphs.entries
    graphs.clear()   # graphs that captured a communicator go before it
    dist.destroy_process_group()
    return {"captured": captured, "equal": equal, "slowest_s": slowest}


@needs_gpus(2)
def test_a_step_with_nccl_collectives_replays_on_two_gpus_with_the_eager_result():
    for rank, result in enumerate(run_ranks(_exchange_step, 2)):
        assert result["captured"], f"rank {rank}: the step could not be captured"
        assert result["equal"] == [True] * 4, f"rank {rank}: {result}"
        assert result["slowest_s"] <= REPLAY_DEADLINE_S, f"rank {rank}: a replay stalled: {result}"
