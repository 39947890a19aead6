"""HunyuanVideo through the node (patches/hunyuan_video.py), 1 rank vs N ranks through ComfyUI's real KSampler and
its own HunyuanVideo latent nodes (fp32, tiny models from ComfyUI's own classes, helper processes over gloo):
text-to-video, the text mask, image-to-video's replaced first frame and reference latent, a LoRA with sharded weights
and CFG groups, HunyuanVideo 1.5's ByT5 and vision tokens (and meanflow), HunyuanImage 2.1. 3 latent frames of
6 x 10 (45 tokens) and a prompt of 21 tokens: uneven over 2 and 4 ranks."""
import logging

import comfy.sd
import pytest

from comfy_env import (hunyuan_video_inputs, ksample_inputs, load_tiny_hunyuan_video, relative_error,
                       sampled_in_parallel, tiny_dit_lora)
from comfy_xdit_patch.multigpu import enable_multigpu

sample, in_parallel = ksample_inputs, sampled_in_parallel


@pytest.fixture(scope="module")
def t2v():
    return load_tiny_hunyuan_video("1.0"), hunyuan_video_inputs("1.0")


@pytest.mark.parametrize("parallelism,gpus,cfg", [("usp", 4, 3.0)])   # Ulysses 2: the mask and image tests
def test_text_to_video_equals_one_rank(t2v, parallelism, gpus, cfg, caplog):
    model, inputs = t2v
    expected = sample(model, inputs, cfg)
    got, group = in_parallel(model, inputs, cfg, caplog, gpus=gpus, parallelism=parallelism)
    assert group.plan.sp_degree == gpus
    assert relative_error(got, expected) <= 1e-5


def test_hunyuan_image_21(caplog):
    """HunyuanImage 2.1: the same transformer on an image (2-D patches and RoPE) with ByT5 glyph tokens; 7 x 9
    latent pixels (63 tokens) and 26 text tokens over 4 ranks."""
    model = load_tiny_hunyuan_video("image21")
    inputs = hunyuan_video_inputs("image21", height=7, width=9)
    expected = sample(model, inputs, 3.0)
    got, _ = in_parallel(model, inputs, 3.0, caplog, gpus=4, parallelism="usp")
    assert relative_error(got, expected) <= 1e-5


def test_text_mask_with_ulysses_and_on_one_gpu_with_ring(t2v, caplog):
    """The LLaVA encoder's padding mask: cut per rank and gathered whole by the Ulysses attention; ring attention
    never holds the whole key sequence, so those calls run on one GPU and say so. cfg 1: ComfyUI's forward builds
    one mask row for the batch, so a masked prompt cannot share a call with its negative."""
    model, _ = t2v
    inputs = hunyuan_video_inputs("1.0", masked_tokens=5)
    expected = sample(model, inputs)
    assert relative_error(expected, sample(model, hunyuan_video_inputs("1.0"))) > 1e-3, "the mask changed nothing"
    got, _ = in_parallel(model, inputs, 1.0, caplog, gpus=2, parallelism="ulysses")
    assert relative_error(got, expected) <= 1e-5
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(model, gpus=2, parallelism="ring"), inputs)
    assert any("'ulysses'" in r.getMessage() for r in caplog.records), "no message named the fix"
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("variant,guidance_type", [("i2v", "v2 (replace)"), ("1.0", "custom")])
def test_image_to_video(variant, guidance_type, caplog):
    """HunyuanImageToVideo: "v2 (replace)" gives the first frame's tokens their own modulation (ranges over the
    whole sequence made each rank's); "custom" puts the start frame's tokens before the video's."""
    model = load_tiny_hunyuan_video(variant)
    inputs = hunyuan_video_inputs(variant, guidance_type=guidance_type)
    expected = sample(model, inputs, 3.0)
    got, _ = in_parallel(model, inputs, 3.0, caplog, gpus=2, parallelism="ulysses")
    assert relative_error(got, expected) <= 1e-5


def test_lora_sharded_weights_and_cfg_groups(t2v, caplog):
    model, inputs = t2v
    patched, _ = comfy.sd.load_lora_for_models(model, None, tiny_dit_lora(model), 1.0, 0)
    expected = sample(patched, inputs, 3.0)
    assert relative_error(expected, sample(model, inputs, 3.0)) > 1e-3, "the LoRA changed nothing"
    got, group = in_parallel(patched, inputs, 3.0, caplog, gpus=2, parallelism="ring", shard_weights=True)
    assert group.block_shards is not None and len(group.block_shards.order) == 4   # 2 double, 2 single
    assert relative_error(got, expected) <= 1e-5
    got, group = in_parallel(patched, inputs, 3.0, caplog, gpus=4, sequence_degree=2)
    assert group.plan.sp_degree == 2 and group.scheduler.last_rows == [[0], [1]]
    assert relative_error(got, expected) <= 1e-5


def test_hunyuan_video_15_byt5_and_vision_tokens(caplog):
    """1.5: ByT5 glyph and SigLIP vision tokens join the prompt (35 text tokens) with their type embeddings; 3 x 3 x 5
    latent (patch 1: 45 tokens); double blocks only, as the real 1.5, so the last double block gathers. Meanflow (the
    step-distilled 1.5) also embeds the next step's sigma, which the helpers read from the sampler's sigmas."""
    model = load_tiny_hunyuan_video("1.5", meanflow=True)
    assert len(model.get_model_object("diffusion_model").single_blocks) == 0
    inputs = hunyuan_video_inputs("1.5", height=3, width=5)
    expected = sample(model, inputs, 3.0)
    got, _ = in_parallel(model, inputs, 3.0, caplog, gpus=2, parallelism="ulysses")
    assert relative_error(got, expected) <= 1e-5
