"""Wan 2.1 / 2.2 video through the node (patches/wan.py), 1 rank vs N ranks through ComfyUI's real KSampler and its
own Wan nodes (fp32, tiny Wan models from ComfyUI's own classes, helper processes over gloo): text-to-video,
image-to-video with CLIP vision features, Wan 2.2's per-frame timesteps, a LoRA, sharded weights, CFG groups; VACE,
which has no sequence-parallel adapter, CFG-parallel. 3 latent frames of 6 x 10: 45 tokens, uneven over 2 and 4."""
import logging

import comfy.sd
import nodes
import pytest

from comfy_env import load_tiny_wan, relative_error, tiny_wan_lora, wan_inputs
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers

FRAMES, HEIGHT, WIDTH = 3, 6, 10


def sample(model, inputs, cfg=1.0):
    positive, negative, latent = inputs
    return nodes.KSampler().sample(model, 42, 2, cfg, "euler", "simple", positive, negative, latent)[0]["samples"]


def ran_on(world, sp_degree):
    group = helpers.current_group()
    assert group is not None and group.plan.world_size == world, "the helpers did not run"
    assert group.plan.sp_degree == sp_degree
    return group


@pytest.fixture(scope="module")
def t2v():
    return load_tiny_wan("t2v"), wan_inputs("t2v", FRAMES, HEIGHT, WIDTH)


@pytest.mark.parametrize("parallelism,gpus,cfg", [("ulysses", 2, 1.0), ("ring", 2, 3.0), ("usp", 4, 3.0)])
def test_text_to_video_equals_one_rank(t2v, parallelism, gpus, cfg, caplog):
    model, inputs = t2v
    expected = sample(model, inputs, cfg)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(model, gpus=gpus, parallelism=parallelism), inputs, cfg)
    ran_on(gpus, gpus)
    assert not [r for r in caplog.records if "one GPU" in r.getMessage()], "a call ran on one GPU"
    assert relative_error(got, expected) <= 1e-5


def test_image_to_video_with_clip_vision_features(t2v):
    """WanImageToVideo: the concatenated start frame and mask travel with x; the CLIP vision tokens join the text,
    which every rank attends to whole. 6 heads: auto over 4 ranks is Ulysses 2 x ring 2."""
    model, inputs = load_tiny_wan("i2v"), wan_inputs("i2v", FRAMES, HEIGHT, WIDTH)
    expected = sample(model, inputs, 3.0)
    for gpus, degrees in [(2, (2, 1)), (4, (2, 2))]:
        got = sample(enable_multigpu(model, gpus=gpus), inputs, 3.0)
        group = ran_on(gpus, gpus)
        assert (group.plan.ulysses_degree, group.plan.ring_degree) == degrees
        assert relative_error(got, expected) <= 1e-5


def test_wan22_per_frame_timesteps_follow_the_split():
    """Wan 2.2 5B with a start image: each latent frame has its own timestep, and a rank's tokens take their own
    frames' modulation (the split cuts through frames: 45 tokens over 2 and 4 ranks)."""
    model, inputs = load_tiny_wan("ti2v"), wan_inputs("ti2v", FRAMES, HEIGHT, WIDTH)
    assert "noise_mask" in inputs[2]
    expected = sample(model, inputs, 3.0)
    for parallelism, gpus in [("ulysses", 2), ("usp", 4)]:
        got = sample(enable_multigpu(model, gpus=gpus, parallelism=parallelism), inputs, 3.0)
        ran_on(gpus, gpus)
        assert relative_error(got, expected) <= 1e-5


def test_lora_sharded_weights_and_cfg_groups(t2v):
    model, inputs = t2v
    patched, _ = comfy.sd.load_lora_for_models(model, None, tiny_wan_lora(model), 1.0, 0)
    expected = sample(patched, inputs, 3.0)
    assert relative_error(expected, sample(model, inputs, 3.0)) > 1e-3, "the LoRA changed nothing"
    got = sample(enable_multigpu(patched, gpus=2, parallelism="ring", shard_weights=True), inputs, 3.0)
    group = ran_on(2, 2)
    assert group.block_shards is not None and len(group.block_shards.order) == 2
    assert relative_error(got, expected) <= 1e-5
    got = sample(enable_multigpu(patched, gpus=4, sequence_degree=2), inputs, 3.0)
    group = ran_on(4, 2)
    assert group.scheduler.last_rows == [[0], [1]]
    assert relative_error(got, expected) <= 1e-5


def test_vace_runs_cfg_parallel():
    """VACE adds per-block control inputs the Wan adapter does not split: its CFG branches go to separate GPUs."""
    model, inputs = load_tiny_wan("vace"), wan_inputs("vace", FRAMES, HEIGHT, WIDTH)
    expected = sample(model, inputs, 3.0)
    got = sample(enable_multigpu(model, gpus=2), inputs, 3.0)
    ran_on(2, 1)
    assert relative_error(got, expected) <= 1e-5


def test_wan22_two_experts_are_both_held_and_switching_sends_no_weights(caplog):
    """Wan 2.2 14B's workflow: the high-noise expert samples the first steps, the low-noise expert the rest
    (KSamplerAdvanced twice). Both go through the node; the helpers keep both, so after the first prompt switching
    between them is a message, not a weight transfer. The result equals one rank's."""
    high, low = load_tiny_wan("t2v", seed=131), load_tiny_wan("t2v", seed=132)
    positive, negative, latent = wan_inputs("t2v", FRAMES, HEIGHT, WIDTH)

    def two_experts(first, second):
        sampler = nodes.KSamplerAdvanced()
        half = sampler.sample(first, "enable", 42, 4, 3.0, "euler", "simple", positive, negative, latent, 0, 2,
                              "enable")[0]
        return sampler.sample(second, "disable", 42, 4, 3.0, "euler", "simple", positive, negative, half, 2, 4,
                              "disable")[0]["samples"]

    expected = two_experts(high, low)
    helpers.shutdown_group()
    parallel_high, parallel_low = (enable_multigpu(m, gpus=2, parallelism="ulysses") for m in (high, low))
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        first = two_experts(parallel_high, parallel_low)
        second = two_experts(parallel_high, parallel_low)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("sent the diffusion model's weights" in m for m in messages) == 2, messages
    assert sum("switched to the other model they hold" in m for m in messages) == 2, messages
    assert not [m for m in messages if "one GPU" in m], messages
    ran_on(2, 2)
    assert relative_error(first, expected) <= 1e-5 and relative_error(second, expected) <= 1e-5


def test_scaled_fp8_checkpoint_through_the_loader(t2v, tmp_path, caplog):
    """A Wan checkpoint in ComfyUI's scaled fp8 format (block Linear weights float8_e4m3fn with per-layer scales),
    loaded by ComfyUI's own loader into its mixed-precision layers: the helpers rebuild the same quantized layers."""
    import safetensors.torch
    from comfy_env import wan_detection_metadata
    from comfy_xdit_patch.evidence import scaled_fp8_state_dict
    from comfy.quant_ops import QuantizedTensor
    model, inputs = t2v
    path = str(tmp_path / "tiny_wan_scaled_fp8.safetensors")
    state = scaled_fp8_state_dict(model.model.diffusion_model.state_dict(), blocks=("blocks.",))
    safetensors.torch.save_file(state, path, metadata=wan_detection_metadata(model))
    quantized = comfy.sd.load_diffusion_model(path)
    assert isinstance(quantized.model.diffusion_model.blocks[0].self_attn.q.weight, QuantizedTensor)
    expected = sample(quantized, inputs, 3.0)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(quantized, gpus=2, parallelism="ulysses"), inputs, 3.0)
    assert not [r for r in caplog.records if "one GPU" in r.getMessage()], "a call ran on one GPU"
    ran_on(2, 2)
    assert relative_error(got, expected) <= 1e-5
