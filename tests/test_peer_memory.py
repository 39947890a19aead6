"""Peer memory (parallel/peer_memory.py) between real processes on CPU: /dev/shm files mapped by every member, the
way CUDA IPC handles map GPU memory. Two gloo ranks each time; a failed mapping must fail on every member, free
what was mapped and leave no file behind."""
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta

import torch


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _member(rank, port, results, fail_rank, failure="open"):
    import torch.distributed as dist
    from comfy_xdit_patch.parallel import peer_memory
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    outcome = {}
    try:
        if rank == fail_rank and failure == "open":   # as a GPU pair without peer access would
            peer_memory.PeerMemory._open_peers = lambda self, handles: "no peer access (test)"
        if rank == fail_rank and failure == "allocate":   # as a GPU out of memory would
            def out_of_memory(*args, **kwargs):
                raise RuntimeError("out of memory (test)")
            torch.UntypedStorage.from_file = out_of_memory
        memory = peer_memory.PeerMemory(1000, torch.device("cpu"), None, rank, 2)
        memory.tensor(rank, torch.int32, (250,)).fill_(10 + rank)
        dist.barrier()
        outcome["seen"] = memory.tensor(1 - rank, torch.int32, (250,)).unique().tolist()
        outcome["aligned"] = memory.nbytes
        memory.close()
    except RuntimeError as error:
        outcome["error"] = str(error)
    outcome["held"] = peer_memory.held_bytes("cpu")
    with open(os.path.join(results, f"{rank}.json"), "w") as f:
        json.dump(outcome, f)
    dist.destroy_process_group()


def _run_pair(tmp_path, fail_rank=-1, failure="open"):
    """Two member processes (plain subprocesses: multiprocessing's spawn would leave its resource tracker running,
    a child of this process that later tests count)."""
    before = {f for f in os.listdir("/dev/shm") if f.startswith("comfy-xdit-")}
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    members = [subprocess.Popen([sys.executable, "-c", f"import test_peer_memory as t; "
                                 f"t._member({rank}, {port}, {str(tmp_path)!r}, {fail_rank}, {failure!r})"], env=env)
               for rank in range(2)]
    try:
        codes = [member.wait(timeout=120) for member in members]
    finally:
        for member in members:
            if member.poll() is None:
                member.kill()
    assert codes == [0, 0]
    results = [json.load(open(tmp_path / f"{rank}.json")) for rank in range(2)]
    left = {f for f in os.listdir("/dev/shm") if f.startswith("comfy-xdit-")} - before
    return results, left


def test_every_member_reads_what_the_other_wrote_and_frees_it(tmp_path):
    results, left = _run_pair(tmp_path)
    assert results[0]["seen"] == [11] and results[1]["seen"] == [10]
    assert results[0]["aligned"] == 1024   # regions start on 256 bytes
    assert all(r["held"] == 0 for r in results)
    assert not left, f"files left in /dev/shm: {left}"


def test_a_member_that_cannot_map_fails_every_member_without_a_hang_or_a_leak(tmp_path):
    results, left = _run_pair(tmp_path, fail_rank=1)
    for result in results:
        assert "could not map the other GPUs' memory (rank 1: no peer access (test))" in result["error"]
        assert result["held"] == 0
    assert not left, f"files left in /dev/shm: {left}"


def test_a_member_that_cannot_allocate_fails_every_member_without_a_hang_or_a_leak(tmp_path):
    results, left = _run_pair(tmp_path, fail_rank=1, failure="allocate")
    for result in results:
        assert "rank 1: could not allocate 1024 bytes: RuntimeError: out of memory (test)" in result["error"]
        assert result["held"] == 0
    assert not left, f"files left in /dev/shm: {left}"
