"""Bad configurations fail before any work starts, with a message that names the fix."""
import logging

import pytest
import torch

from comfy_xdit_patch.config import choose_degrees, resolve_plan
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.nodes import EnableMultiGPU


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
        EnableMultiGPU.execute(tiny_flux, True, 3, "ulysses")


def test_disabled_node_returns_the_model_unchanged(tiny_flux):
    assert EnableMultiGPU.execute(tiny_flux, False, 2, "auto").result[0] is tiny_flux


def test_non_flux_model_passes_through_with_one_log_line(tiny_flux, caplog):
    other = tiny_flux.clone()
    other.add_object_patch("diffusion_model", torch.nn.Linear(2, 2))
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        assert enable_multigpu(other, gpus=2) is other
    assert [r.getMessage() for r in caplog.records] == [
        "Enable Multi-GPU: Linear is not a FLUX or Chroma model; passing it through unchanged (one GPU)."]


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


def test_symmetric_exchange_setting_is_checked_before_any_work(monkeypatch):
    monkeypatch.setenv("COMFY_XDIT_EXCHANGE", "nvlink")
    with pytest.raises(ValueError, match="COMFY_XDIT_EXCHANGE must be 'auto' or 'nccl' or 'symmetric' or 'copy-engine', not 'nvlink'"):
        resolve_plan(2, "ulysses", 24, torch.device("cuda", 0), visible_cuda=2)
    monkeypatch.setenv("COMFY_XDIT_EXCHANGE", "symmetric")
    with pytest.raises(ValueError, match="needs the CUDA GPUs of one machine.*unset it"):
        resolve_plan(2, "ulysses", 4, torch.device("cpu"), visible_cuda=0)
    with pytest.raises(ValueError, match="needs the CUDA GPUs of one machine"):
        resolve_plan(2, "ulysses", 24, torch.device("cuda", 0), visible_cuda=2, launcher="ray")
    plan = resolve_plan(2, "ulysses", 24, torch.device("cuda", 0), visible_cuda=2)
    assert plan.ulysses_exchange == "symmetric" and "symmetric exchange" in plan.describe()
    monkeypatch.delenv("COMFY_XDIT_EXCHANGE")


def test_the_exchange_is_symmetric_by_default_only_where_it_was_measured_faster(monkeypatch):
    """auto: two local GPUs per Ulysses group (measured on 2×H200); larger groups, ring, CPU ranks and Ray: NCCL.
    A pair without peer access falls back to NCCL when chosen automatically, and is an error when asked for."""
    from comfy_xdit_patch.config import check_peer_access
    monkeypatch.delenv("COMFY_XDIT_EXCHANGE", raising=False)
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
    monkeypatch.setenv("COMFY_XDIT_EXCHANGE", "symmetric")
    with pytest.raises(ValueError, match="cannot access"):
        check_peer_access(two, lambda a, b: False)


def test_pulled_weight_pieces_need_peer_access_between_every_pair_of_gpus(monkeypatch):
    """Every rank copies every other rank's pieces: all pairs must reach each other, not just a Ulysses group's.
    Chosen automatically, the gathers fall back to NCCL's all-gather; asked for, it is an error."""
    from comfy_xdit_patch.config import check_peer_access
    monkeypatch.setenv("COMFY_XDIT_EXCHANGE", "nccl")
    monkeypatch.delenv("COMFY_XDIT_SHARD_GATHERS", raising=False)
    plan = resolve_plan(4, "usp", 24, torch.device("cuda", 0), visible_cuda=4, ulysses_degree=2, shard_weights=True)
    assert plan.shard_gathers == "pull"
    within_pairs = lambda a, b: {a, b} in ({0, 1}, {2, 3})
    assert check_peer_access(plan, lambda a, b: True) is plan
    assert check_peer_access(plan, within_pairs).shard_gathers == "all-gather"
    monkeypatch.setenv("COMFY_XDIT_SHARD_GATHERS", "pull")
    with pytest.raises(ValueError, match="COMFY_XDIT_SHARD_GATHERS=pull: GPU 0 cannot access GPU 2"):
        check_peer_access(plan, within_pairs)


def test_symmetric_exchange_needs_peer_access_between_the_gpus_of_a_ulysses_group(monkeypatch):
    from comfy_xdit_patch.config import ParallelPlan, check_peer_access
    monkeypatch.setenv("COMFY_XDIT_EXCHANGE", "symmetric")
    plan = ParallelPlan("cuda", (0, 1, 2, 3), 2, 2, ulysses_exchange="symmetric")     # Ulysses groups {0,1}, {2,3}
    check_peer_access(plan, lambda a, b: {a, b} in ({0, 1}, {2, 3}))                   # no access across groups: fine
    with pytest.raises(ValueError, match="GPU 2 cannot access GPU 3's memory.*unset it"):
        check_peer_access(plan, lambda a, b: {a, b} == {0, 1})
    check_peer_access(ParallelPlan("cuda", (0, 1), 2, 1), lambda a, b: False)          # NCCL: not asked
