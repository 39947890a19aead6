"""A helper rank with faults injected, for the fault tests: run as the helper's command in place of
``python -m comfy_xdit_patch.runtime.helper_process`` (see ``use_hooked_helpers``). Each COMFY_XDIT_TEST_* variable turns on one
fault; the product itself has no test hooks.

- COMFY_XDIT_TEST_STALL_AT_FORWARD=N: sleep inside the Nth model call, before its tensors arrive (a stuck peer).
- COMFY_XDIT_TEST_VERSIONS=name=value;...: report these versions when joining (a helper from another install).
- COMFY_XDIT_TEST_CORRUPT_WEIGHTS=1: flip one byte of the received weights (a corrupted transfer).
- COMFY_XDIT_TEST_EXIT_AT=init|sync|decode: exit inside the process group's initialisation, midway through the weight
  sync, or when asked to decode VAE tiles.
- COMFY_XDIT_TEST_SPEEDS=a,b,...: the matrix-multiply speed each rank reports (GPUs of different speeds).
- COMFY_XDIT_TEST_VAE_REBUILT_DIFFERENTLY=1: report every VAE rebuilt from its weights as another model.
- COMFY_XDIT_TEST_TINY_MINIMAX_VAE=1: build MiniMax H3 VAEs at the tests' tiny size (comfy_env.tiny_minimax_vae),
  which ComfyUI's loader, building its fixed real size, cannot rebuild from their weights.
"""
import os
import sys
import time

HERE = os.path.abspath(__file__)


def use_hooked_helpers(monkeypatch, **faults):
    """Test side: helpers start through this file, with ``faults`` (e.g. STALL_AT_FORWARD="2") in their env."""
    from comfy_xdit_patch.runtime import launchers
    monkeypatch.setattr(launchers, "HELPER", [sys.executable, HERE])
    for name, value in faults.items():
        monkeypatch.setenv("COMFY_XDIT_TEST_" + name, str(value))


def _install():
    from comfy_xdit_patch.runtime import transport, versions, weights
    stall_at = int(os.environ.get("COMFY_XDIT_TEST_STALL_AT_FORWARD", "0"))
    if stall_at:
        original_receive = transport.receive_tensors
        calls = [0]

        def receive_tensors(layout, device):
            if layout:
                calls[0] += 1
                if calls[0] == stall_at:
                    time.sleep(3600)
            return original_receive(layout, device)
        transport.receive_tensors = receive_tensors

    changed = os.environ.get("COMFY_XDIT_TEST_VERSIONS")
    if changed:
        original_versions = versions.local_versions
        overrides = dict(item.split("=", 1) for item in changed.split(";"))
        versions.local_versions = lambda: dict(original_versions(), **overrides)

    if os.environ.get("COMFY_XDIT_TEST_CORRUPT_WEIGHTS"):
        import torch
        import torch.distributed as dist
        original_broadcast, flipped = dist.broadcast, []

        def broadcast(tensor, *args, **kwargs):   # one bit of the first weight's bytes flips in transit
            work = original_broadcast(tensor, *args, **kwargs)
            if not flipped and tensor.dtype == torch.uint8 and tensor.numel() >= 64:
                tensor[7] ^= 1
                flipped.append(True)
            return work
        dist.broadcast = broadcast

    exit_at = os.environ.get("COMFY_XDIT_TEST_EXIT_AT")
    if exit_at == "init":
        import torch.distributed as dist
        dist.init_process_group = lambda *args, **kwargs: os._exit(7)
    elif exit_at == "sync":
        import torch.distributed as dist
        original_broadcast = dist.broadcast
        seen = [0]

        def broadcast(tensor, *args, **kwargs):
            seen[0] += 1
            if seen[0] == 3:
                os._exit(7)
            return original_broadcast(tensor, *args, **kwargs)
        weights.dist.broadcast = broadcast

    if os.environ.get("COMFY_XDIT_TEST_TINY_MINIMAX_VAE"):
        from comfy_xdit_patch.runtime import vae_decode
        original_build = vae_decode.build_vae

        def build_vae(*args, **kwargs):
            from comfy_env import tiny_minimax_vae_classes
            with tiny_minimax_vae_classes():
                return original_build(*args, **kwargs)
        vae_decode.build_vae = build_vae


    if os.environ.get("COMFY_XDIT_TEST_VAE_REBUILT_DIFFERENTLY"):
        from comfy_xdit_patch.runtime import vae_decode
        vae_decode.rebuilt_differently = lambda *args: "the weights were rebuilt as another model"

    if exit_at == "decode":
        from comfy_xdit_patch.runtime import vae_decode
        vae_decode.decode_tile = lambda *args, **kwargs: os._exit(7)

    speeds = os.environ.get("COMFY_XDIT_TEST_SPEEDS")
    if speeds:
        from comfy_xdit_patch.parallel import placement
        placement.measure_speed = lambda device, rank: float(speeds.split(",")[rank])


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    _install()
    from comfy_xdit_patch.runtime import helper_process
    helper_process.main()
