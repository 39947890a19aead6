"""A helper rank: mirrors rank 0's diffusion model on one more device and runs its shard of every model call.

Started by ``helper_group.HelperGroup`` as ``python -m comfy_xdit_patch.runtime.helper_process``. It imports ComfyUI
from the same install as rank 0, with rank 0's command-line settings, and exits when rank 0 says so, closes the
channel or dies.
"""
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta

log = logging.getLogger("comfy_xdit_patch.helper")


def _watch_parent(parent_pid):
    """Exit when rank 0 is gone, even while blocked inside a collective."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(0.5)


def _setup_comfy(prepare):
    """ComfyUI imported with rank 0's command-line settings, on the device rank 0 gave this helper (its GPU is
    current before ComfyUI first touches CUDA, so no context lands on another GPU)."""
    import torch
    index = prepare.device_index or 0
    if prepare.device_type == "cuda":
        torch.cuda.set_device(index)
    import comfy.cli_args
    comfy.cli_args.args.__dict__.update(prepare.comfy_args)
    import comfy.model_management  # noqa: F401  (reads the args above: device, attention backend, vram mode)
    import comfy.ldm.modules.attention  # noqa: F401
    return torch.device("cpu") if prepare.device_type == "cpu" else torch.device("cuda", index)


def _next(link, expected):
    """The next message from rank 0, of type ``expected``; an Exit before the helper joined ends it quietly."""
    from comfy_xdit_patch.runtime import messages
    message = link.recv()
    if isinstance(message, messages.Exit):
        os._exit(0)
    if not isinstance(message, expected):
        raise RuntimeError(f"expected {expected.__name__} from rank 0, got {type(message).__name__}")
    return message


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="A helper rank of Enable Multi-GPU (started by rank 0).")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--control", required=True, help="rank 0's control port, host:port")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds rank 0 may take to answer")
    args = parser.parse_args(argv)
    rank = args.rank
    logging.basicConfig(level=logging.INFO, format=f"[xdit rank {rank}] %(levelname)s %(message)s")
    # A helper stuck inside a collective can be asked where it is: kill -USR1 <pid> prints every thread's stack.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    from comfy_xdit_patch.runtime import channel as control
    host, port = args.control.rsplit(":", 1)
    # Rank 0 answers once it has started every helper (with Ray, one actor after another): wait as long as it may.
    link = control.connect((host, int(port)), bytes.fromhex(os.environ.pop(control.SECRET_VARIABLE)), args.timeout)
    from comfy_xdit_patch.runtime import messages
    from comfy_xdit_patch.runtime.versions import local_versions
    link.send(messages.Joined(rank, local_versions()))
    try:
        device = _setup_comfy(_next(link, messages.Prepare))
        link.send(messages.Reply("imported"))
        # Then the plan, at once or when a prompt needs it (helpers started with ComfyUI wait here).
        setup = _next(link, messages.Setup)
        plan = setup.plan

        import torch
        import torch.distributed as dist
        from comfy_xdit_patch.parallel.mesh import SequenceParallelMesh
        store = dist.TCPStore(setup.store_host, setup.store_port, plan.world_size, False,
                              timedelta(seconds=args.timeout))
        timeout = timedelta(seconds=setup.collective_timeout_s)
        dist.init_process_group(plan.backend, store=store, rank=rank, world_size=plan.world_size, timeout=timeout)
        mesh = SequenceParallelMesh.build(plan.ulysses_degree, plan.ring_degree, timeout, plan.ulysses_exchange, device,
                                          plan.exchange_parts)
        from comfy_xdit_patch.parallel.placement import measure_speed
        link.send(messages.Reply("ready", measure_speed(device, rank)))
        with torch.inference_mode():
            serve(link, mesh, device, plan.shard_weights, plan.shard_gathers)
    except control.ChannelClosed:
        pass
    except BaseException:
        log.error("helper failed:\n%s", traceback.format_exc())
        try:
            link.send(traceback.format_exc(limit=3))
        except OSError:
            pass
        sys.stdout.flush()
        os._exit(1)
    os._exit(0)


def serve(link, mesh, device, shard_weights=False, shard_gathers="pull"):
    import collections
    import torch
    from comfy_xdit_patch.parallel.call import SequenceParallelCall
    from comfy_xdit_patch.patches import adapter_named
    from comfy_xdit_patch.runtime import gguf_weights, messages, transport, vae_decode, weights
    from comfy_xdit_patch.runtime.step import ParallelStep
    from comfy_xdit_patch.parallel.weight_shards import ShardedBlocks
    from comfy_xdit_patch.runtime.step_graphs import StepGraphs
    from comfy_xdit_patch.profiling import HelperProfile

    diffusion_model = loaded_spec = shards = replacements = adapter = vae = None
    compiled = None     # (settings, torch.compile of diffusion_model) while rank 0 runs TorchCompileModel
    slot, held = None, None   # rank 0's name for the current model; the other model kept (Load.keep_held)
    last_compile = None  # the settings the last call ran with (None: eager), for the stats
    graphs = StepGraphs()
    forwards = 0
    step_ms = collections.deque(maxlen=200)
    group_ms = collections.deque(maxlen=200)   # this rank's group, its own rows only (placement strategies)
    from comfy_xdit_patch import envs
    profiled = HelperProfile(envs.COMFY_XDIT_PROFILE_HELPER, log)
    step = ParallelStep(mesh, device, graphs, group_ms)
    while True:
        message = link.recv()
        if isinstance(message, messages.Exit):
            return
        if isinstance(message, messages.Select):
            if held is None or held[0] != message.slot:
                raise RuntimeError(f"rank 0 selected model {message.slot}, which this helper does not hold")
            graphs.clear()          # graphs point at the other model's weights
            current = (slot, diffusion_model, loaded_spec, adapter, replacements, compiled)
            slot, diffusion_model, loaded_spec, adapter, replacements, compiled = held
            held = current
            link.send(messages.Reply("selected"))
        elif isinstance(message, messages.Load):
            spec, keys, patches, patch_layout = message.spec, message.keys, message.patches, message.patch_layout
            graphs.clear()          # graphs point at the old weights
            dropped = held is not None
            held = None
            if message.keep_held and diffusion_model is not None:
                held = (slot, diffusion_model, loaded_spec, adapter, replacements, compiled)
                diffusion_model = loaded_spec = compiled = None   # the new model gets memory of its own
            slot = message.slot
            if shards is not None:  # rank 0 closes its pieces at the same point
                shards.close()
                shards = None
            rebuild = spec != loaded_spec
            if rebuild:
                diffusion_model = compiled = None  # free the previous model's memory before building the next one
            if rebuild or dropped:
                # Our hooks on a model's modules hold its bound methods: only the collector frees such cycles.
                gc.collect()
            if rebuild:
                diffusion_model = weights.build_diffusion_model(spec, device)
                adapter = adapter_named(spec["adapter"])
                adapter.install_on_model(diffusion_model)
                replacements = adapter.block_replacements(diffusion_model, shard_weights)
                loaded_spec = spec
                compiled = None
            # Same model class and config (e.g. only a LoRA strength changed): weights land in the same memory.
            digest = weights.WeightDigest()
            weights.receive_weights(diffusion_model, keys, device, spec,
                                    sharded=adapter.is_block_weight if shard_weights else None, digest=digest)
            patch_tensors = transport.receive_tensors(patch_layout, device)
            if spec.get("gguf"):
                gguf_weights.attach_patches(diffusion_model, patches, patch_tensors)
            if shard_weights:   # the blocks' parameters stay meta placeholders; only this rank's pieces are held
                shards = ShardedBlocks(adapter.blocks(diffusion_model), mesh.world_size, device,
                                       dtype=spec["block_dtype"], rank=mesh.rank, pull=shard_gathers == "pull")
                weights.receive_block_shards(shards)
            link.send(messages.Reply("loaded", digest.value))
        elif isinstance(message, messages.Forward):
            compile_kwargs = last_compile = message.compile_kwargs
            if compile_kwargs is None:
                model = diffusion_model
            else:
                if compiled is None or compiled[0] != compile_kwargs:
                    compiled = (compile_kwargs, torch.compile(diffusion_model, **compile_kwargs))
                    log.info("compiling the diffusion model like rank 0 (%s)", compile_kwargs)
                model = compiled[1]
            forwards += 1
            tensors = transport.receive_tensors(message.tensor_layout, device)
            graphs.reset(message.generation)

            def run_shard(call_args, token_weights, model=model):
                call_args = dict(call_args)
                call = SequenceParallelCall(mesh, token_weights, weight_shards=shards)
                options = adapter.hooked_transformer_options(call_args.pop("transformer_options"), call, replacements)
                return model(**call_args, transformer_options=options)

            profiled.before(forwards, device, log)
            started = time.perf_counter()
            step.run(message, tensors, run_shard)
            if device.type == "cuda":
                torch.cuda.synchronize(device)   # nothing else to do until the next call: time the step truly
            step_ms.append((time.perf_counter() - started) * 1e3)
            profiled.after(forwards, mesh.rank, log)
        elif isinstance(message, messages.LoadVAE):
            vae = None
            gc.collect()
            state = dict(zip(message.keys, transport.receive_tensors(message.tensor_layout, device)))
            try:
                vae = vae_decode.build_vae(state, message.dtype, device)
                problem = vae_decode.rebuilt_differently(vae, message.model_class, message.keys,
                                                         message.tensor_layout)
            except Exception as e:   # a VAE ComfyUI cannot rebuild from its weights alone: rank 0 decodes it
                problem = f"{type(e).__name__}: {e}"
            if problem:
                vae = None
            del state
            link.send(messages.Reply("vae loaded", problem))
        elif isinstance(message, messages.DecodeTiles):
            tiles = transport.receive_tensors(message.tensor_layout, device)
            mine = [vae_decode.decode_tile(vae.first_stage_model, message.method, tiles[i], device)
                    for i in range(mesh.rank, len(tiles), mesh.world_size)]
            link.send(messages.Reply("decoded", [(tuple(t.shape), t.dtype) for t in mine]))
            for tile in mine:
                torch.distributed.send(tile.contiguous(), dst=0)
            del tiles, mine
            if device.type == "cuda":
                torch.cuda.empty_cache()   # the decode's activations: the diffusion model needs the memory back
        elif isinstance(message, messages.Stats):
            link.send(dict(_device_stats(device), step_ms=list(step_ms), group_ms=list(group_ms),
                           weight_bytes=_weight_bytes(diffusion_model, shards),
                           compiled=last_compile))
            step_ms.clear()
            group_ms.clear()
        else:
            raise RuntimeError(f"unknown message {type(message).__name__}")


def _weight_bytes(diffusion_model, shards):
    """Bytes of weights this helper holds: its model's real (non-placeholder) tensors and its block shards."""
    if diffusion_model is None:
        return 0
    held = [t for t in list(diffusion_model.parameters()) + list(diffusion_model.buffers()) if not t.is_meta]
    return sum(t.numel() * t.element_size() for t in held) + (shards.shard_bytes() if shards else 0)


def _device_stats(device):
    import torch
    from comfy_xdit_patch.parallel.peer_memory import memory_in_use
    stats = {"pid": os.getpid(), "device": str(device)}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        stats["allocated"], stats["peak_allocated"] = memory_in_use(device)
        torch.cuda.reset_peak_memory_stats(device)
    return stats


if __name__ == "__main__":
    main()
