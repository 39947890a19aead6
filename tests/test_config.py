"""Bad configurations fail before any work starts, with a message that names the fix."""
import logging
import re

import psutil
import pytest
import torch

from comfy_xdit_patch.config import choose_degrees
from comfy_env import plan_for as resolve_plan
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.nodes import EnableMultiGPU
from comfy_xdit_patch.patches import adapter_named


def test_more_gpus_than_visible_names_what_is_visible():
    with pytest.raises(ValueError, match=r"only 2 CUDA device\(s\) are visible \(indices 0..1\)"):
        resolve_plan(4, "auto", 24, torch.device("cuda", 0), visible_cuda=2)


def test_ulysses_degree_must_divide_heads_and_lists_what_works():
    with pytest.raises(ValueError, match=r"head count \(24\) to divide by 5.*\[2, 3, 4, 6, 8, 12, 24\]"):
        choose_degrees(5, 24, "ulysses")
    with pytest.raises(ValueError, match=r"does not divide the model's 4 heads; degrees that work here: \[1, 2\]"):
        choose_degrees(6, 4, "usp", ulysses_degree=3)


def test_degrees_and_device_layout():
    assert choose_degrees(2, 24, "auto") == (2, 1)
    assert choose_degrees(4, 24, "auto") == (4, 1)
    assert choose_degrees(8, 24, "auto") == (8, 1)
    assert choose_degrees(3, 24, "auto") == (3, 1)
    assert choose_degrees(8, 12, "auto") == (4, 2)       # 12 heads: Ulysses as far as they divide, ring the rest
    assert choose_degrees(2, 3, "auto") == (1, 2)
    assert choose_degrees(4, 24, "ring") == (1, 4)
    assert choose_degrees(8, 24, "ulysses") == (8, 1)
    assert choose_degrees(4, 4, "usp") == (2, 2)
    plan = resolve_plan(0, "ulysses", 24, torch.device("cuda", 1), visible_cuda=4)
    assert plan.device_indices == (1, 0, 2, 3) and plan.backend == "nccl"
    assert resolve_plan(3, "ring", 4, torch.device("cpu"), visible_cuda=0).device_indices == (None,) * 3


def test_node_rejects_bad_degree_on_a_real_model(tiny_flux):
    with pytest.raises(ValueError, match="divide by 3"):
        EnableMultiGPU.execute(tiny_flux, enabled=True, gpus=3, parallelism="ulysses")


def test_disabled_node_returns_the_model_unchanged(tiny_flux):
    assert EnableMultiGPU.execute(tiny_flux, enabled=False, gpus=2, parallelism="auto").result[0] is tiny_flux


def test_a_model_without_a_family_adapter_runs_cfg_batch_parallel_and_refuses_token_settings(tiny_flux, caplog):
    """A model no family adapter splits gets CFG/batch parallelism (each GPU a group of its own); a setting only
    sequence parallelism can honour fails before any work, naming the setting."""
    other = tiny_flux.clone()
    other.add_object_patch("diffusion_model", torch.nn.Linear(2, 2))
    with caplog.at_level(logging.INFO, logger="comfy_xdit_patch"):
        patched = enable_multigpu(other, gpus=2)
    assert patched is not other
    assert [r.getMessage() for r in caplog.records] == [
        "Enable Multi-GPU: 2 CPU ranks (2 groups of ulysses 1 x ring 1, round_robin), CFG/batch-parallel (Linear has "
        "no sequence-parallel adapter)"]
    for setting, fix in [(dict(parallelism="ulysses"), "Set parallelism to auto."),
                         (dict(ring_degree=2), "Set ulysses_degree and ring_degree to 0."),
                         (dict(sequence_degree=2), "Set sequence_degree to 0."),
                         (dict(shard_weights=True), "turn shard_weights off.")]:
        with pytest.raises(ValueError) as error:
            enable_multigpu(other, gpus=2, **setting)
        assert str(error.value).startswith("Linear has no sequence-parallel adapter (Enable Multi-GPU splits the "
                                           "tokens of FLUX, Chroma, SD3, SD3.5, Wan, HunyuanVideo, MiniMax H3, "
                                           "LTX-Video, LTX-2, Qwen-Image, Z-Image, Lumina 2 and Krea 2)")
        assert str(error.value).endswith(fix)


def test_foreign_object_patch_on_the_diffusion_model_runs_on_one_gpu(tiny_flux, caplog):
    """An object patch from another node (here on a block's forward) cannot be reproduced by the helpers: the
    sampling runs on one GPU, with one log line naming it, and equals the one-GPU result with that patch."""
    from test_equivalence import ksample
    from comfy_env import relative_error
    block = tiny_flux.get_model_object("diffusion_model.single_blocks.0")

    def scaled_forward(x, *args, **kwargs):
        return type(block).forward(block, x, *args, **kwargs) * 0.5

    patched = tiny_flux.clone()
    patched.add_object_patch("diffusion_model.single_blocks.0.forward", scaled_forward)
    expected = ksample(patched, (16, 16))
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(enable_multigpu(patched, gpus=2, parallelism="ring"), (16, 16))
    assert relative_error(got, expected) == 0.0
    assert any("diffusion_model.single_blocks.0.forward" in r.getMessage() for r in caplog.records)


def test_a_helper_gpu_without_room_for_the_model_is_refused_before_any_work():
    from comfy_xdit_patch.config import check_helper_memory
    plan = resolve_plan(3, "ring", 24, torch.device("cuda", 0), visible_cuda=3)
    free = {1: 80 * 2**30, 2: 16 * 2**30}
    with pytest.raises(ValueError, match=r"GPU 2 has 16.0 GiB free .* \(22.2 GiB plus activations\)"):
        check_helper_memory(plan, int(22.2 * 2**30), free.__getitem__)
    check_helper_memory(resolve_plan(2, "ring", 24, torch.device("cuda", 0), visible_cuda=3), 22 * 2**30,
                        free.__getitem__)


def test_symmetric_exchange_setting_is_checked_before_any_work():
    with pytest.raises(ValueError, match="exchange must be 'auto' or 'nccl' or 'symmetric' or 'copy-engine', not 'nvlink'"):
        resolve_plan(2, "ulysses", 24, torch.device("cuda", 0), visible_cuda=2, exchange="nvlink")
    with pytest.raises(ValueError, match="needs the CUDA GPUs of one machine.*set exchange to auto"):
        resolve_plan(2, "ulysses", 4, torch.device("cpu"), visible_cuda=0, exchange="symmetric")
    with pytest.raises(ValueError, match="needs the CUDA GPUs of one machine"):
        resolve_plan(2, "ulysses", 24, torch.device("cuda", 0), visible_cuda=2, launcher="ray", exchange="symmetric")
    plan = resolve_plan(2, "ulysses", 24, torch.device("cuda", 0), visible_cuda=2, exchange="symmetric")
    assert plan.ulysses_exchange == "symmetric" and "symmetric exchange" in plan.describe()


def test_the_exchange_is_symmetric_by_default_only_where_it_was_measured_faster():
    """auto: two local GPUs per Ulysses group (measured on 2×H200); larger groups, ring, CPU ranks and Ray: NCCL.
    A pair without peer access falls back to NCCL when chosen automatically, and is an error when asked for."""
    from comfy_xdit_patch.config import check_peer_access
    cuda = torch.device("cuda", 0)
    two = resolve_plan(2, "ulysses", 24, cuda, visible_cuda=2)
    assert two.ulysses_exchange == "symmetric"
    assert resolve_plan(4, "ulysses", 24, cuda, visible_cuda=4).ulysses_exchange == "nccl"
    assert resolve_plan(4, "usp", 24, cuda, visible_cuda=4, ulysses_degree=2).ulysses_exchange == "symmetric"
    assert resolve_plan(2, "ring", 24, cuda, visible_cuda=2).ulysses_exchange == "nccl"
    assert resolve_plan(2, "ulysses", 24, cuda, visible_cuda=2, launcher="ray").ulysses_exchange == "nccl"
    assert resolve_plan(2, "ulysses", 4, torch.device("cpu"), visible_cuda=0).ulysses_exchange == "nccl"
    assert check_peer_access(two, lambda a, b: False).ulysses_exchange == "nccl"
    assert check_peer_access(two, lambda a, b: True) is two
    with pytest.raises(ValueError, match="cannot access"):
        check_peer_access(resolve_plan(2, "ulysses", 24, cuda, visible_cuda=2, exchange="symmetric"),
                          lambda a, b: False)


def test_pulled_weight_pieces_need_peer_access_between_every_pair_of_gpus():
    """Every rank copies every other rank's pieces: all pairs must reach each other, not just a Ulysses group's.
    Chosen automatically, the gathers fall back to NCCL's all-gather; asked for, it is an error."""
    from comfy_xdit_patch.config import check_peer_access
    options = dict(visible_cuda=4, ulysses_degree=2, shard_weights=True, exchange="nccl")
    plan = resolve_plan(4, "usp", 24, torch.device("cuda", 0), **options)
    assert plan.shard_gathers == "pull"
    within_pairs = lambda a, b: {a, b} in ({0, 1}, {2, 3})
    assert check_peer_access(plan, lambda a, b: True) is plan
    assert check_peer_access(plan, within_pairs).shard_gathers == "all-gather"
    with pytest.raises(ValueError, match="shard_gathers 'pull': GPU 0 cannot access GPU 2"):
        check_peer_access(resolve_plan(4, "usp", 24, torch.device("cuda", 0), shard_gathers="pull", **options),
                          within_pairs)


def test_symmetric_exchange_needs_peer_access_between_the_gpus_of_a_ulysses_group():
    from comfy_xdit_patch.config import ParallelPlan, check_peer_access
    plan = ParallelPlan("cuda", (0, 1, 2, 3), 2, 2, ulysses_exchange="symmetric",     # Ulysses groups {0,1}, {2,3}
                        requested_exchange="symmetric")
    check_peer_access(plan, lambda a, b: {a, b} in ({0, 1}, {2, 3}))                   # no access across groups: fine
    with pytest.raises(ValueError, match="GPU 2 cannot access GPU 3's memory.*set exchange to auto"):
        check_peer_access(plan, lambda a, b: {a, b} == {0, 1})
    check_peer_access(ParallelPlan("cuda", (0, 1), 2, 1), lambda a, b: False)          # NCCL: not asked


@pytest.fixture
def no_helpers():
    """No helper group before; afterwards none was started and no process was spawned."""
    from comfy_xdit_patch.runtime import helper_group as helpers
    helpers.shutdown_group()
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    assert helpers.current_group() is None, "a helper group was started"
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children, "a process was spawned"


def test_usp_degrees_that_do_not_fit_the_ranks_name_the_valid_values(tiny_flux, no_helpers):
    with pytest.raises(ValueError, match=r"ring_degree 5 does not divide the 4 ranks; use one of \[1, 2, 4\]"):
        choose_degrees(4, 24, "usp", ring_degree=5)
    with pytest.raises(ValueError, match=r"ring_degree 3 does not divide the 4 ranks; use one of \[1, 2, 4\] "
                                         r"\(pairs ulysses x ring that work here: 1 x 4, 2 x 2, 4 x 1\)"):
        choose_degrees(4, 24, "usp", ring_degree=3)
    with pytest.raises(ValueError, match=r"ulysses_degree 3 does not divide the 4 ranks"):
        choose_degrees(4, 24, "usp", ulysses_degree=3)
    with pytest.raises(ValueError, match=r"ulysses_degree 3 x ring_degree 2 must equal the number of ranks \(4\)\. "
                                         r"Pairs \(ulysses x ring\) that work here: 1 x 4, 2 x 2, 4 x 1"):
        choose_degrees(4, 24, "usp", ulysses_degree=3, ring_degree=2)
    with pytest.raises(ValueError, match=r"ring_degree 2 leaves Ulysses groups of 3 ranks, which does not divide "
                                         r"the model's 4 heads; ring degrees that work here: \[3, 6\]"):
        choose_degrees(6, 4, "usp", ring_degree=2)
    assert choose_degrees(4, 24, "usp", ring_degree=2) == (2, 2)
    assert choose_degrees(4, 24, "usp", ring_degree=4) == (1, 4)
    assert choose_degrees(8, 4, "usp", ulysses_degree=4, ring_degree=2) == (4, 2)
    with pytest.raises(ValueError, match=r"ring_degree 5 does not divide the 4 ranks"):
        EnableMultiGPU.execute(tiny_flux, enabled=True, gpus=4, parallelism="usp", ulysses_degree=0, ring_degree=5)


def test_degrees_are_honoured_with_auto_and_contradicting_ones_name_the_fix(tiny_flux, no_helpers):
    assert choose_degrees(4, 24, "auto", ulysses_degree=2) == (2, 2)
    assert choose_degrees(4, 24, "auto", ring_degree=4) == (1, 4)
    assert choose_degrees(4, 24, "auto", ulysses_degree=1, ring_degree=4) == (1, 4)
    with pytest.raises(ValueError, match=r"ring_degree 3 does not divide the 4 ranks"):
        choose_degrees(4, 24, "auto", ring_degree=3)
    plan = resolve_plan(4, "auto", 4, torch.device("cpu"), visible_cuda=0, ring_degree=4)
    assert (plan.ulysses_degree, plan.ring_degree) == (1, 4)
    # Degrees that agree with ring or ulysses are what those choices run anyway.
    assert choose_degrees(4, 24, "ring", ulysses_degree=1, ring_degree=4) == (1, 4)
    assert choose_degrees(4, 24, "ulysses", ulysses_degree=4, ring_degree=1) == (4, 1)
    with pytest.raises(ValueError, match=r"parallelism 'ring' runs ulysses 1 x ring 4 over the 4 ranks, but "
                                         r"ulysses_degree is 2\. Set parallelism to 'usp' to combine the two, or "
                                         r"ulysses_degree to 0\."):
        choose_degrees(4, 24, "ring", ulysses_degree=2)
    with pytest.raises(ValueError, match=r"parallelism 'ulysses' .* but ring_degree is 2\. Set parallelism to 'usp'"):
        choose_degrees(4, 24, "ulysses", ring_degree=2)
    with pytest.raises(ValueError, match=r"parallelism 'ring' .* but ring_degree is 2\. .* or ring_degree to 0"):
        EnableMultiGPU.execute(tiny_flux, enabled=True, gpus=4, parallelism="ring", ulysses_degree=0, ring_degree=2)
    tooltips = {option.id: option.tooltip for option in EnableMultiGPU.define_schema().inputs}
    for name in ("ulysses_degree", "ring_degree"):
        assert "For usp or auto" in tooltips[name] and "Leave 0 with parallelism ulysses or ring" in tooltips[name]
    assert "or the degrees below when set" in tooltips["parallelism"]


def _call(latent_hw, text=77, references=()):
    """One FLUX model call's arguments by name, as the wrapper sees them."""
    arguments = {"x": torch.zeros(1, 16, *latent_hw), "context": torch.zeros(1, text, 4096)}
    if references:
        arguments["ref_latents"] = [torch.zeros(1, 16, *hw) for hw in references]
    return arguments


def test_a_call_with_fewer_tokens_than_ranks_is_sent_to_one_gpu_with_the_reason(tiny_flux):
    """Every rank needs at least one text and one image token (FLUX's blocks cannot reshape an empty shard); one of
    each is enough, for ring, Ulysses and USP alike (the sampling test below runs them)."""
    unsupported_reason = adapter_named("flux").unsupported_reason
    model = tiny_flux.get_model_object("diffusion_model")

    def reason(arguments, ranks, weights=None):
        return unsupported_reason(arguments, {}, model, ranks, 1, weights)

    assert reason(_call((2, 2)), 2) == ("the image has 1 token, fewer than the 2 sequence-parallel ranks: every rank "
                                        "needs at least one; use fewer GPUs or a larger image")
    assert reason(_call((2, 6)), 4).startswith("the image has 3 tokens, fewer than the 4 sequence-parallel ranks")
    assert reason(_call((3, 1)), 4).startswith("the image has 2 tokens")   # padded to whole 2x2 patches
    assert reason(_call((2, 4)), 2) is None                                # one token per rank
    assert reason(_call((3, 3)), 4) is None                                # 2x2 patches after padding
    assert reason(_call((2, 4)), 2, [[1.0, 1.0]]) is None
    # Reference latents (Kontext) add tokens, split on their own after the generated image's.
    assert reason(_call((2, 2), references=[(4, 4)]), 2) is None
    assert reason(_call((2, 2), references=[(2, 2)]), 2).startswith(
        "the image has 2 tokens (1 generated, 1 of reference images); the generated and the reference tokens are "
        "split over the 2 sequence-parallel ranks each on its own")
    assert reason(_call((2, 2), references=[(2, 2)]), 4).startswith(
        "the image has 2 tokens (1 generated, 1 of reference images), fewer than the 4 sequence-parallel ranks")
    # Tokens split by measured speeds: a slow GPU's share can round to none.
    assert "split by the GPUs' measured speeds, a rank would get none" in reason(_call((4, 4)), 2, [[9.0, 1.0]])
    assert reason(_call((4, 4), text=1), 2).startswith(
        "the prompt has 1 text token, fewer than the 2 sequence-parallel ranks")


def test_the_copy_engine_exchange_never_gets_a_member_with_fewer_than_two_tokens(tiny_flux):
    """The copy-engine exchange needs two tokens (text and image together) on every member of a Ulysses group
    (parallel/copy_engine.py raises otherwise, on every helper). Every call with a member below that is sent to one
    GPU before dispatch: whenever the rule lets a call through, each member holds at least two."""
    import itertools
    from comfy_xdit_patch.parallel.call import SequenceParallelCall
    unsupported_reason = adapter_named("flux").unsupported_reason
    from types import SimpleNamespace
    model = tiny_flux.get_model_object("diffusion_model")
    passed = refused = 0
    for ranks, text, (h, w), reference, weights in itertools.product(
            (2, 3, 4), (1, 2, 3, 5), ((2, 2), (2, 4), (2, 6), (4, 4), (2, 10)), (None, (2, 2), (2, 6)),
            (None, "uneven")):
        token_weights = [[3.0] + [1.0] * (ranks - 1)] if weights else None
        arguments = _call((h, w), text, [reference] if reference else ())
        call = SequenceParallelCall(SimpleNamespace(sp_degree=ranks), token_weights and token_weights[0])
        main = -(-h // 2) * -(-w // 2)
        refs = -(-reference[0] // 2) * -(-reference[1] // 2) if reference else 0
        call.plan_tokens(text, main + refs, refs)
        if unsupported_reason(arguments, {}, model, ranks, 1, token_weights) is None:
            passed += 1
            assert min(call.seq_lens) >= 2, (ranks, text, (h, w), reference, weights)
        else:
            refused += 1
            assert min(call.img_sizes) == 0 or min(call.txt_sizes) == 0
    assert passed and refused
    assert unsupported_reason(_call((2, 2), text=1), {}, model, 2, 1) is not None   # the second member: no token


@pytest.mark.parametrize("parallelism,gpus,latent_hw", [("ring", 2, (2, 2)), ("usp", 4, (2, 6))],
                         ids=["1-token-on-ring2", "3-tokens-on-usp4"])
def test_sampling_a_latent_with_fewer_tokens_than_ranks_gives_the_one_gpu_result(tiny_flux, caplog, parallelism,
                                                                                  gpus, latent_hw):
    """Through ComfyUI's KSampler: every call goes to one GPU with one log line, the helpers stay up, and a latent
    with one token per rank then runs parallel."""
    from comfy_env import ksample, relative_error
    from comfy_xdit_patch.runtime import helper_group as helpers
    expected = ksample(tiny_flux, latent_hw)
    parallel = enable_multigpu(tiny_flux, gpus=gpus, parallelism=parallelism)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(parallel, latent_hw)
    tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)
    assert relative_error(got, expected) == 0.0
    assert [r.getMessage() for r in caplog.records if r.name.startswith("comfy_xdit_patch")] == [
        f"Enable Multi-GPU: running on one GPU because the image has {tokens} token{'s' if tokens > 1 else ''}, "
        f"fewer than the {gpus} sequence-parallel ranks: every rank needs at least one; use fewer GPUs or a larger "
        "image."]
    group = helpers.current_group()
    assert group is not None and group.alive() and group.plan.world_size == gpus
    caplog.clear()
    one_per_rank = (2, 2 * gpus)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(parallel, one_per_rank)
    assert relative_error(got, ksample(tiny_flux, one_per_rank)) <= 1e-5
    assert not [r for r in caplog.records if r.name.startswith("comfy_xdit_patch")]
    assert helpers.current_group() is group, "one token per rank did not run parallel"


def test_cpu_ranks_that_do_not_fit_in_host_memory_are_refused_before_starting(tiny_flux, monkeypatch, no_helpers):
    from types import SimpleNamespace
    size = tiny_flux.model_size()
    # Room for 3.5 helper copies with the 10% margin: 4 ranks (3 helpers) fit, 8 do not.
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=int(3.5 * 1.1 * size)))
    with pytest.raises(ValueError, match=r"8 CPU ranks need .* for their 7 helper processes, each holding a whole "
                                         r"copy of the diffusion model .* is available\. Lower gpus to 4 \(at most 4 "
                                         r"CPU ranks fit\)"):
        EnableMultiGPU.execute(tiny_flux, enabled=True, gpus=8, parallelism="ring")
    assert enable_multigpu(tiny_flux, gpus=4, parallelism="ring") is not tiny_flux
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=int(0.5 * size)))
    with pytest.raises(ValueError, match=r"Not even one helper rank fits: free host memory"):
        enable_multigpu(tiny_flux, gpus=2, parallelism="ring")


def test_cpu_ranks_with_sharded_weights_need_only_their_share():
    from comfy_xdit_patch.config import check_helper_memory
    plan = resolve_plan(4, "ring", 4, torch.device("cpu"), visible_cuda=0, shard_weights=True)
    gib = 2**30
    check_helper_memory(plan, 12 * gib, None, lambda: 14 * gib)   # 3 x (1/4 + 8%) x 12 GiB x 1.1 = 13.1 GiB
    with pytest.raises(ValueError, match=r"each holding its share of the diffusion model .* Lower gpus to 3"):
        check_helper_memory(plan, 12 * gib, None, lambda: 11 * gib)   # 3 ranks: 2 x (1/3 + 8%) x 13.2 = 10.9 GiB


@pytest.mark.parametrize("name,value,message", [
    ("COMFY_XDIT_START_TIMEOUT", "soon", "COMFY_XDIT_START_TIMEOUT must be a number of seconds above 0, not 'soon'"),
    ("COMFY_XDIT_HOST", "0.0.0.0", "COMFY_XDIT_HOST=0.0.0.0 would listen on every interface"),
])
def test_a_bad_deployment_variable_fails_the_node_before_any_work(tiny_flux, monkeypatch, no_helpers, name, value,
                                                                   message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        EnableMultiGPU.execute(tiny_flux, enabled=True, gpus=2, parallelism="ring")


def test_a_speed_weighted_split_that_leaves_a_rank_without_tokens_runs_on_one_gpu(tiny_flux, caplog):
    """weighted_round_robin sizes each rank's tokens by its measured speed: the wrapper checks the split the call
    will make (here a rank measured 9x slower would get none of 4 image tokens)."""
    from comfy_env import ksample, relative_error
    from comfy_xdit_patch.runtime import helper_group as helpers
    helpers.shutdown_group()   # a running group keeps its own scheduling (a plan's scheduling restarts nothing)
    try:
        parallel = enable_multigpu(tiny_flux, gpus=2, parallelism="ring", scheduling="weighted_round_robin")
        ksample(parallel, (2, 4), steps=1)
        group = helpers.current_group()
        group.scheduler.rank_speeds = [9.0, 1.0]
        with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
            got = ksample(parallel, (4, 4))
        assert relative_error(got, ksample(tiny_flux, (4, 4))) == 0.0
        assert [r.getMessage() for r in caplog.records if r.name.startswith("comfy_xdit_patch")] == [
            "Enable Multi-GPU: running on one GPU because the image has 4 tokens; split by the GPUs' measured "
            "speeds, a rank would get none: use fewer GPUs, scheduling round_robin or least_loaded, or a larger "
            "image."]
        assert helpers.current_group() is group and group.alive()
    finally:
        helpers.shutdown_group()


def test_the_node_applied_twice_is_refused_naming_the_fix(tiny_flux):
    """A second Enable Multi-GPU on the same MODEL line would wrap rank 0's hooks twice while the helpers hold them
    once: refused before any work."""
    once = enable_multigpu(tiny_flux, gpus=2)
    with pytest.raises(ValueError, match="already applied to this model by a node before this one"):
        enable_multigpu(once, gpus=2)
