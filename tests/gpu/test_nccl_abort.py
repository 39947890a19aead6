"""The NCCL abort that ends a failed group runs under a deadline (runtime/helper_group.abort_within): on a real NCCL
communicator it returns well within it, and ComfyUI's process keeps its NCCL watchdog from ending it."""
from datetime import timedelta

from rank_processes import run_ranks


def _abort_a_used_communicator(rank, world_size, port, deadline_s):
    import os
    import time
    import torch
    import torch.distributed as dist
    from comfy_xdit_patch.runtime import helper_group
    for name, value in helper_group._RANK0_NCCL_ENV.items():   # as rank 0 sets them before its group is made
        os.environ.setdefault(name, value)
    torch.cuda.set_device(rank)
    store = dist.TCPStore("127.0.0.1", port, world_size, rank == 0, timedelta(seconds=60))
    dist.init_process_group("nccl", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=60),
                            device_id=torch.device("cuda", rank))
    total = torch.ones(1 << 20, device="cuda")
    dist.all_reduce(total)
    torch.cuda.synchronize()
    start = time.perf_counter()
    returned = helper_group.abort_within(dist.distributed_c10d._abort_process_group, deadline_s)
    return {"returned": returned, "seconds": time.perf_counter() - start, "sum": total[0].item(),
            "set_aside": helper_group._unreleased_group}


def test_the_nccl_abort_returns_within_its_deadline():
    result = run_ranks(_abort_a_used_communicator, 1, 10.0, timeout=120)[0]
    assert result["sum"] == 1.0
    assert result["returned"] and result["seconds"] < 10.0, result
    assert result["set_aside"] is None
