"""How fast a rank's device is, for the placement strategies that weigh groups and token shards by speed."""
import os
import time

import torch


def measure_speed(device, rank):
    """Matrix-multiply throughput of ``device`` in TFLOP/s (a fraction of a second). ``COMFY_XDIT_TEST_DEVICE_SPEEDS``
    ("1,1,0.5,0.5", one value per rank) replaces the measurement: tests inject GPUs of different speeds with it."""
    injected = os.environ.get("COMFY_XDIT_TEST_DEVICE_SPEEDS")
    if injected:
        return float(injected.split(",")[rank])
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
