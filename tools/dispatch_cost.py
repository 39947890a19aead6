"""Measuring tool (not product code): the host cost of rank 0's per-step dispatch to the helpers on CPU ranks.

    COMFYUI_PATH=/opt/ComfyUI python tools/dispatch_cost.py

Times, per model call of an 8-step KSampler run (tiny FLUX, 512 text tokens, 2 CPU ranks over gloo), the whole
``HelperGroup.dispatch_forward``, its control message (pickled call skeleton over the helpers' pipes) and its tensor
broadcast. The message is the part that is the same on GPUs; the tensor broadcast there is NCCL's.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    from comfy_xdit_patch.bench import TINY, conditioning, load_random_flux, run_sampler, setup_comfy
    setup_comfy(True)
    import torch
    from comfy_xdit_patch.multigpu import enable_multigpu
    from comfy_xdit_patch.runtime import group as helpers, transport

    times = {"dispatch_forward": [], "control message": [], "tensor broadcast": []}

    def timed(name, function):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[name].append(time.perf_counter() - start)
        return run

    helpers.HelperGroup.dispatch_forward = timed("dispatch_forward", helpers.HelperGroup.dispatch_forward)
    helpers.HelperGroup._broadcast_message = timed("control message", helpers.HelperGroup._broadcast_message)
    transport.send_tensors = timed("tensor broadcast", transport.send_tensors)
    torch.set_num_threads(1)
    model = load_random_flux(TINY, torch.float32, torch.device("cpu"))
    try:
        run_sampler(enable_multigpu(model, gpus=2), torch.zeros(1, 16, 16, 16), conditioning(512, 1),
                    conditioning(512, 2), 8, torch.device("cpu"))
    finally:
        helpers.shutdown_group()
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values[2:]) * 1e3:.3f} ms over {len(values) - 2} calls")


if __name__ == "__main__":
    main()
