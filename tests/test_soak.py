"""50 prompts in a row (resolution, LoRA on/off, Enable on/off varying): nothing grows after the first prompt."""
import os

import nodes
import psutil

from comfy_env import empty_latent, flux_conditioning
from comfy_xdit_patch.nodes import EnableMultiGPU
from comfy_xdit_patch.runtime import helper_group as helpers


def footprint():
    me = psutil.Process()
    group = helpers.current_group()
    procs = [me] + [psutil.Process(p.pid) for p in (group.processes.values() if group else [])]
    return {
        "rss": sum(p.memory_info().rss for p in procs),
        "children": len(me.children(recursive=True)),
        "threads": me.num_threads(),
        "thread_names": sorted(t.name for t in __import__("threading").enumerate()),
        "fds": me.num_fds(),
        "sockets": len(me.net_connections(kind="inet")),
        "shm": len(os.listdir("/dev/shm")),
    }


def test_thirty_prompts_leave_no_growth(model_files):
    helpers.shutdown_group()
    unet = nodes.UNETLoader().load_unet("tiny_flux.safetensors", "default")[0]
    lora = nodes.LoraLoaderModelOnly().load_lora_model_only(unet, "tiny_lora_a.safetensors", 0.7)[0]
    sizes = [(16, 16), (18, 14), (12, 20)]
    baseline = None
    for prompt in range(30):
        model = lora if prompt % 3 == 1 else unet
        model = EnableMultiGPU.execute(model, prompt % 5 != 4, 2, "ring").result[0]
        nodes.KSampler().sample(model, prompt, 2, 1.0, "euler", "simple", flux_conditioning(77, seed=prompt),
                                flux_conditioning(77, seed=99), empty_latent(*sizes[prompt % 3]))
        if prompt == 2:   # after the first prompts have started the helpers and seen every size and both weights
            baseline = footprint()
    final = footprint()
    for key in ("children", "fds", "sockets", "shm"):
        assert final[key] <= baseline[key], f"{key} grew: {baseline[key]} -> {final[key]}"
    # Ours: one health thread for the one group. Others' pools (torch, an earlier test's Ray client) may add a
    # thread or two on their own schedule; a per-prompt leak would add dozens.
    assert final["thread_names"].count("comfy-xdit-health") == 1
    assert final["threads"] <= baseline["threads"] + 2, \
        f"threads grew: {baseline['thread_names']} -> {final['thread_names']}"
    assert final["rss"] <= baseline["rss"] * 1.10 + 64 * 2**20, \
        f"memory grew from {baseline['rss'] / 2**20:.0f} MiB to {final['rss'] / 2**20:.0f} MiB"
    helpers.shutdown_group()
    assert len(psutil.Process().children(recursive=True)) == 0
