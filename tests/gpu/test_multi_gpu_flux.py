"""Enable Multi-GPU on ComfyUI's own FLUX on every visible GPU, against ComfyUI's own one-GPU result.

The model is the tiny random FLUX of the CPU tests (4 heads, fp32), loaded by ComfyUI's loader onto the GPU and
sampled by ComfyUI's sampler (bench.run_sampler). fp32 keeps the comparison tight: kernels picked per shape round
differently in fp32's last bits, which stays far below 1e-4, while a token or head in the wrong place costs an
error of order 1. ComfyUI runs in a fresh process (the test process imported it for the CPU).
"""
import torch

from rank_processes import needs_gpus, run_ranks

RES, TOKENS, STEPS = 256, 128, 9
ERROR_BOUND = 1e-4
KILLED_PROMPT_DEADLINE_S = 30   # on 2xH200 a killed helper cost 0.7-2.0 s (docs/benchmarks.md)


def _visible_gpus():
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _comfy_on_gpu():
    """ComfyUI on the GPU in this process, a settled tiny FLUX on it, and the list that records every CUDA-graph
    mode rank 0 runs a step in."""
    import os
    import comfy_env
    os.environ.setdefault("COMFYUI_PATH", comfy_env.COMFYUI_PATH)
    from comfy_xdit_patch.bench import TINY, load_random_flux, settle, setup_comfy
    setup_comfy(False)
    import comfy.model_management
    from comfy_xdit_patch.runtime.step_graphs import StepGraphs
    modes, run = [], StepGraphs.run

    def recorded(self, key, mode, forward, inputs):
        modes.append(mode)
        return run(self, key, mode, forward, inputs)

    StepGraphs.run = recorded
    device = comfy.model_management.get_torch_device()
    model = load_random_flux(TINY, torch.float32, device)
    settle(model, [RES], TOKENS, device)   # no reference from the process's first prompt (bench.settle)
    return model, device, modes


def _one_vs_every_gpu(_rank, _world_size, _port, gpus):
    model, device, modes = _comfy_on_gpu()   # before anything that imports ComfyUI
    from comfy_xdit_patch.bench import conditioning, run_sampler
    from comfy_xdit_patch.multigpu import enable_multigpu
    from comfy_xdit_patch.runtime import helper_group as helpers
    latent = torch.zeros(1, 16, RES // 8, RES // 8)
    positive, negative = conditioning(TOKENS, 1), conditioning(TOKENS, 2)
    try:
        one, _, _ = run_sampler(model, latent, positive, negative, STEPS, device)
        many, _, _ = run_sampler(enable_multigpu(model, gpus=gpus), latent, positive, negative, STEPS, device)
        group = helpers.current_group()
        world_size = group.plan.world_size if group is not None and group.alive() else None
    finally:
        helpers.shutdown_group()
    error = ((many.float() - one.float()).norm() / one.float().norm()).item()
    return {"error": error, "world_size": world_size, "modes": modes}


@needs_gpus(2)
def test_every_visible_gpu_samples_what_one_gpu_samples():
    gpus = _visible_gpus()
    result = run_ranks(_one_vs_every_gpu, 1, gpus, timeout=420)[0]
    assert result["world_size"] == gpus, f"the helpers did not run on all {gpus} GPUs: {result}"
    assert "replay" in result["modes"], f"no step was replayed as a CUDA graph: {result['modes']}"
    assert result["error"] <= ERROR_BOUND, result


def _killed_helper(_rank, _world_size, _port, gpus):
    """evidence.py's kill scenario: a helper SIGKILLed between two graph replays of a prompt; that prompt finishes
    on one GPU, the next starts fresh helpers."""
    import argparse
    model, device, modes = _comfy_on_gpu()   # before anything that imports ComfyUI
    from comfy_xdit_patch import evidence
    from comfy_xdit_patch.bench import TINY
    from comfy_xdit_patch.runtime import helper_group as helpers
    args = argparse.Namespace(gpus=gpus, parallelism="auto", shard_weights=False, steps=STEPS)
    try:
        killed, again = evidence.kill(args, model, device, TINY, torch.float32, RES, TOKENS)
    finally:
        helpers.shutdown_group()
    return {"killed_prompt_s": killed[3] / 1e3, "killed_error": killed[4], "next_error": again[4],
            "next_note": again[5], "modes": modes}


@needs_gpus(2)
def test_a_helper_killed_while_steps_replay_costs_the_prompt_nothing_but_time():
    result = run_ranks(_killed_helper, 1, _visible_gpus(), timeout=420)[0]
    assert "replay" in result["modes"], f"no step was replayed as a CUDA graph: {result['modes']}"
    assert result["killed_prompt_s"] <= KILLED_PROMPT_DEADLINE_S, result
    assert result["killed_error"] <= ERROR_BOUND, result
    assert result["next_note"] == "helpers running: True", result
    assert result["next_error"] <= ERROR_BOUND, result
