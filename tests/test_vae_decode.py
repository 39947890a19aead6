"""VAE Decode (Tiled, Multi-GPU) (runtime/vae_decode.py): ComfyUI's own tiled decode of a video latent with its tiles
decoded on the running helpers' GPUs (CPU ranks over gloo) equals the core VAE Decode (Tiled) node's with the same
tile settings, for ComfyUI's tiling (Wan's VAE) and for a VAE that tiles inside its own decode (MiniMax H3's); without
helpers it runs on one GPU and says why, and a helper dying mid-decode still ends with the one-GPU image."""
import logging

import nodes
import pytest
import torch

from comfy_env import load_tiny_wan, tiny_minimax_vae, tiny_wan_vae, wan_inputs
from helper_hooks import use_hooked_helpers
from comfy_xdit_patch.dropin import XDiTVAEDecodeTiled
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers

# 96 x 128 pixels, 17 frames; 64-pixel tiles overlapping by 16 and 8-frame ones by 4: 2 x 3 x 4 tiles.
TILES = dict(tile_size=64, overlap=16, temporal_size=8, temporal_overlap=4)


@pytest.fixture(autouse=True)
def inference_mode():
    """ComfyUI runs every node under inference mode; the VAE's decode writes its output in place."""
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def latent():
    return {"samples": torch.randn(1, 16, 5, 12, 16, generator=torch.Generator().manual_seed(3))}


def start_helpers(gpus):
    """Helpers as a prompt leaves them: a tiny Wan sampled through the node."""
    model = load_tiny_wan("t2v")
    positive, negative, empty = wan_inputs("t2v", 2, 4, 4)
    nodes.KSampler().sample(enable_multigpu(model, gpus=gpus), 42, 1, 1.0, "euler", "simple", positive, negative,
                            empty)
    assert helpers.current_group() is not None and helpers.current_group().plan.world_size == gpus


@pytest.mark.parametrize("gpus", [3])   # 24 tiles, 8 per rank; rank 0 decodes its share meanwhile
def test_tiles_decoded_on_every_gpu_equal_the_core_tiled_decode(latent, gpus, caplog):
    vae = tiny_wan_vae("2.1")
    expected = nodes.VAEDecodeTiled().decode(vae, latent, **TILES)[0]
    start_helpers(gpus)
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        got = XDiTVAEDecodeTiled.execute(vae=vae, samples=latent, **TILES).result[0]
        again = XDiTVAEDecodeTiled.execute(vae=vae, samples=latent, **TILES).result[0]   # the VAE is sent once
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(f"Enable Multi-GPU: decoded 24 tiles on {gpus} GPUs") == 2, messages
    assert sum("sent the VAE's weights" in m for m in messages) == 1, messages
    assert got.shape == expected.shape == (17, 96, 128, 3)
    assert torch.equal(got, expected) and torch.equal(again, expected)


def test_without_helpers_it_decodes_on_one_gpu(latent, caplog):
    vae = tiny_wan_vae("2.1")
    helpers.shutdown_group()
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        got = XDiTVAEDecodeTiled.execute(vae=vae, samples=latent, **TILES).result[0]
    assert torch.equal(got, nodes.VAEDecodeTiled().decode(vae, latent, **TILES)[0])
    assert any("no helper GPUs are running" in r.getMessage() for r in caplog.records)


def test_a_vae_that_tiles_itself_has_its_own_tiles_spread(monkeypatch, caplog):
    """MiniMax H3's VAE tiles inside its own decode (temporal chunks of 7 latent frames here, tile settings
    ignored): its adapter names the method that decodes one tile, which is hooked instead of the model's decode."""
    use_hooked_helpers(monkeypatch, TINY_MINIMAX_VAE=1)
    helpers.shutdown_group()
    minimax = tiny_minimax_vae()
    h3_latent = {"samples": torch.randn(1, 24, 12, 4, 6, generator=torch.Generator().manual_seed(4))}
    expected = nodes.VAEDecodeTiled().decode(minimax, h3_latent, **TILES)[0]
    start_helpers(2)
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        got = XDiTVAEDecodeTiled.execute(vae=minimax, samples=h3_latent, **TILES).result[0]
    assert any(r.getMessage().startswith("Enable Multi-GPU: decoded ") for r in caplog.records), caplog.text
    assert torch.equal(got, expected)
    helpers.shutdown_group()


def test_a_helper_dying_in_a_spread_decode_ends_with_the_one_gpu_image(latent, monkeypatch, caplog):
    use_hooked_helpers(monkeypatch, EXIT_AT="decode")
    helpers.shutdown_group()
    vae = tiny_wan_vae("2.1")
    expected = nodes.VAEDecodeTiled().decode(vae, latent, **TILES)[0]
    start_helpers(2)
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        got = XDiTVAEDecodeTiled.execute(vae=vae, samples=latent, **TILES).result[0]
    assert any("the spread decode failed" in r.getMessage() for r in caplog.records), caplog.text
    assert torch.equal(got, expected)
    assert helpers.current_group() is None


def test_a_vae_the_helpers_rebuild_differently_decodes_on_one_gpu_and_the_helpers_stay(latent, monkeypatch, caplog):
    """ComfyUI rebuilds a VAE on the helpers from its weights; where that gives another model (a VAE configured by
    its file's metadata), they say so, this VAE decodes on one GPU from then on, and the helpers keep running."""
    use_hooked_helpers(monkeypatch, VAE_REBUILT_DIFFERENTLY=1)
    helpers.shutdown_group()
    vae = tiny_wan_vae("2.1")
    expected = nodes.VAEDecodeTiled().decode(vae, latent, **TILES)[0]
    start_helpers(2)
    group = helpers.current_group()
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        first = XDiTVAEDecodeTiled.execute(vae=vae, samples=latent, **TILES).result[0]
        second = XDiTVAEDecodeTiled.execute(vae=vae, samples=latent, **TILES).result[0]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("helpers cannot rebuild" in m for m in messages) == 1, messages
    assert any("runs on one GPU because WanVAE: the weights were rebuilt as another model" in m for m in messages)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert helpers.current_group() is group and group.alive()
    helpers.shutdown_group()


def test_the_vae_classes_the_adapters_name_exist_in_comfyui():
    """The adapters name VAE classes by module and class; a class ComfyUI moved or renamed would match nothing and
    silently change what the node does."""
    import importlib
    from comfy_xdit_patch import patches
    named = [name for adapter in patches.SEQUENCE_PARALLEL
             for name in list(adapter.vae_tile_decoders) + list(adapter.vae_unspreadable)]
    assert named
    for name in named:
        module, _, cls = name.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), cls), type), name
    for adapter in patches.SEQUENCE_PARALLEL:
        for name, method in adapter.vae_tile_decoders.items():
            module, _, cls = name.rpartition(".")
            assert callable(getattr(getattr(importlib.import_module(module), cls), method)), (name, method)
