"""MiniMax H3 through the node (patches/minimax.py), 1 rank vs N ranks through ComfyUI's real KSampler and its own
MiniMax H3 nodes (fp32, a tiny MiniMax H3 from ComfyUI's own classes, helper processes over gloo): the packed
sequence of text, condition or reference rows, audio and video split over the ranks (with sharded weights on
i2v with a first and a last frame); the video and audio latents both compared. Packed lengths 35 (t2v) and 67 (r2v):
uneven over 2 and 4 ranks."""
import logging

import nodes
import pytest

from comfy_env import load_tiny_minimax, minimax_inputs, relative_error
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers


def sample(model, inputs, cfg=3.0):
    positive, negative, latent = inputs
    return nodes.KSampler().sample(model, 42, 2, cfg, "euler", "simple", positive, negative, latent)[0]["samples"]


def streams_error(got, expected):
    """The larger relative error of the video and the audio latents."""
    return max(relative_error(a, b) for a, b in zip(got.unbind(), expected.unbind()))


@pytest.fixture(scope="module")
def model():
    return load_tiny_minimax()


@pytest.mark.parametrize("mode,parallelism,gpus,shard_weights", [
    ("t2v", "ulysses", 2, False), ("i2v", "ring", 2, True), ("r2v", "usp", 4, False)])
def test_streams_equal_one_rank(model, mode, parallelism, gpus, shard_weights, caplog):
    """i2v with a first and a last frame (fl2va)."""
    inputs = minimax_inputs(mode, last_frame=mode == "i2v")
    expected = sample(model, inputs)
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(model, gpus=gpus, parallelism=parallelism, shard_weights=shard_weights), inputs)
    group = helpers.current_group()
    assert group is not None and group.plan.world_size == gpus and group.plan.sp_degree == gpus
    assert (group.block_shards is not None) == shard_weights
    assert not [r for r in caplog.records if "one GPU" in r.getMessage()], "a call ran on one GPU"
    assert streams_error(got, expected) <= 1e-5


def test_a_noise_mask_gives_rows_their_own_modulation(model, caplog):
    """A noise mask on the video (part of the first frame kept at half strength, as a masked edit leaves it): the
    model gives those rows their own timestep, a per-token modulation row that each rank cuts to its tokens."""
    import comfy.nested_tensor
    import torch
    positive, negative, latent = minimax_inputs("t2v")
    video, audio = latent["samples"].unbind()
    video_mask = torch.ones((1, 1) + tuple(video.shape[2:]))
    video_mask[:, :, 0, :2, :] = 0.5
    latent = dict(latent, noise_mask=comfy.nested_tensor.NestedTensor((video_mask, torch.ones_like(audio[:, :1]))))
    inputs = (positive, negative, latent)
    expected = sample(model, inputs)
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(model, gpus=4, parallelism="usp"), inputs)
    assert not [r for r in caplog.records if "one GPU" in r.getMessage()], "a call ran on one GPU"
    assert helpers.current_group().plan.sp_degree == 4   # the video's 12 tokens (23..35) split at 27
    assert streams_error(got, expected) <= 1e-5


def test_cfg_groups_run_on_one_gpu_naming_the_fix(model, caplog):
    """cond and uncond are separate calls of one row: CFG groups have nothing to share, and the message says which
    setting runs it in parallel."""
    inputs = minimax_inputs("t2v")
    expected = sample(model, inputs)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(model, gpus=4, sequence_degree=2), inputs)
    assert any("set sequence_degree to the number of GPUs" in r.getMessage() for r in caplog.records)
    assert streams_error(got, expected) == 0
