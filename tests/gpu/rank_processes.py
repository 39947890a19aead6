"""Runs a check as several fresh processes, one per rank, the way the plugin's helpers run: each with its own CUDA
context, joined in a torch.distributed group on this machine.

Plain subprocesses rather than multiprocessing: a rank that hangs is killed at the deadline and its output shown, and
no resource tracker outlives the test.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import pytest

# Settings every GPU run of the plugin uses (tools/gpu_env.sh, runtime/helper_group.py): NVLink multicast off, and no NCCL
# registration of buffers captured in a CUDA graph (replays stalled with it).
RANK_ENVIRONMENT = {"NCCL_GRAPH_REGISTER": "0", "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(function, world_size, *args, timeout=180, killed=()):
    """``function(rank, world_size, port, *args)`` in ``world_size`` processes; returns each rank's return value
    (anything JSON can carry). ``killed``: ranks the check itself kills, which leave no value. A rank that fails, or
    that is still running after ``timeout`` seconds, fails the test with its output."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
    for name, value in RANK_ENVIRONMENT.items():
        env.setdefault(name, value)
    code = ("import json, os, sys\n"
            f"from {function.__module__} import {function.__name__} as check\n"
            "out = check(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *json.loads(sys.argv[4]))\n"
            "with open(sys.argv[5], 'w') as f:\n"
            "    json.dump(out, f)\n"
            "sys.stdout.flush(); sys.stderr.flush()\n"
            "os._exit(0)\n")   # the value is written: no teardown of a failed communicator may hang the exit
    with tempfile.TemporaryDirectory(prefix="xdit-gpu-check-") as folder:
        processes, logs = [], []
        for rank in range(world_size):
            log = open(os.path.join(folder, f"rank{rank}.log"), "w+")
            logs.append(log)
            processes.append(subprocess.Popen(
                [sys.executable, "-c", code, str(rank), str(world_size), str(port), json.dumps(args),
                 os.path.join(folder, f"rank{rank}.json")], env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
                time.sleep(0.1)
            late = [rank for rank, p in enumerate(processes) if p.poll() is None]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()

        def output(rank):
            logs[rank].seek(0)
            return logs[rank].read()[-6000:]

        if late:
            pytest.fail(f"rank(s) {late} still running after {timeout} s; rank {late[0]}'s output:\n{output(late[0])}")
        results = []
        for rank, process in enumerate(processes):
            if rank in killed:
                results.append(None)
                continue
            if process.returncode != 0:
                pytest.fail(f"rank {rank} exited with {process.returncode}:\n{output(rank)}")
            with open(os.path.join(folder, f"rank{rank}.json")) as f:
                results.append(json.load(f))
        for log in logs:
            log.close()
        return results


def join_group(rank, world_size, port, one_gpu):
    """Inside a rank: joins the group and returns this rank's device. ``one_gpu``: every rank on GPU 0 over gloo (a
    one-GPU machine; NCCL takes one rank per GPU), else rank r on GPU r over NCCL."""
    import torch
    import torch.distributed as dist
    device = torch.device("cuda", 0 if one_gpu else rank)
    torch.cuda.set_device(device)
    options = {} if one_gpu else {"device_id": device}
    dist.init_process_group("gloo" if one_gpu else "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=60), **options)
    return device


def placements():
    """The placements a two-process check runs in: both ranks on one GPU, and (with two GPUs that reach each other's
    memory) one rank per GPU."""
    return [pytest.param(True, id="one-gpu"), pytest.param(False, id="two-gpus", marks=needs_gpus(2, peer_access=True))]


def needs_gpus(count, peer_access=False):
    """A skip mark, with the reason shown, for fewer than ``count`` visible CUDA devices (or, with ``peer_access``,
    GPUs 0 and 1 without access to each other's memory)."""
    import torch
    if not torch.cuda.is_available():   # conftest.py skips every test here, naming that
        return pytest.mark.skipif(False, reason="")
    visible = torch.cuda.device_count()
    if visible < count:
        return pytest.mark.skip(reason=f"needs {count} CUDA devices: {visible} visible")
    if peer_access and not torch.cuda.can_device_access_peer(0, 1):
        return pytest.mark.skip(reason="needs GPUs 0 and 1 with peer access: they have none")
    return pytest.mark.skipif(False, reason="")
