"""Helpers compute with the weights ComfyUI computes (weight patches applied), re-sent only when they change."""
import torch

from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers
from test_equivalence import ksample
from comfy_env import relative_error

PATCHED = ("diffusion_model.img_in.weight", "diffusion_model.double_blocks.0.img_attn.qkv.weight",
           "diffusion_model.single_blocks.1.linear2.weight")


def patched_model(base, strength):
    """A clone with 'diff' weight patches through ModelPatcher.add_patches, the API LoRA loaders use."""
    generator = torch.Generator().manual_seed(3)
    state = base.model.state_dict()
    deltas = {key: (torch.randn(state[key].shape, generator=generator) * 0.05,) for key in PATCHED}
    clone = base.clone()
    assert len(clone.add_patches(deltas, strength)) == len(PATCHED)
    return clone


def test_weight_patches_reach_helpers_and_resync_only_on_change(tiny_flux):
    strong, weak = patched_model(tiny_flux, 1.0), patched_model(tiny_flux, 0.3)
    expected_strong, expected_weak = ksample(strong, (18, 14)), ksample(weak, (18, 14))
    assert relative_error(expected_strong, expected_weak) > 1e-3, "the patches must change the result"

    parallel_strong = enable_multigpu(strong, gpus=2, parallelism="ulysses")
    assert relative_error(ksample(parallel_strong, (18, 14)), expected_strong) <= 1e-5
    group = helpers.current_group()
    syncs = group.weight_syncs

    assert relative_error(ksample(parallel_strong, (16, 16)), ksample(strong, (16, 16))) <= 1e-5
    assert group.weight_syncs == syncs, "unchanged weights were sent again"

    # Another strength is another effective model: re-sent, and the helpers follow it.
    assert relative_error(ksample(enable_multigpu(weak, gpus=2, parallelism="ulysses"), (18, 14)), expected_weak) <= 1e-5
    assert helpers.current_group() is group and group.weight_syncs == syncs + 1
