"""The CUDA-graph policy every rank follows (the capture itself needs a GPU: see docs/benchmarks.md)."""
from comfy_xdit_patch.runtime.step_graphs import CAPTURE, EAGER, REPLAY, StepGraphs


def test_first_call_warms_up_second_captures_then_replays_even_with_alternating_keys():
    graphs = StepGraphs()
    modes = []
    for key in ["cond", "uncond", "cond", "uncond"]:
        mode = graphs.choose(key)
        modes.append(mode)
        if mode == CAPTURE:           # what a successful capture leaves behind
            graphs.entries[key] = object()
    assert modes == [EAGER, EAGER, CAPTURE, CAPTURE]
    assert graphs.choose("cond") == REPLAY


def test_a_new_sampling_run_forgets_every_graph_and_failed_keys_stay_eager():
    graphs = StepGraphs()
    graphs.reset(1)
    graphs.choose("a")
    graphs.uncapturable.add("a")
    assert graphs.choose("a") == EAGER
    graphs.reset(2)
    assert graphs.choose("a") == EAGER and graphs.choose("a") == CAPTURE


def test_eager_mode_runs_the_forward_on_the_given_inputs():
    assert StepGraphs().run("k", EAGER, lambda inputs: sum(inputs), [1, 2]) == 3
