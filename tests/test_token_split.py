"""Token splits: exact coverage at any length, and the prefix clipping used for ControlNet residuals."""
import torch

from comfy_xdit_patch.parallel.token_split import clip_to_shard, split_sizes, take_shard


def test_split_sizes_cover_every_token_once():
    for length in (1, 2, 3, 77, 126, 4608, 4609):
        for parts in (1, 2, 3, 4, 8):
            sizes = split_sizes(length, parts)
            assert sum(sizes) == length and max(sizes) - min(sizes) <= 1


def test_shards_concatenate_to_the_sequence():
    x = torch.arange(2 * 63 * 3).view(2, 63, 3)
    sizes = split_sizes(63, 4)
    assert torch.equal(torch.cat([take_shard(x, sizes, r) for r in range(4)], dim=1), x)


def test_clip_to_shard_handles_prefix_tensors():
    sizes = split_sizes(10, 2)                  # image tokens [0, 5) and [5, 10)
    control = torch.arange(7).view(1, 7, 1)     # covers only the first 7 tokens (e.g. Kontext refs follow)
    assert clip_to_shard(control, sizes, 0).flatten().tolist() == [0, 1, 2, 3, 4]
    assert clip_to_shard(control, sizes, 1).flatten().tolist() == [5, 6]
    assert clip_to_shard(torch.zeros(1, 4, 1), sizes, 1) is None


def test_a_tensor_repeated_in_a_call_travels_once():
    from comfy_xdit_patch.runtime.transport import extract_tensors, insert_tensors
    residual, other = torch.ones(2), torch.zeros(3)
    call = {"control": {"input": [residual, residual, None, residual], "output": [other]}, "x": other}
    tensors = []
    skeleton = extract_tensors(call, tensors)
    assert len(tensors) == 2
    rebuilt = insert_tensors(skeleton, tensors)
    assert rebuilt["control"]["input"][3] is residual and rebuilt["x"] is other and rebuilt["control"]["input"][2] is None


def test_image_shards_lead_with_generated_tokens_then_references():
    from types import SimpleNamespace
    from comfy_xdit_patch.parallel.call import SequenceParallelCall
    call = SequenceParallelCall(SimpleNamespace(sp_degree=2))
    call.plan_tokens(txt_len=5, img_len=10 + 6, ref_len=6)      # 10 generated-image tokens, 6 reference tokens
    assert call.image_slices(0) == ((0, 5), (10, 3)) and call.image_slices(1) == ((5, 5), (13, 3))
    assert call.seq_lens == [3 + 8, 2 + 8]
    # Flux.2's zero-timestep range over the references, in each shard's coordinates (after its 5 image tokens).
    assert call.local_ranges([[10, 16]], 0) == [[5, 8]] and call.local_ranges([[10, 16]], 1) == [[5, 8]]
    assert call.local_ranges([[3, 12]], 1) == [[0, 5]] and call.local_ranges([[3, 12]], 0) == [[3, 5], [5, 7]]
