"""The CUDA-graph policy every rank follows (the capture itself needs a GPU: see docs/benchmarks.md)."""
import pickle
import threading
import time
import uuid

import pytest

from comfy_xdit_patch.config import ParallelPlan
from comfy_xdit_patch.runtime import helper_group as helpers
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


def test_graphs_survive_a_sampling_run_only_while_the_weights_stay_where_they_were():
    group = helpers.HelperGroup(ParallelPlan("cpu", (None, None), 2, 1))
    group.new_sampling_run(1234)
    first = group.generation
    group.graphs.entries["k"] = object()
    group.new_sampling_run(1234)                        # same model, same syncs, same addresses: kept
    assert group.generation == first and "k" in group.graphs.entries
    group.new_sampling_run(5678)                        # ComfyUI moved the weights: forgotten
    assert group.generation == first + 1 and not group.graphs.entries
    group.graphs.entries["k"] = object()
    group.weight_syncs += 1                             # weights re-sent (a LoRA strength changed)
    group.new_sampling_run(5678)
    assert group.generation == first + 2 and not group.graphs.entries
    group.new_sampling_run(None)                        # graphs not allowed: never kept
    group.new_sampling_run(None)
    assert group.generation == first + 4


def test_a_warm_prompt_finds_the_previous_prompts_graph_keys():
    """ComfyUI gives the conditionings new uuids every sampling run; the graph key leaves their values out, and
    nothing else."""

    def key(uuids, cond_or_uncond=(0,)):
        skeleton = {"x": "slot0", "transformer_options": {"uuids": uuids, "cond_or_uncond": list(cond_or_uncond)}}
        return pickle.dumps(helpers.graph_structure(skeleton))

    assert key([uuid.uuid4()]) == key([uuid.uuid4()])
    assert key([uuid.uuid4()]) != key([uuid.uuid4(), uuid.uuid4()])
    assert key([uuid.uuid4()], (0,)) != key([uuid.uuid4()], (1,))
    assert helpers.graph_structure({"x": 1}) == {"x": 1}


def test_failed_groups_graphs_are_destroyed_beside_the_abort_not_before_it():
    """On 2×H200 a graph replaying against a killed ring peer does not let its destructor return until the
    communicator is aborted, and the abort waits for the graphs to be gone. The destruction runs on its own thread,
    so the abort (here: the event the stuck graph waits for) can be issued meanwhile."""
    aborted = threading.Event()
    reset = []

    class StuckGraph:
        def reset(self):
            assert aborted.wait(10)
            reset.append(self)

    graphs = StepGraphs()
    graphs.entries.update(a=(StuckGraph(), [], None), b=(StuckGraph(), [], None))
    destroyed = graphs.destroy_in_background()
    assert not destroyed.wait(0.2)      # the caller is not held by the stuck destructor
    aborted.set()                       # what NCCL's abort does to the stuck replay
    assert destroyed.wait(5) and len(reset) == 2


def test_a_failed_group_aborts_while_its_graphs_are_being_destroyed(monkeypatch):
    """HelperGroup.shutdown after a failure: the graphs' destruction starts, the abort is issued while it is still
    blocked (as the ring kill's was), and the group waits for both before it lets go of the graphs."""
    helpers.shutdown_group()      # no live process group of other tests may be released by this one
    group = helpers.HelperGroup(ParallelPlan("cpu", (None, None), 2, 1))
    started, aborted, order = threading.Event(), threading.Event(), []

    class StuckGraph:
        def reset(self):
            order.append("destroy started")
            started.set()
            assert aborted.wait(10)
            order.append("destroyed")

    def abort(wait_s=None):
        started.wait(10)    # a loaded machine may start the destroying thread late; the order is what is checked
        order.append("abort")
        aborted.set()

    group.graphs.entries["k"] = (StuckGraph(), [], None)
    monkeypatch.setattr(group, "abort_collectives", abort)
    group.shutdown(graceful=False)
    assert order == ["destroy started", "abort", "destroyed"]
    assert not group.graphs.entries


def test_graphs_that_cannot_be_destroyed_leave_the_group_and_later_prompts_run_on_one_gpu(monkeypatch):
    """If a failed group's graphs never finish destroying, its process group cannot be destroyed either (that would
    wait for them): shutdown returns after its bound, leaves the group, and a later start refuses at once with a
    message instead of hanging on the old group."""
    helpers.shutdown_group()
    monkeypatch.setattr(helpers, "_unreleased_group", None)    # restored after the test
    released = []
    monkeypatch.setattr(helpers.dist, "destroy_process_group", lambda *a: released.append(a))
    never = threading.Event()

    class NeverDestroyed:
        def reset(self):
            never.wait(60)

    group = helpers.HelperGroup(ParallelPlan("cpu", (None, None), 2, 1))
    group.graphs.entries["k"] = (NeverDestroyed(), [], None)
    monkeypatch.setattr(helpers.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(helpers, "_owned_default_group", True)
    started = time.monotonic()
    try:
        group.shutdown(graceful=False)
        assert time.monotonic() - started < 15 and not released
        with pytest.raises(helpers.HelperFailure, match="could not be freed.*until ComfyUI is restarted"):
            helpers.HelperGroup(ParallelPlan("cpu", (None, None), 2, 1)).start()
        assert not released
    finally:
        never.set()


def test_a_refused_replay_drops_every_ranks_graphs_and_a_refused_capture_waits(monkeypatch):
    """Dynamic VRAM: rank 0 asks before each capture and replay whether its weights are where the graph needs them
    (``graph_ready``). A refused capture runs eagerly and is tried again next call; a refused replay (a weight page
    was evicted since the capture) runs eagerly and starts a new generation, so every rank captures anew."""
    import types
    import torch
    group = helpers.HelperGroup(ParallelPlan("cpu", (None, None), 2, 1))
    sent = []
    monkeypatch.setattr(group, "_broadcast_message", sent.append)
    monkeypatch.setattr(helpers.transport, "send_tensors", lambda tensors, device: None)
    group.scheduler = types.SimpleNamespace(place=lambda x, out_channels: None)   # one sequence-parallel group
    group.new_sampling_run(None)
    answers = {CAPTURE: [False, True, True], REPLAY: [True, False]}
    asked = []

    def graph_ready(mode):
        asked.append(mode)
        return answers[mode].pop(0)

    def call():
        message, _ = group.dispatch_forward({"x": torch.zeros(1, 2)}, True, None, graph_ready)
        if message.mode == CAPTURE:
            group.graphs.entries[message.graph_key] = object()   # what a successful capture leaves behind
        return message.mode, sent[-1].generation                # the mode and the generation the helpers were sent

    generation = group.generation
    assert [call() for _ in range(5)] == [(EAGER, generation), (EAGER, generation), (CAPTURE, generation),
                                          (REPLAY, generation), (EAGER, generation + 1)]
    assert asked == [CAPTURE, CAPTURE, REPLAY, REPLAY] and not group.graphs.entries
    assert call() == (CAPTURE, generation + 1)   # the refused replay's eager call was the new graph's warm-up


class _FakeVbar:
    """comfy-aimdo's ModelVBAR as ResidentWeights uses it: pages of 32 MB, each with a signature that changes when
    the page is evicted and faulted back; fault pins, unpin unpins."""
    PAGE = 32 << 20

    def __init__(self):
        self.generation = {}
        self.pins = 0

    def evict(self, address):
        page = address // self.PAGE
        self.generation[page] = self.generation.get(page, 0) + 1

    def fault(self, address, size):
        self.pins += 1
        return [self.generation.get(page, 0) for page in range(address // self.PAGE,
                                                               (address + size - 1) // self.PAGE + 1)]

    def unpin(self, address, size):
        self.pins -= 1


def test_resident_weights_pin_for_capture_and_replay_only_while_no_page_moved(monkeypatch):
    import sys
    import types
    import torch
    from comfy_xdit_patch.runtime.resident_weights import ResidentWeights
    vbar = _FakeVbar()
    model_vbar = types.SimpleNamespace(vbar_fault=lambda alloc: alloc[0].fault(alloc[1], alloc[2]),
                                       vbar_unpin=lambda alloc: alloc[0].unpin(alloc[1], alloc[2]),
                                       vbar_signature_compare=lambda a, b: a is not None and b is not None and a == b)
    monkeypatch.setitem(sys.modules, "comfy_aimdo", types.SimpleNamespace(model_vbar=model_vbar))
    monkeypatch.setitem(sys.modules, "comfy_aimdo.model_vbar", model_vbar)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.ReLU())
    assert ResidentWeights.of(model) is None                       # classic loading: no vbar weights
    page = _FakeVbar.PAGE
    model[0]._v, model[1]._v = (vbar, 0, page), (vbar, page + 512, page)
    resident = ResidentWeights.of(model)
    assert (resident.start, resident.size) == (0, 2 * page + 512) and len(resident.modules) == 2
    assert not resident.pin_for_capture() and vbar.pins == 0      # ComfyUI never copied them in yet
    for module in (model[0], model[1]):                            # what ComfyUI's cast path leaves behind
        module._v_signature = vbar.fault(*module._v[1:])
        vbar.unpin(0, 0)
    assert resident.pin_for_capture() and vbar.pins == 1
    resident.unpin()
    assert vbar.pins == 0 and resident.pin_for_replay() and vbar.pins == 1
    resident.unpin()
    resident.unpin()                                               # once: a second unpin does nothing
    assert vbar.pins == 0
    vbar.evict(page + 1024)                                        # the second weight's page went and came back
    assert not resident.pin_for_replay() and vbar.pins == 0
    only_first = ResidentWeights.of(model, excluded=[model[1]])   # sharded blocks: gathered, not read from the vbar
    assert only_first.modules == [model[0]] and only_first.size == page
    other = _FakeVbar()
    model[1]._v = (other, 0, page)
    assert ResidentWeights.of(model) is None                       # two ranges: eager


def test_a_weight_check_that_fails_runs_the_step_eagerly(caplog):
    """comfy-aimdo may refuse a fault (it raises for anything but success or out-of-memory): the step then runs
    eagerly with a warning, never fails the prompt."""
    import logging
    import types
    from comfy_xdit_patch.multigpu import MultiGPURun

    def refuse():
        raise RuntimeError("Fault failed: 2")

    run = MultiGPURun(ParallelPlan("cpu", (None, None), 2, 1))
    assert run._graph_ready(CAPTURE) and run._graph_ready(REPLAY)          # classic loading: nothing to check
    run.resident_weights = types.SimpleNamespace(pin_for_capture=refuse, pin_for_replay=lambda: True)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        assert run._graph_ready(CAPTURE) is False and run._graph_ready(REPLAY) is True
    assert "could not check where the weights are (RuntimeError: Fault failed: 2)" in caplog.text


def test_a_failed_step_unpins_the_weights_before_comfyui_reruns_it(monkeypatch):
    """After a failed parallel step under dynamic VRAM, ComfyUI's own 1-GPU step faults and unpins weight by weight:
    the range pinned for the replay is let go first."""
    import types
    from comfy_xdit_patch.multigpu import MultiGPURun
    monkeypatch.setattr(helpers, "shutdown_group", lambda reason, graceful=True: None)
    state = types.SimpleNamespace(pinned=True)
    run = MultiGPURun(ParallelPlan("cpu", (None, None), 2, 1))
    run.resident_weights = types.SimpleNamespace(unpin=lambda: setattr(state, "pinned", False))
    assert run._recover(RuntimeError("helper died"), lambda: "pinned" if state.pinned else "unpinned") == "unpinned"
