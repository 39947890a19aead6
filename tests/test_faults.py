"""Faults never cost the image or the ComfyUI process: dead helper, stalled helper, Cancel, rank 0 exit."""
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import comfy.model_management
import comfy.sample
from comfy_env import REPO, empty_latent, flux_conditioning, relative_error
from helper_hooks import use_hooked_helpers
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers


def sample(model, steps=4, on_step=None, latent_hw=(18, 14)):
    latent = empty_latent(*latent_hw)["samples"]
    noise = comfy.sample.prepare_noise(latent, 3)
    callback = (lambda step, x0, x, total: on_step(step)) if on_step else None
    return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", flux_conditioning(77, seed=1),
                               flux_conditioning(77, seed=2), latent, callback=callback, disable_pbar=True, seed=3)


@pytest.fixture
def fresh_helpers():
    helpers.shutdown_group()
    yield
    helpers.shutdown_group()


def helper_processes():
    group = helpers.current_group()
    return [] if group is None else list(group.processes.values())


def test_helper_killed_mid_sampling_finishes_the_prompt_on_one_gpu(tiny_flux, fresh_helpers, caplog):
    expected = sample(tiny_flux)
    parallel = enable_multigpu(tiny_flux, gpus=2, parallelism="ring")
    killed = {}

    def kill_at_step_two(step):
        if step == 1:
            victim = helper_processes()[0]
            killed["pid"], killed["at"] = victim.pid, time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)

    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        got = sample(parallel, on_step=kill_at_step_two)
    assert relative_error(got, expected) <= 1e-5
    assert helpers.current_group() is None, "the broken group was not torn down"
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    assert any("one GPU" in r.getMessage() for r in caplog.records)

    # The next prompt starts fresh helpers and runs in parallel again.
    assert relative_error(sample(parallel), expected) <= 1e-5
    fresh = helper_processes()
    assert fresh and fresh[0].pid != killed["pid"] and fresh[0].poll() is None


def test_dead_helper_is_noticed_within_a_second(tiny_flux, fresh_helpers):
    sample(enable_multigpu(tiny_flux, gpus=2, parallelism="ring"), steps=1)
    group = helpers.current_group()
    victim = helper_processes()[0]
    start = time.monotonic()
    victim.kill()
    while group.failure is None and time.monotonic() - start < 5:
        time.sleep(0.02)
    assert group.failure is not None and time.monotonic() - start < 1.0


def test_stalled_helper_is_bounded_by_the_collective_timeout(tiny_flux, fresh_helpers, monkeypatch):
    expected = sample(tiny_flux, steps=3)
    monkeypatch.setenv("COMFY_XDIT_COLLECTIVE_TIMEOUT", "3")
    use_hooked_helpers(monkeypatch, STALL_AT_FORWARD=2)
    start = time.monotonic()
    got = sample(enable_multigpu(tiny_flux, gpus=2, parallelism="ulysses"), steps=3)
    elapsed = time.monotonic() - start
    assert relative_error(got, expected) <= 1e-5
    assert helpers.current_group() is None
    assert elapsed < 30, f"the stall took {elapsed:.0f} s to recover from"


def test_cancel_between_steps_keeps_the_helpers_and_the_next_prompt_works(tiny_flux, fresh_helpers):
    parallel = enable_multigpu(tiny_flux, gpus=2, parallelism="ring")
    sample(parallel, steps=1)
    pids = [p.pid for p in helper_processes()]
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(parallel, on_step=lambda step: step == 1 and comfy.model_management.interrupt_current_processing())
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert [p.pid for p in helper_processes()] == pids, "a cancel between steps must not restart the helpers"
    assert relative_error(sample(parallel), sample(tiny_flux)) <= 1e-5


def test_cancel_inside_a_step_ends_the_helpers_and_the_next_prompt_works(tiny_flux, fresh_helpers):
    """ComfyUI checks Cancel in every layer; a Cancel that lands mid-step leaves the helpers out of step."""
    import comfy.ldm.flux.layers
    parallel = enable_multigpu(tiny_flux, gpus=2, parallelism="ring")
    sample(parallel, steps=1)
    old = helper_processes()
    block = tiny_flux.get_model_object("diffusion_model.single_blocks.0")
    def cancel(*_):
        comfy.model_management.interrupt_current_processing()
    hook = block.register_forward_pre_hook(cancel)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(parallel)
    finally:
        hook.remove()
        comfy.model_management.interrupt_current_processing(False)
    assert helpers.current_group() is None and all(p.poll() is not None for p in old)
    assert relative_error(sample(parallel), sample(tiny_flux)) <= 1e-5


RANK0_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import comfy_env
comfy_env.setup_comfy()
import comfy.sample
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group
model = enable_multigpu(comfy_env.load_tiny_flux(), gpus=3, parallelism="ring")
latent = comfy_env.empty_latent(8, 8)["samples"]
comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 1), 1, 1.0, "euler", "simple",
                    comfy_env.flux_conditioning(8), comfy_env.flux_conditioning(8, seed=2), latent, seed=1)
pids = [p.pid for p in helper_group.current_group().processes.values()]
print("HELPERS", *pids, flush=True)
if {stop_helpers}:   # helpers that no Python thread of theirs can run in (as behind a blocked CUDA launch queue)
    import signal
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
os._exit(0)   # as a crash would: no shutdown, no atexit
"""


@pytest.mark.parametrize("stop_helpers", [False, True], ids=["running", "stopped"])
def test_helpers_exit_by_themselves_when_rank0_dies(stop_helpers):
    """Running helpers notice through their watch thread; stopped ones are killed by the kernel (PR_SET_PDEATHSIG)."""
    script = RANK0_SCRIPT.format(tests=os.path.join(REPO, "tests"), stop_helpers=stop_helpers)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=REPO))
    pids = [int(p) for line in out.stdout.splitlines() if line.startswith("HELPERS") for p in line.split()[1:]]
    assert len(pids) == 2, out.stderr[-2000:]
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        assert time.monotonic() < deadline, "helpers outlived rank 0 by more than 5 s"
        time.sleep(0.1)


def test_helper_killed_inside_a_step_is_rerun_on_one_gpu(tiny_flux, fresh_helpers):
    """The helper dies while rank 0 is in the middle of a step (inside the blocks, before their collectives)."""
    expected = sample(tiny_flux, steps=2)
    parallel = enable_multigpu(tiny_flux, gpus=2, parallelism="ulysses")
    sample(parallel, steps=1)
    victim = helper_processes()[0]
    block = tiny_flux.get_model_object("diffusion_model.double_blocks.1")
    def kill(*_):
        if victim.poll() is None:
            victim.kill()
    hook = block.register_forward_pre_hook(kill)
    try:
        start = time.monotonic()
        got = sample(parallel, steps=2)
    finally:
        hook.remove()
    assert relative_error(got, expected) <= 1e-5
    assert time.monotonic() - start < 20
    assert helpers.current_group() is None or helpers.current_group().processes[1].pid != victim.pid


def test_a_helper_of_another_version_is_refused_with_a_message(tiny_flux, fresh_helpers, monkeypatch, caplog):
    use_hooked_helpers(monkeypatch, VERSIONS="comfy_xdit_patch=0.0.1")
    expected = sample(tiny_flux, steps=1)
    with caplog.at_level(logging.ERROR, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(tiny_flux, gpus=2, parallelism="ring"), steps=1)
    assert relative_error(got, expected) == 0.0
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "comfy_xdit_patch 0.0.1 on the helper vs 0.1.0 on rank 0" in message
    assert "Install the same ComfyUI, torch and comfy-xdit-patch on every machine" in message
    assert helpers.current_group() is None


@pytest.mark.parametrize("where", ["init", "sync"])
def test_a_helper_dying_during_start_up_or_weight_sync_is_noticed_at_once(tiny_flux, fresh_helpers, monkeypatch,
                                                                          caplog, where):
    """Rank 0 would otherwise wait inside the rendezvous or the weight broadcast until the collective timeout."""
    monkeypatch.setenv("COMFY_XDIT_COLLECTIVE_TIMEOUT", "8")
    expected = sample(tiny_flux, steps=1)
    parallel = enable_multigpu(tiny_flux, gpus=2, parallelism="ring")
    use_hooked_helpers(monkeypatch, EXIT_AT=where)
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        got = sample(parallel, steps=1)
    assert time.monotonic() - start < 6, "rank 0 waited for the collective timeout"
    assert relative_error(got, expected) == 0.0
    assert any("this prompt runs on one GPU" in r.getMessage() for r in caplog.records)
    assert helpers.current_group() is None
    # The abandoned collective ends at its timeout; a prompt after that runs parallel again with sound helpers.
    monkeypatch.delenv("COMFY_XDIT_TEST_EXIT_AT")
    deadline = time.monotonic() + 30
    while helpers._abandoned_phase is not None and helpers._abandoned_phase.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert relative_error(sample(parallel, steps=1), expected) <= 1e-5
    assert helpers.current_group() is not None and helpers.current_group().alive()


def test_an_abort_that_never_returns_is_set_aside_after_its_deadline(monkeypatch, caplog):
    """NCCL's abort can hang with several stuck communicators: ComfyUI's thread waits at most the deadline."""
    monkeypatch.setattr(helpers, "_unreleased_group", None)
    never = threading.Event()
    start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="comfy_xdit_patch"):
        returned = helpers.abort_within(never.wait, 0.5)
    assert not returned and time.monotonic() - start < 2
    assert "did not return within" in helpers._unreleased_group
    assert any("set aside" in r.getMessage() for r in caplog.records)
    never.set()
    assert helpers.abort_within(lambda: None, 5) is True


def test_nccl_watchdog_never_ends_comfyuis_process(tiny_flux, fresh_helpers):
    """Rank 0's NCCL watchdog only cleans up on a timeout and its heartbeat monitor is off; helpers keep tearing
    down (they are read from the environment when the NCCL process group is made)."""
    sample(enable_multigpu(tiny_flux, gpus=2, parallelism="ring"), steps=1)
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "2"
    assert os.environ["TORCH_NCCL_ENABLE_MONITORING"] == "0"
    helper_env = psutil.Process(helper_processes()[0].pid).environ()
    assert helper_env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
    assert helper_env["TORCH_NCCL_ENABLE_MONITORING"] == "1"


@pytest.mark.parametrize("name,value", [("torch", "2.0.0"), ("cuda", "11.8"), ("nccl", "2.18.1"),
                                        ("plugin code", "0123456789abcdef")])
def test_a_helper_with_other_torch_cuda_nccl_or_plugin_code_is_refused(tiny_flux, fresh_helpers, monkeypatch, caplog,
                                                                        name, value):
    from comfy_xdit_patch.runtime import versions
    use_hooked_helpers(monkeypatch, VERSIONS=f"{name}={value}")
    expected = sample(tiny_flux, steps=1)
    with caplog.at_level(logging.ERROR, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(tiny_flux, gpus=2, parallelism="ring"), steps=1)
    assert relative_error(got, expected) == 0.0
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"{name} {value} on the helper vs {versions.local_versions()[name]} on rank 0" in message
    assert helpers.current_group() is None


def test_a_corrupted_weight_transfer_is_caught_and_the_prompt_runs_on_one_gpu(tiny_flux, fresh_helpers, monkeypatch,
                                                                               caplog):
    use_hooked_helpers(monkeypatch, CORRUPT_WEIGHTS=1)
    expected = sample(tiny_flux, steps=2)
    with caplog.at_level(logging.ERROR, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(tiny_flux, gpus=2, parallelism="ulysses"), steps=2)
    assert relative_error(got, expected) == 0.0
    assert any("differ from rank 0's" in r.getMessage() for r in caplog.records)
    assert helpers.current_group() is None


def test_helpers_started_with_comfyui_make_the_first_prompt_wait_only_to_join(tiny_flux, fresh_helpers, monkeypatch):
    """COMFY_XDIT_PRESTART_GPUS: the slow half of a start (processes, ComfyUI's import) happens before any prompt; the
    first prompt on the same devices only joins them. Helpers on other devices are stopped and fresh ones start."""
    expected = sample(tiny_flux, steps=2)
    monkeypatch.setenv("COMFY_XDIT_PRESTART_GPUS", "3")
    waiting = helpers.prestart_from_settings()
    deadline = time.monotonic() + 60
    while not waiting.channels or len(waiting.start_phases) < 4:
        assert time.monotonic() < deadline, "the helpers started with ComfyUI never got ready"
        time.sleep(0.1)
    launched = [p.pid for p in waiting.processes.values()]
    start = time.monotonic()
    got = sample(enable_multigpu(tiny_flux, gpus=3, parallelism="ring"), steps=2)
    assert relative_error(got, expected) <= 1e-5
    group = helpers.current_group()
    assert group is waiting and [p.pid for p in group.processes.values()] == launched
    assert {"spawn", "import ComfyUI", "process group"} <= set(group.start_phases)
    waited = time.monotonic() - start
    assert waited < 10, f"the first prompt took {waited:.1f} s"

    helpers.shutdown_group()
    waiting = helpers.prestart_from_settings()    # for 3 ranks; the prompt asks for 2
    got = sample(enable_multigpu(tiny_flux, gpus=2, parallelism="ring"), steps=2)
    assert relative_error(got, expected) <= 1e-5
    group = helpers.current_group()
    assert group is not waiting and group.plan.world_size == 2
    assert all(p.poll() is not None for p in waiting.processes.values()) or not waiting.processes
