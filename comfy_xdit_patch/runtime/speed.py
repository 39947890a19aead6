"""How fast a rank's device is, for the placement strategies that weigh groups and token shards by speed."""
import time

import torch


def measure_speed(device, rank):
    """Matrix-multiply throughput of ``device`` in TFLOP/s (a fraction of a second)."""
    size, repeats = (4096, 20) if device.type == "cuda" else (256, 5)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12
