"""Every model family through the same node, 1 rank vs N ranks through ComfyUI's real KSampler (fp32, tiny models
built from ComfyUI's own model classes, helper processes over gloo):
- SD3 / SD3.5 sequence-parallel (patches/mmdit.py): Ulysses, ring and USP, uneven token counts, cfg > 1, a LoRA,
  a ControlNet;
- SDXL and SD1.5, which have no sequence-parallel adapter, CFG- and batch-parallel (patches/any_model.py): cfg > 1,
  batch items, a LoRA, img2img; a run with nothing to split starts no helper.
"""
import logging

import comfy.sd
import nodes
import pytest
import torch

from comfy_env import (ksample_latent, latent, load_tiny_sd15, load_tiny_sd3, load_tiny_sdxl, relative_error,
                       sd15_conditioning, sd3_conditioning, sdxl_conditioning, tiny_sd3_controlnet, tiny_sd3_vae,
                       tiny_unet_lora)
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers

UNEVEN = (18, 14)    # 9 x 7 = 63 image tokens: uneven over 2 and 4 ranks
TOKENS = 77


_sd3 = {}


def sd3(variant):
    if variant not in _sd3:
        _sd3[variant] = load_tiny_sd3(variant)
    return _sd3[variant]


@pytest.fixture(scope="module")
def sdxl():
    return load_tiny_sdxl()


def sample_sd3(model, hw=UNEVEN, cfg=1.0, batch=1, positive=None):
    positive = positive or sd3_conditioning(TOKENS, seed=1)
    return ksample_latent(model, positive, sd3_conditioning(TOKENS, seed=2), latent(16, *hw, batch), cfg=cfg)


def ran_on(group_size, sp_degree):
    group = helpers.current_group()
    assert group is not None and group.plan.world_size == group_size, "the helpers did not run"
    assert group.plan.sp_degree == sp_degree
    return group


# Every layout on SD3.5 Large's shape; the other variants (their attention and norms differ) at one layout each.
SD3_CASES = [("sd35_large", "ulysses", 2), ("sd35_large", "ring", 2), ("sd35_large", "usp", 4),
             ("sd35_medium", "usp", 4), ("sd3_medium", "ring", 2)]


@pytest.mark.parametrize("variant,parallelism,gpus", SD3_CASES)
def test_sd3_sequence_parallel_equals_one_rank(variant, parallelism, gpus):
    model = sd3(variant)
    expected = sample_sd3(model)
    got = sample_sd3(enable_multigpu(model, gpus=gpus, parallelism=parallelism))
    ran_on(gpus, gpus)
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("variant", ["sd35_large", "sd35_medium"])
def test_sd3_cfg_and_batch_are_exact_and_auto_splits_the_tokens(variant):
    """cfg > 1 with a batch of 2: four rows through one sequence-parallel group (auto picks the adapter's split)."""
    expected = sample_sd3(sd3(variant), cfg=3.0, batch=2)
    got = sample_sd3(enable_multigpu(sd3(variant), gpus=2), cfg=3.0, batch=2)
    ran_on(2, 2)
    assert relative_error(got, expected) <= 1e-5


def test_sd3_cfg_branches_on_separate_groups():
    """4 ranks as two sequence-parallel groups of 2: the conditional and unconditional rows go to different groups."""
    model = sd3("sd35_large")
    expected = sample_sd3(model, cfg=3.0)
    got = sample_sd3(enable_multigpu(model, gpus=4, sequence_degree=2), cfg=3.0)
    group = ran_on(4, 2)
    assert group.plan.replicas == 2 and group.scheduler.last_rows == [[0], [1]]
    assert relative_error(got, expected) <= 1e-5


def test_sd3_lora_and_controlnet_are_exact():
    model = load_tiny_sd3("sd35_large")
    lora = tiny_unet_lora(model, style="diffusers")
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 0.8, 0)
    image = torch.rand(1, 144, 112, 3, generator=torch.Generator().manual_seed(3))
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        sd3_conditioning(TOKENS, seed=1), sd3_conditioning(TOKENS, seed=2), tiny_sd3_controlnet("sd35_large"), image,
        0.9, 0.0, 1.0, vae=tiny_sd3_vae())

    def run(m):
        return ksample_latent(m, positive, negative, latent(16, *UNEVEN), cfg=2.5)

    expected = run(patched)
    assert relative_error(expected, sample_sd3(model, cfg=2.5)) > 1e-2, "LoRA and ControlNet changed nothing"
    got = run(enable_multigpu(patched, gpus=2, parallelism="ulysses"))
    ran_on(2, 2)
    assert relative_error(got, expected) <= 1e-5


def test_sd3_sharded_weights_equal_one_rank():
    """shard_weights: each rank holds half of every joint block (the adapter names MMDiT's block list)."""
    model = load_tiny_sd3("sd35_medium")
    expected = sample_sd3(model, cfg=2.0)
    got = sample_sd3(enable_multigpu(model, gpus=2, parallelism="ring", shard_weights=True), cfg=2.0)
    group = ran_on(2, 2)
    assert group.block_shards is not None and len(group.block_shards.order) == len(
        model.get_model_object("diffusion_model").joint_blocks)
    assert relative_error(got, expected) <= 1e-5


def test_sd3_ulysses_beyond_the_heads_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match=r"head count \(6\) to divide by 4"):
        enable_multigpu(load_tiny_sd3("sd35_large"), gpus=4, parallelism="ulysses")


# ----- SDXL and SD1.5: CFG- and batch-parallel ------------------------------------------------------------------
def sample_unet(model, conditioning, cfg=3.0, batch=1, latent_image=None, denoise=1.0):
    latent_image = {"samples": latent_image} if latent_image is not None else latent(4, 16, 12, batch)
    return nodes.KSampler().sample(model, 42, 2, cfg, "euler", "simple", conditioning(seed=1), conditioning(seed=2),
                                   latent_image, denoise=denoise)[0]["samples"]


@pytest.mark.parametrize("cfg,batch,gpus", [(3.0, 1, 2), (1.0, 2, 2), (3.0, 3, 4)],
                         ids=["cfg-branches", "batch-items", "cfg-and-batch-on-4"])
def test_sdxl_rows_on_separate_gpus_equal_one_rank(sdxl, cfg, batch, gpus):
    expected = sample_unet(sdxl, sdxl_conditioning, cfg, batch)
    got = sample_unet(enable_multigpu(sdxl, gpus=gpus), sdxl_conditioning, cfg, batch)
    group = ran_on(gpus, 1)
    assert group.plan.replicas == gpus
    rows = batch * (2 if cfg > 1 else 1)
    assert sorted(r for g in group.scheduler.last_rows for r in g) == list(range(rows))
    assert sum(1 for g in group.scheduler.last_rows if g) == min(rows, gpus)
    assert relative_error(got, expected) <= 1e-5


def test_sdxl_with_a_lora_and_img2img_is_exact(sdxl):
    lora = tiny_unet_lora(sdxl)
    patched, _ = comfy.sd.load_lora_for_models(sdxl, None, lora, 1.0, 0)
    start = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(5))
    expected = sample_unet(patched, sdxl_conditioning, latent_image=start, denoise=0.6)
    assert relative_error(expected, sample_unet(sdxl, sdxl_conditioning, latent_image=start, denoise=0.6)) > 1e-3
    got = sample_unet(enable_multigpu(patched, gpus=2), sdxl_conditioning, latent_image=start, denoise=0.6)
    ran_on(2, 1)
    assert relative_error(got, expected) <= 1e-5


def test_sd15_cfg_branches_on_separate_gpus():
    model = load_tiny_sd15()
    expected = sample_unet(model, sd15_conditioning)
    got = sample_unet(enable_multigpu(model, gpus=2), sd15_conditioning)
    ran_on(2, 1)
    assert relative_error(got, expected) <= 1e-5


def test_a_run_with_nothing_to_split_passes_through_with_one_log_line_and_starts_no_helper(sdxl, caplog):
    helpers.shutdown_group()
    expected = sample_unet(sdxl, sdxl_conditioning, cfg=1.0)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = sample_unet(enable_multigpu(sdxl, gpus=2), sdxl_conditioning, cfg=1.0)
    assert helpers.current_group() is None
    assert torch.equal(got, expected)
    assert [r.getMessage() for r in caplog.records] == [
        "Enable Multi-GPU: running on one GPU because UNetModel has no sequence-parallel adapter, and this call has "
        "one row (cfg 1 and batch 1): CFG/batch parallelism has nothing to place on another GPU."]


def test_settings_only_sequence_parallelism_honours_are_refused_for_sdxl(sdxl):
    with pytest.raises(ValueError, match="UNetModel has no sequence-parallel adapter.*Set parallelism to auto"):
        enable_multigpu(sdxl, gpus=2, parallelism="ring")


def test_an_inpainting_unet_places_its_cfg_branches_on_separate_gpus():
    """SD1.5 inpainting: ComfyUI concatenates the mask and the masked image to the latent (9 channels in, 4 out)."""
    import node_helpers
    model = load_tiny_sd15(in_channels=9)
    generator = torch.Generator().manual_seed(7)
    image_latent = torch.randn(1, 4, 16, 12, generator=generator)
    mask = torch.zeros(1, 1, 128, 96)
    mask[..., 32:96, 16:80] = 1.0
    values = {"concat_latent_image": image_latent, "concat_mask": mask}
    positive = node_helpers.conditioning_set_values(sd15_conditioning(seed=1), values)
    negative = node_helpers.conditioning_set_values(sd15_conditioning(seed=2), values)
    latent = {"samples": image_latent.clone(), "noise_mask": mask}

    def run(m):
        return nodes.KSampler().sample(m, 42, 2, 3.0, "euler", "simple", positive, negative, latent)[0]["samples"]

    expected = run(model)
    got = run(enable_multigpu(model, gpus=2))
    ran_on(2, 1)
    assert relative_error(got, expected) <= 1e-5
