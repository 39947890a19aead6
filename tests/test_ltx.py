"""LTX-Video and LTX-2 through the node (patches/ltx.py), 1 rank vs N ranks through ComfyUI's real KSampler and its
own LTX latent nodes (fp32, tiny models from ComfyUI's own classes, helper processes over gloo): text-to-video,
image-to-video's per-frame timesteps (LTX-2's per-frame compressed modulation cut mid-frame), LTX-2's audio stream
with its audio-video cross-attention and spatio-temporal guidance, a LoRA, sharded weights, CFG groups. 3 latent
frames of 3 x 5: 45 video tokens, uneven over 2 and 4."""
import logging

import comfy.sd
import pytest

from comfy_env import (ksample_inputs, load_tiny_ltx, ltx_inputs, relative_error, sampled_in_parallel,
                       tiny_dit_lora)
from comfy_xdit_patch.multigpu import enable_multigpu


def sample(model, inputs, cfg=3.0):
    return ksample_inputs(model, inputs, cfg)


def error(got, expected):
    """The larger relative error of the streams (LTX-2's video and audio latents)."""
    if got.is_nested:
        return max(relative_error(a, b) for a, b in zip(got.unbind(), expected.unbind()))
    return relative_error(got, expected)


def in_parallel(model, inputs, caplog, cfg=3.0, **options):
    return sampled_in_parallel(model, inputs, cfg, caplog, **options)


@pytest.mark.parametrize("variant,first_frame,parallelism,gpus,shard_weights", [   # LTX-Video on Ulysses 2: keyframes
    ("video", True, "usp", 4, False), ("av", False, "ring", 2, True), ("av", True, "usp", 4, False)])
def test_video_equals_one_rank(variant, first_frame, parallelism, gpus, shard_weights, caplog):
    model, inputs = load_tiny_ltx(variant), ltx_inputs(variant, first_frame=first_frame)
    expected = sample(model, inputs)
    got, group = in_parallel(model, inputs, caplog, gpus=gpus, parallelism=parallelism, shard_weights=shard_weights)
    assert group.plan.sp_degree == gpus and (group.block_shards is not None) == shard_weights
    assert error(got, expected) <= 1e-5


def test_lora_sharded_weights_and_cfg_groups(caplog):
    model, inputs = load_tiny_ltx("video"), ltx_inputs("video", first_frame=True)
    patched, _ = comfy.sd.load_lora_for_models(model, None, tiny_dit_lora(model), 1.0, 0)
    expected = sample(patched, inputs)
    assert relative_error(expected, sample(model, inputs)) > 1e-3, "the LoRA changed nothing"
    got, group = in_parallel(patched, inputs, caplog, gpus=2, parallelism="ring", shard_weights=True)
    assert group.block_shards is not None and len(group.block_shards.order) == 2
    assert relative_error(got, expected) <= 1e-5
    got, group = in_parallel(patched, inputs, caplog, gpus=4, sequence_degree=2)
    assert group.plan.sp_degree == 2 and group.scheduler.last_rows == [[0], [1]]
    assert relative_error(got, expected) <= 1e-5


def test_a_keyframe_guide(caplog):
    """LTXVAddGuide: an encoded guide frame appended to the video with its own positions and timestep (strength 1:
    60 tokens, the guide's 15 kept). At strength 0.5 ComfyUI builds a guide attention mask over the whole sequence:
    those calls run on one GPU, saying how to run them in parallel."""
    model = load_tiny_ltx("video")
    inputs = ltx_inputs("video", guide_frame=8)
    expected = sample(model, inputs)
    got, _ = in_parallel(model, inputs, caplog, gpus=2, parallelism="ulysses")
    assert relative_error(got, expected) <= 1e-5
    inputs = ltx_inputs("video", guide_frame=8, guide_strength=0.5)
    expected = sample(model, inputs)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(model, gpus=2), inputs)
    assert any("set its strength to 1 and remove its mask" in r.getMessage() for r in caplog.records)
    assert relative_error(got, expected) == 0


def test_ltx2_spatio_temporal_guidance(caplog):
    """LTXV Spatio-Temporal Guidance: one extra call per step with the chosen blocks' self-attention passed through
    (a set of block indices in transformer_options, which the helpers must receive to skip the same exchanges)."""
    from comfy_extras.nodes_lt import LTXVSpatioTemporalGuidance
    model = LTXVSpatioTemporalGuidance.execute(load_tiny_ltx("av"), 1.0, "1", 0.0, 1.0).result[0]
    inputs = ltx_inputs("av")
    expected = sample(model, inputs)
    assert error(expected, sample(load_tiny_ltx("av"), inputs)) > 1e-3, "the guidance changed nothing"
    got, _ = in_parallel(model, inputs, caplog, gpus=2, parallelism="ulysses")
    assert error(got, expected) <= 1e-5
