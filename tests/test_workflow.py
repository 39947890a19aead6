"""Through ComfyUI's execution engine: UNETLoader -> Enable Multi-GPU -> KSampler -> SaveLatent, compared with the
same prompt without the node; helpers stay warm across prompts and are gone after shutdown."""
import asyncio
import glob
import os

import pytest
import safetensors.torch

import comfy_env
from comfy_env import relative_error


class FixedFluxConditioning:
    """A test-only node emitting FLUX conditioning, so the graph needs no text-encoder weights."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1}), "tokens": ("INT", {"default": 77})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed, tokens):
        return (comfy_env.flux_conditioning(tokens, seed=seed),)




@pytest.fixture(scope="module")
def engine(tmp_path_factory, model_files):
    import folder_paths
    import nodes
    import execution
    root = tmp_path_factory.mktemp("comfy")
    folder_paths.set_output_directory(str(root / "out"))
    assert asyncio.run(nodes.load_custom_node(comfy_env.REPO)), "the plugin did not load as a custom node"
    assert "EnableMultiGPU" in nodes.NODE_CLASS_MAPPINGS
    nodes.NODE_CLASS_MAPPINGS["XDiTTestFluxConditioning"] = FixedFluxConditioning
    server = comfy_env.FakeServer()
    executor = execution.PromptExecutor(server, cache_args={"ram": 0, "ram_inactive": 0})
    return executor, server, root / "out"


def prompt(prefix, multigpu=None, height=144, width=112):
    graph = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_flux.safetensors", "weight_dtype": "default"}},
        "pos": {"class_type": "XDiTTestFluxConditioning", "inputs": {"seed": 1, "tokens": 77}},
        "neg": {"class_type": "XDiTTestFluxConditioning", "inputs": {"seed": 2, "tokens": 77}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["unet", 0], "seed": 5, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}},
    }
    if multigpu is not None:
        graph["multigpu"] = {"class_type": "EnableMultiGPU", "inputs": dict({"model": ["unet", 0]}, **multigpu)}
        graph["sampler"]["inputs"]["model"] = ["multigpu", 0]
    return graph


def run(engine, graph, prompt_id):
    executor, server, out = engine
    executor.execute(graph, prompt_id, {}, ["save"])
    assert executor.success, [m for m in server.messages if m[0] == "execution_error"]
    prefix = graph["save"]["inputs"]["filename_prefix"]
    files = sorted(glob.glob(os.path.join(out, f"{prefix}_*.latent")))
    return safetensors.torch.load_file(files[-1])["latent_tensor"]


def test_prompt_graph_with_node_equals_graph_without(engine):
    from comfy_xdit_patch.runtime import helper_group as helpers
    helpers.shutdown_group()
    expected = run(engine, prompt("plain"), "p1")
    got = run(engine, prompt("multi", {"enabled": True, "gpus": 2, "parallelism": "ulysses"}), "p2")
    assert relative_error(got, expected) <= 1e-5
    first = helpers.current_group()
    pids = [p.pid for p in first.processes.values()]
    assert len(pids) == 1

    # A second prompt (other seed, other size) reuses the same warm helper processes.
    graph = prompt("multi2", {"enabled": True, "gpus": 2, "parallelism": "ulysses"}, height=128, width=128)
    graph["sampler"]["inputs"]["seed"] = 6
    plain = prompt("plain2", height=128, width=128)
    plain["sampler"]["inputs"]["seed"] = 6
    assert relative_error(run(engine, graph, "p3"), run(engine, plain, "p4")) <= 1e-5
    assert helpers.current_group() is first and [p.pid for p in first.processes.values()] == pids

    # enabled=false is the one-GPU graph exactly.
    off = run(engine, prompt("off", {"enabled": False, "gpus": 2, "parallelism": "ulysses"}), "p5")
    assert relative_error(off, expected) == 0.0

    processes = list(first.processes.values())
    helpers.shutdown_group()
    assert helpers.current_group() is None
    assert all(p.poll() is not None for p in processes), "a helper outlived the shutdown"
