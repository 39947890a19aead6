"""shard_weights: every rank holds 1/N of each block's weights and gathers a block just before it runs. Sharded runs
equal replicated runs and one rank (fp32, tiny FLUX, real KSampler, helper processes over gloo)."""
import nodes
import pytest
import torch

from comfy_env import ksample, relative_error, tiny_flux_state_dict
from comfy_xdit_patch.config import ParallelPlan, check_helper_memory
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.parallel.weight_shards import BlockLayout
from comfy_xdit_patch.patches import adapter_named
from comfy_xdit_patch.runtime import helper_group as helpers


def block_bytes(model):
    state = model.model.diffusion_model.state_dict()
    blocks = sum(t.numel() * t.element_size() for k, t in state.items() if adapter_named("flux").is_block_weight(k))
    return blocks, sum(t.numel() * t.element_size() for t in state.values()) - blocks


@pytest.mark.parametrize("parallelism,gpus", [("ulysses", 2), ("usp", 4)])   # ring alone: test_wan, test_hunyuan_video
def test_sharded_weights_equal_replicated_and_one_rank(tiny_flux, parallelism, gpus):
    expected = ksample(tiny_flux)
    replicated = ksample(enable_multigpu(tiny_flux, gpus=gpus, parallelism=parallelism))
    sharded_model = enable_multigpu(tiny_flux, gpus=gpus, parallelism=parallelism, shard_weights=True)
    sharded = ksample(sharded_model)
    group = helpers.current_group()
    assert group is not None and group.plan.shard_weights and group.block_shards is not None
    assert relative_error(sharded, expected) <= 1e-5
    assert relative_error(sharded, replicated) <= 1e-5

    # Each helper holds 1/N of the blocks plus the unsharded rest; rank 0's own share is 1/N of the blocks too.
    blocks, rest = block_bytes(tiny_flux)
    stats = group.helper_stats()
    for rank, helper in stats.items():
        share = helper["weight_bytes"] - rest
        assert blocks / gpus <= share <= blocks / gpus * 1.01 + 64, (rank, share, blocks / gpus)
    assert blocks / gpus <= group.block_shards.shard_bytes() <= blocks / gpus * 1.01 + 64


def test_gathers_copy_the_peers_pieces_from_peer_memory_or_all_gather_on_request(tiny_flux, monkeypatch):
    """Ranks on one machine keep their pieces in peer memory and a gather copies the peers' pieces (no collective);
    shard_gathers=all-gather (what Ray uses) gathers through the communicator. Both equal one rank, and
    the pieces rank 0 holds are the ones its peers copy: every rank's piece is mapped here, and it is its shard."""
    import os
    from comfy_xdit_patch.parallel import peer_memory
    expected = ksample(tiny_flux)
    files_before = set(os.listdir("/dev/shm"))
    pulled = ksample(enable_multigpu(tiny_flux, gpus=2, parallelism="ulysses", shard_weights=True))
    group = helpers.current_group()
    shards = group.block_shards
    assert group.plan.shard_gathers == "pull" and shards.pieces is not None
    assert relative_error(pulled, expected) <= 1e-5
    key = shards.order[0]
    assert shards._piece_views[key][0].data_ptr() == shards.shards[key].data_ptr()
    assert peer_memory.held_bytes("cpu") >= shards.shard_bytes()
    assert not {f for f in set(os.listdir("/dev/shm")) - files_before if f.startswith("comfy-xdit-")}, \
        "peer-memory files stay after every rank mapped them"

    gathered = ksample(enable_multigpu(tiny_flux, gpus=2, parallelism="ulysses", shard_weights=True,
                                       shard_gathers="all-gather"))
    group = helpers.current_group()
    assert group.plan.shard_gathers == "all-gather" and "all-gathered" in group.plan.describe()
    assert group.block_shards.pieces is None
    assert relative_error(gathered, expected) <= 1e-5
    assert peer_memory.held_bytes("cpu") == 0, "the previous group's peer memory was not freed"


def test_shard_gathers_setting_is_checked(tiny_flux):
    from comfy_env import plan_for as resolve_plan
    with pytest.raises(ValueError, match="shard_gathers must be 'auto' or 'pull' or 'all-gather'"):
        enable_multigpu(tiny_flux, gpus=2, shard_weights=True, shard_gathers="separate")
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="needs every rank on this machine"):
        resolve_plan(2, "auto", 4, cpu, 0, launcher="ray", shard_weights=True, shard_gathers="pull")
    assert resolve_plan(2, "auto", 4, cpu, 0, shard_weights=True).shard_gathers == "pull"
    assert resolve_plan(2, "auto", 4, cpu, 0, launcher="ray", shard_weights=True).shard_gathers == "all-gather"


def test_sharded_weights_with_loras_and_a_strength_change(unet):
    """LoraLoaderModelOnly before the node: the shards hold the patched weights, and a new strength re-sends them
    (into new peer memory, the old freed)."""
    from comfy_xdit_patch.parallel import peer_memory
    loader = nodes.LoraLoaderModelOnly()
    results = []
    held = []
    for strength in (0.8, -0.7):
        patched = loader.load_lora_model_only(unet, "tiny_lora_a.safetensors", strength)[0]
        expected = ksample(patched)
        got = ksample(enable_multigpu(patched, gpus=2, parallelism="ulysses", shard_weights=True))
        assert relative_error(got, expected) <= 1e-5
        results.append(got)
        group = helpers.current_group()
        held.append((id(group), group.weight_syncs, peer_memory.held_bytes("cpu")))
    assert held[1][:2] == (held[0][0], held[0][1] + 1), "the strength change did not re-sync the same helpers"
    assert held[0][2] == held[1][2] > 0, "the re-sync did not free the previous pieces"
    assert relative_error(results[0], results[1]) > 1e-3, "the strength change did not reach the shards"


def test_quantized_weights_cannot_be_sharded_and_run_on_one_gpu_naming_it(tiny_flux, caplog):
    import logging
    import comfy.sd
    fp8 = comfy.sd.load_diffusion_model_state_dict(tiny_flux_state_dict(), model_options={"dtype": torch.float8_e4m3fn})
    expected = ksample(fp8)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(enable_multigpu(fp8, gpus=2, parallelism="ulysses", shard_weights=True))
    assert relative_error(got, expected) == 0.0
    assert any("shard_weights supports bf16, fp16 and fp32" in r.getMessage() for r in caplog.records)


def test_block_layout_pads_to_a_multiple_of_the_ranks():
    module = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))   # 20 + 12 = 32 numbers... + bias
    layout = BlockLayout(module, 3)
    assert layout.numel == sum(p.numel() for p in module.parameters())
    assert layout.shard_numel * 3 >= layout.numel > layout.shard_numel * 2
    flat = layout.flatten(dict(module.named_parameters()), 3, "cpu")
    assert torch.equal(flat[:layout.numel], torch.cat([p.detach().reshape(-1) for p in module.parameters()]))


def test_a_call_that_failed_midway_leaves_no_gather_behind(monkeypatch):
    """A CUDA-graph capture that raises after block 0 leaves block 1's captured gather pending; it never ran. The
    eager rerun (a new call) must issue block 1's gather again, like every other rank, not wait on the stale one."""
    from comfy_xdit_patch.parallel import weight_shards
    from comfy_xdit_patch.parallel.call import SequenceParallelCall
    issued = []

    class Done:
        def wait(self):
            pass

    def gather(buffer, shard, group=None, async_op=False):
        issued.append(shard)
        buffer.copy_(shard)
        return Done()

    monkeypatch.setattr(weight_shards, "all_gather_single", gather)
    model = torch.nn.Module()
    model.double_blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
    model.single_blocks = torch.nn.ModuleList([])
    blocks = [(("double_blocks", index), module) for index, module in enumerate(model.double_blocks)]
    shards = weight_shards.ShardedBlocks(blocks, 1, torch.device("cpu"), pull=False)
    for key, module in blocks:
        shards.shards[key] = shards.layouts[key].flatten(dict(module.named_parameters()), 1, "cpu")
    first, second = shards.order
    SequenceParallelCall(mesh=None, weight_shards=shards)
    shards.enter(first)                  # starts block 1's gather ...
    shards.exit(first)                   # ... and the call fails before block 1
    assert [id(t) for t in issued] == [id(shards.shards[first]), id(shards.shards[second])]
    SequenceParallelCall(mesh=None, weight_shards=shards)     # the rerun
    for key in shards.order:
        shards.enter(key)
        shards.exit(key)
    assert [id(t) for t in issued[2:]] == [id(shards.shards[first]), id(shards.shards[second])]


def test_helper_memory_check_counts_the_share_with_shard_weights():
    gib = 2 ** 30
    replicated = ParallelPlan("cuda", (0, 1), 2, 1)
    sharded = ParallelPlan("cuda", (0, 1), 2, 1, shard_weights=True)
    free = lambda index: 16 * gib
    with pytest.raises(ValueError, match="shard_weights"):
        check_helper_memory(replicated, 24 * gib, free)
    check_helper_memory(sharded, 24 * gib, free)     # 12 GiB share + two blocks fits in 16 GiB
    with pytest.raises(ValueError, match="more GPUs"):
        check_helper_memory(sharded, 24 * gib, lambda index: 8 * gib)


def test_sharded_chroma_equals_one_rank():
    """Chroma runs FLUX's blocks through its own forward, with the same block-replacement points."""
    from comfy_env import load_tiny_chroma
    chroma = load_tiny_chroma()
    expected = ksample(chroma, cfg=2.0)
    got = ksample(enable_multigpu(chroma, gpus=2, parallelism="ring", shard_weights=True), cfg=2.0)
    assert helpers.current_group().block_shards is not None
    assert relative_error(got, expected) <= 1e-5


def test_another_nodes_block_replacement_is_kept_and_runs_on_one_gpu(tiny_flux, caplog):
    """A node that replaces a block (as PuLID-style nodes do) keeps its replacement under shard_weights; the helpers
    cannot run it, so those calls go to one GPU, with the same result as without the node."""
    import logging

    def scaled_img(args, extra):
        out = extra["original_block"](args)
        return dict(out, img=out["img"] * 1.5)

    patched = tiny_flux.clone()
    patched.set_model_patch_replace(scaled_img, "dit", "double_block", 1)
    expected = ksample(patched)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(enable_multigpu(patched, gpus=2, parallelism="ulysses", shard_weights=True))
    assert relative_error(got, expected) == 0.0
    assert relative_error(expected, ksample(tiny_flux)) > 1e-4, "the replacement changed nothing"
    assert any("patches_replace.dit" in r.getMessage() for r in caplog.records)
