"""Placement over GPU groups: batch rows and CFG branches on groups, token shards sized by speed (CPU ranks with
injected device speeds), and N ranks still equal to 1."""
import pytest
import torch

from comfy_env import empty_latent, flux_conditioning, relative_error
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.parallel.placement import assign_rows, weighted_split
from comfy_xdit_patch.runtime import helper_group as helpers
from helper_hooks import use_hooked_helpers
from test_community import ksample


def inject_speeds(monkeypatch, speeds):
    """GPUs of different speeds: every rank reports ``speeds[rank]`` instead of measuring."""
    monkeypatch.setattr(helpers, "measure_speed", lambda device, rank: float(speeds.split(",")[rank]))
    use_hooked_helpers(monkeypatch, SPEEDS=speeds)


def test_strategies_place_rows_as_documented():
    assert assign_rows(5, [1, 1], "round_robin") == [[0, 2, 4], [1, 3]]
    assert assign_rows(4, [1, 1], "least_loaded") == [[0, 2], [1, 3]]
    assert assign_rows(4, [1, 3], "least_loaded") == [[2], [0, 1, 3]]     # three times as fast: three rows
    assert assign_rows(4, [2, 6], "weighted_round_robin") == [[1], [0, 2, 3]]
    assert assign_rows(8, [1, 1, 2], "weighted_round_robin") == [[1, 5], [2, 6], [0, 3, 4, 7]]
    assert assign_rows(1, [1, 9], "weighted_round_robin") == [[0], []], "rank 0's group always gets a row"


def test_token_shards_follow_speed_exactly():
    assert weighted_split(100, [1, 3]) == [25, 75]
    assert weighted_split(77, [1, 1, 1]) == [26, 26, 25]
    assert sum(weighted_split(4096, [0.7, 1.3, 2.0])) == 4096


@pytest.fixture
def fresh(monkeypatch):
    helpers.shutdown_group()
    yield monkeypatch
    helpers.shutdown_group()


@pytest.fixture
def conds():
    return dict(positive=flux_conditioning(77, seed=1), negative=flux_conditioning(77, seed=2))


def test_weighted_round_robin_gives_the_faster_group_more_rows(unet, conds, fresh):
    inject_speeds(fresh, "1,1,3,3")
    start = {"samples": torch.randn(4, 16, 16, 14, generator=torch.Generator().manual_seed(8))}
    expected = ksample(unet, latent=start, denoise=0.7, **conds)
    parallel = enable_multigpu(unet, gpus=4, parallelism="ring", sequence_degree=2, scheduling="weighted_round_robin")
    got = ksample(parallel, latent=start, denoise=0.7, **conds)
    assert helpers.current_group().scheduler.last_rows == [[1], [0, 2, 3]]
    assert relative_error(got, expected) <= 1e-5


def test_tokens_split_by_speed_inside_one_group(unet, conds, fresh):
    inject_speeds(fresh, "1,3")
    expected = ksample(unet, latent=empty_latent(18, 14), **conds)
    got = ksample(enable_multigpu(unet, gpus=2, parallelism="ulysses", scheduling="weighted_round_robin"),
                  latent=empty_latent(18, 14), **conds)
    group = helpers.current_group()
    assert group.scheduler.placement(1) == ([[0]], [[1.0, 3.0]])
    assert relative_error(got, expected) <= 1e-5


def test_adaptive_measures_group_speeds_after_each_run(unet, conds, fresh):
    start = {"samples": torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(9))}
    parallel = enable_multigpu(unet, gpus=4, parallelism="ring", sequence_degree=2, scheduling="adaptive")
    expected = ksample(unet, latent=start, denoise=0.8, **conds)
    assert relative_error(ksample(parallel, latent=start, denoise=0.8, **conds), expected) <= 1e-5
    group = helpers.current_group()
    assert group.scheduler.group_speeds is not None and all(s > 0 for s in group.scheduler.group_speeds)
    assert relative_error(ksample(parallel, latent=start, denoise=0.8, **conds), expected) <= 1e-5


def test_groups_with_controlnet_kontext_and_cfg(unet, conds, fresh):
    """4 ranks, groups of 2: with cfg > 1, cond and uncond (one batch of 2) go to different groups, each carrying its
    ControlNet residuals and Kontext references."""
    from test_community import controlnet_conds, kontext_conds
    inject_speeds(fresh, "1,1,1,1")   # least_loaded weighs measured speeds: make them equal
    positive, negative = controlnet_conds(conds, (18, 14))
    positive = kontext_conds({"positive": positive}, (8, 10))
    negative = kontext_conds({"positive": negative}, (8, 10), seed=6)
    expected = ksample(unet, positive=positive, negative=negative, latent=empty_latent(18, 14), cfg=2.5)
    parallel = enable_multigpu(unet, gpus=4, parallelism="ring", sequence_degree=2, scheduling="least_loaded")
    got = ksample(parallel, positive=positive, negative=negative, latent=empty_latent(18, 14), cfg=2.5)
    assert helpers.current_group().scheduler.last_rows == [[0], [1]]
    assert relative_error(got, expected) <= 1e-5
