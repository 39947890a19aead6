"""1 rank vs N ranks through ComfyUI's real KSampler: Ulysses, ring and USP give the 1-rank latent (fp32)."""
import pytest

from comfy_env import ksample, relative_error
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers

LATENTS = {"divisible 16x16": (16, 16), "uneven 18x14": (18, 14)}
# Ordered so that runs with the same layout follow each other and reuse the warm helpers.
CASES = [(p, g, name) for p, g in [("ulysses", 2), ("ring", 2), ("ulysses", 4), ("ring", 4), ("usp", 4)]
         for name in LATENTS]


_reference = {}


def reference(model, latent_hw):
    if latent_hw not in _reference:
        _reference[latent_hw] = ksample(model, latent_hw)
    return _reference[latent_hw]


@pytest.mark.parametrize("parallelism,gpus,latent", CASES, ids=[f"{p}{g}-{n.split()[0]}" for p, g, n in CASES])
def test_parallel_sampling_equals_one_rank(tiny_flux, parallelism, gpus, latent):
    expected = reference(tiny_flux, LATENTS[latent])
    patched = enable_multigpu(tiny_flux, gpus=gpus, parallelism=parallelism)
    got = ksample(patched, LATENTS[latent])
    group = helpers.current_group()
    assert group is not None and group.plan.world_size == gpus, "the helpers did not run"
    if parallelism == "usp":
        assert (group.plan.ulysses_degree, group.plan.ring_degree) == (2, 2)
    assert relative_error(got, expected) <= 1e-5


def test_cfg_batch_of_two_is_parallel_and_exact(tiny_flux):
    """cfg > 1 sends cond and uncond as one batch of 2 through the same sharded call."""
    expected = ksample(tiny_flux, (18, 14), cfg=3.0)
    got = ksample(enable_multigpu(tiny_flux, gpus=2, parallelism="ring"), (18, 14), cfg=3.0)
    assert relative_error(got, expected) <= 1e-5


def test_input_model_is_untouched(tiny_flux):
    """The node returns a clone: the original MODEL still samples on one device, with no hooks attached."""
    patched = enable_multigpu(tiny_flux, gpus=2, parallelism="ring")
    assert patched is not tiny_flux
    assert "optimized_attention_override" not in tiny_flux.model_options["transformer_options"]
    assert not tiny_flux.object_patches
    assert relative_error(ksample(tiny_flux, (16, 16)), reference(tiny_flux, (16, 16))) == 0.0


@pytest.mark.parametrize("parallelism,degrees", [("usp", (4, 2))], ids=["usp4x2"])
def test_eight_ranks_equal_one(tiny_flux, parallelism, degrees):
    """An 8-GPU layout on 8 CPU ranks (the tiny model's 4 heads allow Ulysses up to 4; its ring of 2 runs the ring code
    that rings of 4 and 8 run): exact at an uneven size."""
    expected = reference(tiny_flux, LATENTS["uneven 18x14"])
    patched = enable_multigpu(tiny_flux, gpus=8, parallelism=parallelism,
                              ulysses_degree=degrees[0] if parallelism == "usp" else 0)
    got = ksample(patched, LATENTS["uneven 18x14"])
    group = helpers.current_group()
    assert group is not None and group.plan.world_size == 8, "the helpers did not run"
    assert (group.plan.ulysses_degree, group.plan.ring_degree) == degrees
    assert relative_error(got, expected) <= 1e-5
