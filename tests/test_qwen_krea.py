"""Qwen-Image, Qwen-Image-Edit, Krea 2 and Z-Image through the node (patches/qwen_image.py, krea2.py, z_image.py), 1 rank vs N
ranks through ComfyUI's real KSampler and its own nodes (ReferenceLatent, ControlNetApplyAdvanced), fp32, tiny models
from ComfyUI's own classes, helper processes over gloo. 11 x 9 latent pixels: 30 image tokens and 21 text tokens,
uneven over 4 ranks; the edit references have other sizes."""
import logging

import comfy.sd
import nodes
import pytest

from comfy_env import (apply_tiny_controlnet, krea2_inputs, load_tiny_krea2, load_tiny_qwen_image, load_tiny_z_image,
                       qwen_image_inputs, relative_error, tiny_dit_lora, tiny_qwen_controlnet, z_image_inputs)
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers

LAYOUTS = [("ulysses", 2), ("ring", 2), ("usp", 4)]


def sample(model, inputs, cfg=3.0):
    positive, negative, latent = inputs
    return nodes.KSampler().sample(model, 42, 2, cfg, "euler", "simple", positive, negative, latent)[0]["samples"]


def check_parallel(model, inputs, parallelism, gpus, caplog, cfg=3.0, **options):
    expected = sample(model, inputs, cfg)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(model, gpus=gpus, parallelism=parallelism, **options), inputs, cfg)
    group = helpers.current_group()
    assert group is not None and group.plan.world_size == gpus, "the helpers did not run"
    assert not [r for r in caplog.records if "one GPU" in r.getMessage()], "a call ran on one GPU"
    assert relative_error(got, expected) <= 1e-5
    return group


@pytest.fixture(scope="module")
def qwen():
    return load_tiny_qwen_image("t2i")


@pytest.mark.parametrize("parallelism,gpus", LAYOUTS)
def test_qwen_image_text_to_image(qwen, parallelism, gpus, caplog):
    check_parallel(qwen, qwen_image_inputs("t2i"), parallelism, gpus, caplog)


@pytest.mark.parametrize("variant,references,parallelism,gpus", [("edit", 1, "ulysses", 2), ("edit", 2, "usp", 4),
                                                                ("edit_2511", 2, "usp", 4)])
def test_qwen_image_edit_references_follow_the_split(variant, references, parallelism, gpus, caplog):
    """Reference latents of other sizes join the image sequence; the 2511 model runs them at timestep zero."""
    check_parallel(load_tiny_qwen_image(variant), qwen_image_inputs(variant, references=references), parallelism,
                   gpus, caplog)


@pytest.mark.parametrize("kind,parallelism,gpus", [("fun", "ulysses", 2), ("instantx", "usp", 4)])
def test_qwen_image_controlnet_residuals_follow_the_split(qwen, kind, parallelism, gpus, caplog):
    positive, negative, latent = qwen_image_inputs("t2i")
    positive, negative = apply_tiny_controlnet(positive, negative, tiny_qwen_controlnet(kind, qwen), 11, 9)
    inputs = positive, negative, latent
    assert relative_error(sample(qwen, inputs), sample(qwen, qwen_image_inputs("t2i"))) > 1e-2
    check_parallel(qwen, inputs, parallelism, gpus, caplog)


def test_qwen_image_sp_and_cfg_groups_with_a_lora(qwen, caplog):
    """4 GPUs as two sequence-parallel groups of 2: the CFG branches on separate groups."""
    patched, _ = comfy.sd.load_lora_for_models(qwen, None, tiny_dit_lora(qwen), 1.0, 0)
    group = check_parallel(patched, qwen_image_inputs("t2i"), "ulysses", 4, caplog, sequence_degree=2)
    assert group.scheduler.last_rows == [[0], [1]]


def test_qwen_image_text_mask_runs_with_ulysses_and_names_the_fix_for_ring(qwen, caplog):
    inputs = qwen_image_inputs("t2i", masked_tokens=5)
    check_parallel(qwen, inputs, "ulysses", 2, caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        sample(enable_multigpu(qwen, gpus=2, parallelism="ring"), inputs)
    assert any("text attention mask, which runs sequence-parallel with parallelism 'ulysses' only" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("parallelism,gpus", LAYOUTS)
def test_krea2_text_to_image(parallelism, gpus, caplog):
    check_parallel(load_tiny_krea2(), krea2_inputs(), parallelism, gpus, caplog)


@pytest.mark.parametrize("method,parallelism,gpus", [("index", "ulysses", 2), ("index_timestep_zero", "usp", 4)])
def test_krea2_references_and_a_lora(method, parallelism, gpus, caplog):
    model = load_tiny_krea2()
    patched, _ = comfy.sd.load_lora_for_models(model, None, tiny_dit_lora(model), 1.0, 0)
    check_parallel(patched, krea2_inputs(references=2, ref_method=method), parallelism, gpus, caplog)


@pytest.mark.parametrize("padded,parallelism,gpus", [(True, "usp", 4), (False, "ulysses", 2), (False, "ring", 2)],
                         ids=["padded-usp4", "unpadded-ulysses2", "unpadded-ring2"])
def test_z_image_text_to_image(padded, parallelism, gpus, caplog):
    """Z-Image pads caption and image to multiples of 32 with learned tokens (its default); unpadded, the 21 caption
    and 30 image tokens split unevenly. The refiners run whole on every rank, the main layers split."""
    model = load_tiny_z_image(pad_tokens_multiple=32 if padded else None)
    check_parallel(model, z_image_inputs(), parallelism, gpus, caplog)


def test_z_image_cfg_with_prompts_of_different_lengths_and_a_lora(caplog):
    """Prompts of different lengths make ComfyUI run cond and uncond as separate calls."""
    model = load_tiny_z_image(pad_tokens_multiple=None)
    patched, _ = comfy.sd.load_lora_for_models(model, None, tiny_dit_lora(model), 1.0, 0)
    check_parallel(patched, z_image_inputs(negative_tokens=9), "ulysses", 2, caplog)


@pytest.mark.parametrize("family", ["qwen_image", "z_image", "krea2"])
def test_sharded_weights_and_a_batch_of_two(family, caplog):
    """shard_weights: each rank holds half of every block (the adapters name the block lists; Z-Image's and Krea 2's
    forwards have no block replacement, so their block wrappers gather the weights); a batch of two images."""
    model, inputs = {"qwen_image": lambda: (load_tiny_qwen_image("t2i"), qwen_image_inputs("t2i", batch=2)),
                     "z_image": lambda: (load_tiny_z_image(), z_image_inputs(batch=2)),
                     "krea2": lambda: (load_tiny_krea2(), krea2_inputs(batch=2))}[family]()
    group = check_parallel(model, inputs, "ring", 2, caplog, shard_weights=True)
    assert group.block_shards is not None and len(group.block_shards.order) == 2
