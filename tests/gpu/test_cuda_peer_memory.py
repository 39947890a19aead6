"""Peer memory on CUDA (parallel/peer_memory.py): driver allocations shared as CUDA IPC handles, so that every member
reads and writes every other member's memory; and the 2-D copy (parallel/copy_engine.py) the copy-engine exchange
moves data with."""
import pytest
import torch

from rank_processes import join_group, needs_gpus, placements, run_ranks

WORDS = 4096   # int32 words per member: two halves of 2048


def _stamp(member, half):
    return torch.arange(WORDS // 2, dtype=torch.int32) + 100_000 * (member + 1) + 10_000 * half


def _map_write_read(rank, world_size, port, one_gpu):
    """Each member stamps the first half of its own memory and the second half of the next member's; then every
    member reads every member's memory."""
    import torch.distributed as dist
    from comfy_xdit_patch.parallel.peer_memory import PeerMemory, held_bytes, memory_in_use, settle
    device = join_group(rank, world_size, port, one_gpu)
    memory = PeerMemory(WORDS * 4, device, None, rank, world_size)
    held = held_bytes(device)
    counted = memory_in_use(device)[0] - torch.cuda.memory_allocated(device)
    half = WORDS // 2 * 4
    memory.tensor(rank, torch.int32, (WORDS // 2,)).copy_(_stamp(rank, 0).to(device))
    memory.tensor((rank + 1) % world_size, torch.int32, (WORDS // 2,), offset=half).copy_(_stamp(rank, 1).to(device))
    settle(device)
    seen = []
    for member in range(world_size):
        writer = (member - 1) % world_size
        own = memory.tensor(member, torch.int32, (WORDS // 2,)).cpu()
        written = memory.tensor(member, torch.int32, (WORDS // 2,), offset=half).cpu()
        seen.append(torch.equal(own, _stamp(member, 0)) and torch.equal(written, _stamp(writer, 1)))
    memory.close()
    result = {"seen": seen, "held": held, "counted": counted, "nbytes": memory.nbytes,
              "held_after": held_bytes(device)}
    dist.destroy_process_group()
    return result


@pytest.mark.parametrize("one_gpu", placements())
def test_every_member_reads_and_writes_the_others_memory_and_frees_it(one_gpu):
    for result in run_ranks(_map_write_read, 2, one_gpu):
        assert result["seen"] == [True, True], "a member's memory did not hold what was written into it"
        assert result["held"] == result["nbytes"] == WORDS * 4   # already a multiple of the 256-byte alignment
        assert result["counted"] == result["nbytes"], "memory reports must count peer memory"
        assert result["held_after"] == 0


@pytest.mark.parametrize("target", [0, pytest.param(-1, marks=needs_gpus(2))], ids=["same-gpu", "to-another-gpu"])
def test_the_2d_copy_moves_rows_between_pitches(target):
    """Rows of ``width`` bytes from one pitch to another, at byte offsets on both sides; nothing outside them
    changes. To another GPU, a copy engine moves them across the link."""
    from comfy_xdit_patch.parallel.copy_engine import copy_2d
    source_device = torch.device("cuda", 0)
    target_device = torch.device("cuda", torch.cuda.device_count() - 1 if target == -1 else 0)
    generator = torch.Generator().manual_seed(1)
    source = torch.randint(0, 256, (300, 1000), dtype=torch.uint8, generator=generator).to(source_device)
    destination = torch.zeros(260, 1536, dtype=torch.uint8, device=target_device)
    stream = torch.cuda.current_stream(source_device)
    copy_2d(source_device, destination.data_ptr() + 7, 1536, source.data_ptr() + 3, 1000, 900, 250, stream)
    stream.synchronize()
    got, expected = destination.cpu(), source.cpu()
    assert torch.equal(got[:250, 7:907], expected[:250, 3:903])
    untouched = torch.ones_like(got, dtype=torch.bool)
    untouched[:250, 7:907] = False
    assert got[untouched].eq(0).all()

