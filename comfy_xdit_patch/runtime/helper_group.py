"""Rank 0's side of the helper processes: start them, keep them warm, feed them, end them.

Rank 0 is ComfyUI's own process. Helpers are ``python -m comfy_xdit_patch.runtime.helper_process`` processes, one
per extra device, started on first use (or with ComfyUI: COMFY_XDIT_PRESTART_GPUS) and reused while the plan
(devices and degrees) stays the same. Tensors travel over ``torch.distributed`` (NCCL on CUDA, gloo on the CPU);
everything else over one control channel per helper.
"""
import atexit
import collections
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import threading
import time
import weakref
from datetime import timedelta

import psutil
import torch
import torch.distributed as dist

from ..parallel.mesh import SequenceParallelMesh
from ..parallel.placement import Scheduler, measure_speed
from ..parallel.weight_shards import ShardedBlocks
from .. import patches
from .. import envs
from .launchers import make_launcher
from . import channel as control
from . import gguf_weights, messages, transport, versions, weights
from .step import ParallelStep
from ..parallel.call import SequenceParallelCall
from .pacing import LaunchPacer
from .step_graphs import EAGER, REPLAY, StepGraphs

log = logging.getLogger(__name__)



# Rendezvous and bootstrap stay on loopback unless the user chose an interface.
_LOOPBACK_ENV = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}


class HelperFailure(RuntimeError):
    """The helper group can no longer be used: a helper died, hung or reported an error."""


def _plugin_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _comfy_root():
    import comfy.model_management  # ``comfy`` itself is a namespace package without __file__
    return os.path.dirname(os.path.dirname(os.path.abspath(comfy.model_management.__file__)))


class HelperGroup:
    def __init__(self, plan):
        self.plan = plan
        self.device = torch.device("cpu") if plan.device_type == "cpu" else torch.device("cuda", plan.device_indices[0])
        self.processes = {}
        self.channels = {}
        self.mesh = None
        self.model_fingerprint = None
        self.diffusion_model = None   # rank 0's diffusion model the helpers currently mirror
        self.slot = 0                 # the helpers' name for it (messages.Load)
        self.held = None              # (fingerprint, slot) of the other model the helpers keep
        self.block_shards = None      # rank 0's share of the blocks' weights, with plan.shard_weights
        self.started_s = None
        self.start_phases = {}        # seconds per start-up phase, in order (first-prompt cost, status route, bench)
        self.weight_syncs = 0
        self.vae = None               # (a weak reference to rank 0's VAE model, its dtype) the helpers hold
        self.graphs = StepGraphs()
        self.graph_keys = {}
        self.generation = 0
        self._graph_weights_state = None
        self.failure = None           # set by the health monitor when a helper dies
        self.exit_codes = {}          # rank -> None while alive, else its exit code (kept by the health monitor)
        self._blocked_phase = None    # a collective phase given up on while it still runs (see _watched)
        self.cancelled = False        # helpers started with ComfyUI, given up on while still launching
        self.versions = versions.local_versions()
        self.scheduler = None         # places batch rows on groups (parallel/placement.py), made at start
        self.launcher = None
        self.step_ms = collections.deque(maxlen=200)   # rank 0's parallel steps, completed (monitoring)
        self.helper_report = {}       # the helpers' own figures, collected after each sampling run
        self._stopping = threading.Event()
        self._abort_lock = threading.Lock()
        self._aborted = False
        self._collectives_aborted = False   # NCCL's abort returned: no collective kernel is left on the device
        cuda = self.device.type == "cuda"
        self.pacer = LaunchPacer(lambda: self.failure, envs.COMFY_XDIT_COLLECTIVE_TIMEOUT, _recorded_event if cuda else None,
                                 torch.cuda.is_current_stream_capturing if cuda else lambda: False)

    # ----- lifecycle -------------------------------------------------------------------------------------------
    def start(self):
        """Starts the helpers and joins them into the plan's process group."""
        self.launch()
        self.join()

    def launch(self):
        """The slow half of a start, which needs no model: spawn the helpers, authenticate them, check their
        versions and have them import ComfyUI on their devices. ``join`` makes the process group for the plan."""
        t0 = time.perf_counter()
        if _unreleased_group is not None:
            raise HelperFailure(f"the process group of a failed run could not be freed ({_unreleased_group}); "
                                "prompts run on one GPU until ComfyUI is restarted.")
        if _abandoned_phase is not None and _abandoned_phase.is_alive():
            raise HelperFailure("the previous helper group is still being given up (a collective of its failed "
                                "start-up or weight sync waits for its timeout, COMFY_XDIT_COLLECTIVE_TIMEOUT); this "
                                "prompt runs on one GPU")
        secret = control.new_secret()
        host = envs.COMFY_XDIT_HOST
        listener = control.listen(host)
        if host == "127.0.0.1":
            for name, value in _LOOPBACK_ENV.items():
                os.environ.setdefault(name, value)
        # ComfyUI's process must never be ended by NCCL's watchdog: on a timeout it only aborts the communicators
        # (2: clean up only) and its heartbeat monitor, which ends a process whose watchdog hangs, is off. The
        # helpers keep torch's defaults (tear down): a helper that times out ends, and rank 0 falls back.
        for name, value in _RANK0_NCCL_ENV.items():
            if os.environ.get(name, value) != value:
                log.warning("Enable Multi-GPU: %s=%s in ComfyUI's process is replaced by %s: NCCL's watchdog must "
                            "never end ComfyUI", name, os.environ[name], value)
            os.environ[name] = value
        # Replays of a captured step stalled on 2×H200 (NCCL 2.28.9) while NCCL registered the captured collectives'
        # buffers, and completed without it (docs/benchmarks.md). Helpers inherit it with the other NCCL_* settings.
        os.environ.setdefault("NCCL_GRAPH_REGISTER", "0")
        acceptor, joined = None, []
        try:
            phase = _PhaseClock(self.start_phases)
            self._spawn(listener.getsockname(), secret)
            phase("spawn")
            # Health from the first moment: a helper that dies while rank 0 waits inside a collective of the
            # start-up or the weight sync is noticed there too (see _watched).
            threading.Thread(target=self._monitor, name="comfy-xdit-health", daemon=True).start()
            deadline = time.monotonic() + envs.COMFY_XDIT_START_TIMEOUT
            acceptor = control.Acceptor(listener, secret)
            # Every helper in first (their handshakes answered side by side), then what each says of itself.
            joined = [self._accept(acceptor, deadline) for _ in range(1, self.plan.world_size)]
            phase("connect")
            for channel in joined:
                hello = self._receive(channel, deadline, "its versions")
                rank = hello.rank if isinstance(hello, messages.Joined) else None
                if type(rank) is not int or rank not in self.processes or rank in self.channels:
                    channel.close()
                    raise HelperFailure(f"a helper announced rank {rank!r}, which is not one this group started")
                self.channels[rank] = channel
                problem = versions.mismatch(self.versions, hello.versions)
                if problem:
                    raise HelperFailure(f"helper rank {rank}: {problem}")
            phase("versions")
            import comfy.cli_args
            for rank, channel in self.channels.items():
                channel.send(messages.Prepare(vars(comfy.cli_args.args), self.plan.device_type,
                                              0 if self.plan.launcher == "ray" else self.plan.device_indices[rank]))
            self._expect_all("imported", deadline)
            phase("import ComfyUI")
        except BaseException:
            for channel in joined:
                channel.close()
            self.shutdown(graceful=False)
            raise
        finally:
            listener.close()
            if acceptor is not None:
                acceptor.close()
        self.started_s = time.perf_counter() - t0

    def join(self):
        """Joins the launched helpers into the plan's process group and sequence-parallel mesh."""
        t0 = time.perf_counter()
        if dist.is_initialized() and _owned_default_group:
            _release_default_group()          # left over from a group that failed to tear down (e.g. after abort)
        if not dist.is_initialized():
            # Group names (store prefixes) count from torch's group counter: a failed join leaves it advanced, while
            # fresh helpers count from 0. destroy_process_group resets it the same way.
            dist.distributed_c10d._world.group_count = 0
        if dist.is_initialized():
            self.shutdown()
            raise HelperFailure("torch.distributed is already initialised in ComfyUI's process (by another custom "
                                "node?); Enable Multi-GPU needs to create its own process group.")
        host = envs.COMFY_XDIT_HOST
        # TCPStore binds every interface unless it is handed a listening socket: give it one on the chosen host.
        store_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        store_socket.bind((host, 0))
        store_socket.listen()
        store_port = store_socket.getsockname()[1]
        store = dist.TCPStore(host, store_port, self.plan.world_size, True,
                              timedelta(seconds=envs.COMFY_XDIT_START_TIMEOUT), wait_for_workers=False,
                              master_listen_fd=store_socket.detach(), use_libuv=True)
        try:
            phase = _PhaseClock(self.start_phases)
            deadline = time.monotonic() + envs.COMFY_XDIT_START_TIMEOUT
            self._broadcast_message(messages.Setup(self.plan, host, store_port, envs.COMFY_XDIT_COLLECTIVE_TIMEOUT))
            # On NCCL, rank 0's pacer gives up on a stalled collective first; the process group's own watchdog
            # would end ComfyUI's whole process when its timeout passes.
            collective = envs.COMFY_XDIT_COLLECTIVE_TIMEOUT
            timeout = timedelta(seconds=collective if self.plan.backend == "gloo" else 2 * collective + 30)

            def join():
                global _owned_default_group
                dist.init_process_group(self.plan.backend, store=store, rank=0, world_size=self.plan.world_size,
                                        timeout=timeout)
                _owned_default_group = True
                return SequenceParallelMesh.build(self.plan.ulysses_degree, self.plan.ring_degree, timeout,
                                                  self.plan.ulysses_exchange, self.device, self.plan.exchange_parts)
            self.mesh = self._watched(join, deadline, "joining the process group")
            phase("process group")
            rank_speeds = [measure_speed(self.device, 0)] + self._expect_all("ready", deadline)
            phase("device speed")
            self.scheduler = Scheduler(self.plan, rank_speeds)
        except BaseException:
            self.shutdown(graceful=False)
            raise
        self.started_s = (self.started_s or 0.0) + time.perf_counter() - t0
        log.info("Enable Multi-GPU: started %d helper process(es) for %s in %.1f s (%s)",
                 self.plan.world_size - 1, self.plan.describe(), self.started_s,
                 ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.start_phases.items()))

    def _spawn(self, address, secret):
        """A helper's command line says its rank and where rank 0 is; its environment holds the session secret
        (never on a command line, which other users can read), the same ComfyUI and plugin, and this process's
        COMFY_XDIT_*, NCCL_*, GLOO_* and TORCH_* settings. Everything else comes in the setup message."""
        env = {k: v for k, v in os.environ.items() if k.startswith(("COMFY_XDIT_", "NCCL_", "GLOO_", "TORCH_"))}
        env["PYTHONPATH"] = os.pathsep.join([_plugin_root(), _comfy_root()] +
                                            [p for p in [os.environ.get("PYTHONPATH")] if p])
        env[control.SECRET_VARIABLE] = secret.hex()
        env.update(_HELPER_NCCL_ENV)
        if self.plan.device_type == "cpu":
            env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS",
                                                    str(max(1, (os.cpu_count() or 1) // self.plan.world_size)))
        self.launcher = make_launcher(self.plan)
        for rank in range(1, self.plan.world_size):
            arguments = ["--rank", str(rank), "--control", f"{address[0]}:{address[1]}",
                         "--timeout", str(envs.COMFY_XDIT_START_TIMEOUT)]
            self.processes[rank] = self.launcher.spawn(rank, arguments, env)
            self.exit_codes[rank] = None

    def _check_processes(self):
        problem = self._dead_helper()
        if problem is not None:
            raise HelperFailure(f"{problem} (its log is above in ComfyUI's console)")

    def _accept(self, acceptor, deadline):
        while True:
            self._check_processes()
            if time.monotonic() > deadline:
                raise HelperFailure(f"helpers did not connect within {envs.COMFY_XDIT_START_TIMEOUT:.0f} s")
            channel = acceptor.accept(timeout=0.5)
            if channel is not None:
                return channel

    def _receive(self, channel, deadline, what):
        while True:
            self._check_processes()
            if time.monotonic() > deadline:
                raise HelperFailure(f"a helper did not send {what} in time")
            try:
                return channel.recv(timeout=0.5)
            except TimeoutError:
                continue

    def _expect_all(self, what, deadline):
        """Waits for the Reply ``what`` from every helper, in rank order; returns their values. Anything else a helper
        sends here is its error report."""
        replies = []
        for rank, channel in sorted(self.channels.items()):
            reply = self._receive(channel, deadline, f"'{what}' (rank {rank})")
            if not (isinstance(reply, messages.Reply) and reply.what == what):
                raise HelperFailure(f"helper rank {rank} failed: {reply}")
            replies.append(reply.value)
        return replies

    def _watched(self, work, deadline, what):
        """Runs ``work`` (a phase that waits inside collectives: joining the group, the weight sync) on a thread
        while ComfyUI's thread watches the helpers: a helper that dies, or a phase past ``deadline``, raises
        HelperFailure at once instead of leaving ComfyUI inside a collective until its timeout. The phase may still
        wait there: the group is then not torn down under it, and no new group starts until it has ended."""
        outcome = {}
        device = self.device
        # The current device and the autograd modes are per thread: the phase runs in the caller's.
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def run():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    outcome["value"] = work()
            except BaseException as e:   # handed to ComfyUI's thread
                outcome["error"] = e
        thread = threading.Thread(target=run, name="comfy-xdit-" + what.replace(" ", "-"), daemon=True)
        thread.start()
        while True:
            thread.join(0.05)
            if not thread.is_alive():
                break
            problem = self.failure or self._dead_helper()
            if problem is None and time.monotonic() > deadline:
                problem = f"{what} did not finish in time"
            if problem is not None:
                self._blocked_phase = thread
                raise HelperFailure(f"{problem} while {what}")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _dead_helper(self):
        for rank, process in self.processes.items():
            code = process.poll()
            if code is not None:
                return f"helper rank {rank} exited with code {code}"
        return None

    def alive(self):
        return self.mesh is not None and self.failure is None and all(p.poll() is None for p in self.processes.values())

    def _monitor(self):
        """Notices a dead helper within 0.2 s, even while rank 0 waits inside a collective. ComfyUI's thread sees the
        failure within one block (the pacer keeps it from queueing further) and aborts the collectives itself; only
        if it does not within a few seconds does this thread abort them."""
        while not self._stopping.wait(0.2):
            for rank, process in list(self.processes.items()):
                code = process.poll()
                self.exit_codes[rank] = code
                if code is not None and not self._stopping.is_set() and self.failure is None:
                    self.failure = f"helper rank {rank} exited with code {code}"
                    log.error("Enable Multi-GPU: %s", self.failure)
                    if not self._stopping.wait(5.0):
                        self.abort_collectives()

    def abort_collectives(self, wait_s=None):
        """Frees rank 0's stream from collectives whose peer is gone: NCCL kernels waiting for it return. Only after
        a failure (the group cannot be used afterwards). gloo needs none: its collectives fail by themselves.
        ``wait_s``: how long to wait for an abort already under way on another thread (the health monitor's)."""
        if not self._abort_lock.acquire(timeout=-1 if wait_s is None else wait_s):
            log.warning("Enable Multi-GPU: the collectives' abort started by the health monitor has not returned")
            return
        try:
            if self._aborted or self.device.type != "cuda" or not dist.is_initialized():
                return
            self._aborted = True
            self.release_exchange()
            self._collectives_aborted = abort_within(dist.distributed_c10d._abort_process_group,
                                                     envs.COMFY_XDIT_ABORT_TIMEOUT)
        finally:
            self._abort_lock.release()

    def _release_peer_memory(self, graceful):
        """Frees what this group mapped of its peers and its own peer memory (freeing synchronizes the device).
        After a failure only once the collectives were aborted and the graphs destroyed: otherwise a kernel may
        still wait on the device, and the memory is left as it is (_parked) rather than hang here."""
        held = [item for item in (self.mesh.ulysses_exchange if self.mesh is not None else None, self.block_shards)
                if item is not None]
        if not held:
            return
        stuck = self.device.type == "cuda" and not graceful and (not self._collectives_aborted
                                                                  or _unreleased_group is not None)
        if stuck:
            _parked.extend(held)
            log.warning("Enable Multi-GPU: the failed group's peer memory stays allocated until ComfyUI restarts "
                        "(its collectives could not be shown to have ended)")
            return
        for item in held:
            try:
                item.release()
            except Exception:
                log.warning("Enable Multi-GPU: could not free the group's peer memory", exc_info=True)

    def release_exchange(self):
        """The symmetric exchange's barriers spin outside NCCL: released before anything waits on rank 0's stream."""
        exchange = self.mesh.ulysses_exchange if self.mesh is not None else None
        if exchange is not None:
            try:
                exchange.abort()
            except Exception:
                log.warning("Enable Multi-GPU: releasing the symmetric exchange failed", exc_info=True)

    @torch.compiler.disable
    def wait_step(self):
        """Rank 0, after its share of a parallel call: wait until the step completed on the device, and raise if a
        helper failed or a collective stalled meanwhile, so that a broken step is never handed to the sampler."""
        self.pacer.drain()

    def shutdown(self, graceful=True):
        global _unreleased_group
        # A group that failed, or whose phase was given up, is ended as a failed one whoever asks.
        graceful = graceful and self.failure is None and self._blocked_phase is None and _unreleased_group is None
        self._stopping.set()
        self.pacer.reset()
        if not graceful:
            # Helpers first, so that none is left waiting in a collective, then rank 0's own collectives. NCCL's
            # abort waits for every CUDA graph that captured its collectives to be destroyed, and destroying the one
            # stuck against the dead peer may wait for the abort: both run at once (step_graphs.py).
            for process in self.processes.values():
                if process.poll() is None:
                    process.kill()
            self.release_exchange()
            if self.graphs.entries:
                destroyed = self.graphs.destroy_in_background()
                destroyed.wait(1.0)   # measured 0.1 s where nothing is stuck
                self.abort_collectives(wait_s=_ABORT_WAIT_S())
                if not destroyed.wait(10.0):
                    # The communicator cannot be destroyed while these graphs exist: it is left as it is, and no
                    # new group is made in this process (the next prompts run on one GPU), rather than hang here.
                    _unreleased_group = "its CUDA graphs are still being destroyed"
                    log.error("Enable Multi-GPU: the failed group's CUDA graphs could not be destroyed; its process "
                              "group is left as it is and prompts run on one GPU until ComfyUI is restarted.")
            else:
                self.abort_collectives(wait_s=_ABORT_WAIT_S())
        for channel in self.channels.values():
            try:
                channel.send(messages.Exit())
            except OSError:
                pass
        deadline = time.monotonic() + (10 if graceful else 0)
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log.warning("Enable Multi-GPU: helper process %s did not end after being killed", process.pid)
        for channel in self.channels.values():
            channel.close()
        # A communicator is not destroyed while CUDA graphs that captured its collectives exist.
        if graceful and self.device.type == "cuda" and self.graphs.entries:
            torch.cuda.synchronize(self.device)
        self.graphs.clear()
        self._release_peer_memory(graceful)
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None
        global _abandoned_phase
        # Never destroy the process group under an abort still running on the health monitor's thread.
        if not self._abort_lock.acquire(timeout=_ABORT_WAIT_S()):
            _unreleased_group = "aborting its collectives did not return"
        else:
            self._abort_lock.release()
        if self._blocked_phase is not None and self._blocked_phase.is_alive():
            # A collective of this group still waits on that thread (for its timeout): its process group is
            # destroyed by the next start, once the thread has ended.
            _abandoned_phase = self._blocked_phase
        else:
            _release_default_group()
        self.processes, self.channels, self.mesh = {}, {}, None
        self.block_shards = None
        self.diffusion_model = self.model_fingerprint = None

    # ----- work ------------------------------------------------------------------------------------------------
    def _broadcast_message(self, message):
        payload = control.encode(message)  # before any send: all or nothing
        try:
            for channel in self.channels.values():
                channel.send_bytes(payload)
        except OSError as e:
            raise HelperFailure(f"lost a helper's control channel: {e}") from e

    def sync_model(self, model_patcher):
        """Make every helper hold rank 0's effective diffusion model; a no-op when it already does. Two models that
        take turns (Wan 2.2's experts, a refiner) are both kept where the helpers have room: switching back is a
        Select, not a transfer."""
        fingerprint = weights.fingerprint(model_patcher)
        if fingerprint == self.model_fingerprint:
            self.diffusion_model = model_patcher.model.diffusion_model
            return False
        if self.held is not None and self.held[0] == fingerprint:
            self._broadcast_message(messages.Select(self.held[1]))
            self._expect_all("selected", time.monotonic() + envs.COMFY_XDIT_COLLECTIVE_TIMEOUT)
            current = (self.model_fingerprint, self.slot)
            self.model_fingerprint, self.slot = self.held
            self.diffusion_model = model_patcher.model.diffusion_model
            self.held = current
            self.weight_syncs += 1   # graphs of the other model's weights are not replayed
            log.info("Enable Multi-GPU: the helpers switched to the other model they hold")
            return True
        weights.check_transferable(model_patcher)
        spec = weights.model_spec(model_patcher)
        adapter = patches.adapter_named(spec["adapter"])
        shards = None
        if self.plan.shard_weights:   # raises NotImplementedError for weights it cannot shard, before any transfer
            shards = ShardedBlocks(adapter.blocks(model_patcher.model.diffusion_model), self.plan.world_size,
                                   self.device, pull=self.plan.shard_gathers == "pull")
        t0 = time.perf_counter()
        keys = weights.weight_keys(model_patcher)
        if shards is not None:
            keys = [key for key in keys if not adapter.is_block_weight(key)]
        # A GGUF model's LoRA: the patch lists ComfyUI-GGUF applies while dequantizing (structure here, tensors after
        # the weights in one broadcast). Raises, before anything is sent, for a patch the helpers cannot rebuild.
        patch_lists, patch_tensors = gguf_weights.patch_message(model_patcher)
        if shards is not None:
            spec["block_dtype"] = shards.dtype   # the helpers' blocks are meta placeholders: no dtype of their own
        # Another base model (not the same one with other LoRA strengths) is kept beside the current one.
        keep = self.model_fingerprint is not None and self.model_fingerprint[0] != fingerprint[0] and \
            self._room_for_another(model_patcher)
        self._broadcast_message(messages.Load(spec, keys, patch_lists, transport.layout(patch_tensors),
                                              self.slot + 1, keep))
        try:
            if self.block_shards is not None:   # the helpers close theirs at the same point
                self.block_shards.close()
            self.block_shards = shards   # from here on, so that a load that fails midway frees its peer memory too

            digest = weights.WeightDigest()

            def send():
                weights.send_weights(model_patcher, keys, self.device, digest)
                transport.send_tensors(patch_tensors, self.device)
                if shards is not None:
                    weights.scatter_block_shards(model_patcher, shards, self.device)
            # As long as one collective may wait, plus a second per 100 MB (a slow link between machines).
            limit = envs.COMFY_XDIT_COLLECTIVE_TIMEOUT + model_patcher.model_size() / 100e6
            self._watched(send, time.monotonic() + limit, "sending the weights")
        except NotImplementedError as e:
            # Not "this model cannot run in parallel" any more: the helpers wait inside the transfer, so the group
            # cannot be used again and must end like any failed one.
            raise HelperFailure(f"the weight transfer stopped midway: {e}") from e
        replies = self._expect_all("loaded", time.monotonic() + envs.COMFY_XDIT_COLLECTIVE_TIMEOUT)
        for rank, received in zip(sorted(self.channels), replies):
            if received != digest.value:
                raise HelperFailure(f"the weights helper rank {rank} received differ from rank 0's (digest "
                                    f"{received:x} vs {digest.value:x}): the transfer was corrupted")
        self.held = (self.model_fingerprint, self.slot) if keep else None
        self.model_fingerprint, self.slot = fingerprint, self.slot + 1
        self.diffusion_model = model_patcher.model.diffusion_model
        self.weight_syncs += 1
        self.start_phases.setdefault("first weight sync", time.perf_counter() - t0)
        log.info("Enable Multi-GPU: sent the diffusion model's weights to %d helper(s) in %.1f s",
                 self.plan.world_size - 1, time.perf_counter() - t0)
        return True

    def decode_tiles(self, vae, method, tiles, decoded, keep_on):
        """Every tile of one tiled decode of ``vae`` decoded by its model's ``method``, in order, on ``keep_on``.
        ``decoded``: tiles rank 0 decoded already (index: output); the others go round robin to every rank, rank 0
        decoding its share meanwhile. The helpers get the VAE's weights the first time; vae_decode.NotSpreadable
        when they cannot rebuild it (they stay in step)."""
        from .vae_decode import NotSpreadable, decode_tile, qualified_name
        model = vae.first_stage_model
        if self.vae is None or self.vae[0]() is not model or self.vae[1] != vae.vae_dtype:
            self.vae = None
            state = vae.get_sd()
            keys, tensors = list(state), list(state.values())
            layout = transport.layout(tensors)
            self._broadcast_message(messages.LoadVAE(keys, layout, vae.vae_dtype, qualified_name(model)))
            deadline = time.monotonic() + envs.COMFY_XDIT_COLLECTIVE_TIMEOUT
            self._watched(lambda: transport.send_tensors(tensors, self.device), deadline, "sending the VAE")
            problems = [p for p in self._expect_all("vae loaded", deadline) if p]
            if problems:
                raise NotSpreadable(problems[0])
            self.vae = (weakref.ref(model), vae.vae_dtype)
            log.info("Enable Multi-GPU: sent the VAE's weights to %d helper(s)", self.plan.world_size - 1)
        world, todo = self.plan.world_size, [i for i in range(len(tiles)) if i not in decoded]
        sent = [tiles[i] for i in todo]
        self._broadcast_message(messages.DecodeTiles(transport.layout(sent), method))
        deadline = time.monotonic() + envs.COMFY_XDIT_COLLECTIVE_TIMEOUT
        self._watched(lambda: transport.send_tensors(sent, self.device), deadline, "sending the tiles")
        on_vae_gpu = torch.cuda.device(vae.device) if vae.device.type == "cuda" else contextlib.nullcontext()
        with on_vae_gpu:   # rank 0's share on the VAE's GPU, as ComfyUI's decode runs it
            for k in range(0, len(todo), world):
                decoded[todo[k]] = decode_tile(model, method, sent[k], vae.device).to(keep_on)
        # The helpers decode while rank 0 does: each reports its tiles' shapes and dtypes, then sends them in order.
        reports = self._expect_all("decoded", time.monotonic() + envs.COMFY_XDIT_COLLECTIVE_TIMEOUT)
        for rank, report in zip(sorted(self.channels), reports):
            if len(report) != len(range(rank, len(todo), world)):
                raise HelperFailure(f"helper rank {rank} decoded {len(report)} tiles, not its share")

        def receive():
            for rank, report in zip(sorted(self.channels), reports):
                for k, (shape, dtype) in zip(range(rank, len(todo), world), report):
                    tile = torch.empty(shape, dtype=dtype, device=self.device)
                    dist.recv(tile, src=rank)
                    decoded[todo[k]] = tile.to(keep_on)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)   # NCCL's receives return before their data has arrived
        self._watched(receive, time.monotonic() + envs.COMFY_XDIT_COLLECTIVE_TIMEOUT, "receiving the decoded tiles")
        if self.failure:
            raise HelperFailure(self.failure)
        log.info("Enable Multi-GPU: decoded %d tiles on %d GPUs", len(tiles), world)
        return [decoded[i] for i in range(len(tiles))]

    def _room_for_another(self, model_patcher, margin=1.5):
        """Whether every helper can keep its current model beside this one: helpers of this machine with unsharded
        weights, whose free memory takes this model with a margin for activations."""
        if self.plan.shard_weights or self.plan.launcher != "local":
            return False
        need = model_patcher.model_size() * margin
        if self.plan.device_type == "cpu":
            return psutil.virtual_memory().available >= need * (self.plan.world_size - 1)
        return all(torch.cuda.mem_get_info(index)[0] >= need for index in self.plan.device_indices[1:])

    def helper_stats(self):
        """Per helper: process id, device, peak and current memory, and its step times since the last query.
        Only between sampling runs: the control channels carry the steps while one runs."""
        self._broadcast_message(messages.Stats())
        stats = {}
        for rank, channel in self.channels.items():
            stats[rank] = channel.recv(timeout=30)
        self.helper_report = dict(stats, collected=time.time())
        return stats

    def new_sampling_run(self, weight_addresses=None):
        """Graphs bake in where every weight lives. They are kept for the next sampling run only while the helpers'
        model, its weight syncs and ``weight_addresses`` (of rank 0's weights, from ComfyUI's model) are unchanged,
        which spares a warm prompt its eager and capture steps. None (graphs not allowed) never keeps them."""
        weights_state = None if weight_addresses is None else (self.model_fingerprint, self.weight_syncs,
                                                               weight_addresses)
        if weights_state is None or weights_state != self._graph_weights_state:
            self._drop_graphs()
        self._graph_weights_state = weights_state

    def _drop_graphs(self):
        """Every rank's step graphs go: rank 0's now, the helpers' with the next call (a new generation)."""
        self.generation += 1
        self.graphs.reset(self.generation)
        self.graph_keys.clear()

    @property
    def times_groups(self):
        """Whether each group times its rows: only the adaptive strategy learns from those times, and timing costs
        a device synchronisation every step."""
        return self.plan.scheduling == "adaptive"

    def end_sampling_run(self):
        """Between sampling runs (helpers idle): collect their figures and let the scheduler learn from them."""
        self.helper_stats()
        self.scheduler.learn(self.helper_report)

    @torch.compiler.disable   # host work only; see multigpu.MultiGPURun.diffusion_model_wrapper
    def dispatch_forward(self, call_args, allow_graph, compile_kwargs=None, graph_ready=None, placement=...):
        """Send one model call (a dict of its arguments) to every helper; they start computing at once.
        ``compile_kwargs``: torch.compile settings the helpers apply to their model (None: eager).
        ``graph_ready(mode)``: whether rank 0's weights allow capturing (CAPTURE) or replaying (REPLAY) now; when it
        says no, the call runs eagerly, and a refused replay drops every rank's graphs to be captured anew.
        ``placement``: the scheduler's placement of this call's rows, when the caller already asked for it.
        Returns the call's messages.Forward and its tensors, for rank 0's own share (``run_step``)."""
        tensors = []
        skeleton = transport.extract_tensors(call_args, tensors)
        tensor_layout = transport.layout(tensors)
        if placement is ...:
            placement = self.scheduler.place(call_args["x"], call_args["x"].shape[1])
        key, mode = None, EAGER
        if allow_graph and placement is None:   # a graph is keyed by the call's structure: shapes and options
            structure = pickle.dumps((graph_structure(skeleton), tensor_layout), protocol=pickle.HIGHEST_PROTOCOL)
            key = self.graph_keys.setdefault(structure, len(self.graph_keys))
            mode = self.graphs.choose(key)
            if mode != EAGER and graph_ready is not None and not graph_ready(mode):
                if mode == REPLAY:   # the weights moved under the graphs: every rank captures anew
                    self._drop_graphs()
                    key = self.graph_keys.setdefault(structure, len(self.graph_keys))
                    self.graphs.choose(key)   # this eager call is the new graph's warm-up
                mode = EAGER
        message = messages.Forward(skeleton, tensor_layout, self.generation, key, mode, placement, self.times_groups,
                                   compile_kwargs)
        self._broadcast_message(message)   # pickling errors surface here, before any helper sees anything
        try:
            transport.send_tensors(tensors, self.device)
        except Exception as e:  # helpers already wait for this broadcast: the group is out of step
            raise HelperFailure(f"sending the step's tensors failed: {e}") from e
        return message, tensors

    def sequence_parallel_call(self, token_weights):
        """What rank 0's shard of a call puts into its transformer_options for the adapter's hooks (patches/)."""
        return SequenceParallelCall(self.mesh, token_weights, self.pacer, self.block_shards)

    @torch.compiler.disable
    def run_step(self, message, tensors, run_shard):
        """Rank 0's share of the call ``dispatch_forward`` sent (runtime/step.py, as every helper runs its own),
        then waits until the step completed on the device (``wait_step``). Returns the output, a copy in graph
        modes (the graph's buffer is overwritten by the next replay)."""
        started = time.perf_counter()
        step = ParallelStep(self.mesh, self.device, self.graphs, self.scheduler.group_ms)   # timed per message
        out = step.run(message, tensors, run_shard)
        if message.mode != EAGER:
            out = out.clone()
        self.wait_step()
        self.step_ms.append((time.perf_counter() - started) * 1e3)
        return out


def graph_structure(skeleton):
    """What a step graph depends on in a call's skeleton. The conditionings' uuids are new in every sampling run
    (ComfyUI's sampler_helpers.convert_cond) and only hooks read them, never the graphed forward: keyed by their
    count, a warm prompt finds the graphs of the previous one."""
    options = skeleton.get("transformer_options")
    if isinstance(options, dict) and "uuids" in options:
        return dict(skeleton, transformer_options=dict(options, uuids=len(options["uuids"])))
    return skeleton


def _recorded_event():
    event = torch.cuda.Event()
    event.record()
    return event


_lock = threading.Lock()
_group = None
_owned_default_group = False    # whether the default process group is ours (so ours to destroy)
_parked = []                      # what a failed group leaves that must never be freed (see shutdown)
_unreleased_group = None        # why a failed group's process group had to be left alive (no new group after it)
_abandoned_phase = None         # the thread of a failed group's collective phase that still waits for its timeout
def _ABORT_WAIT_S():
    return envs.COMFY_XDIT_ABORT_TIMEOUT + 5.0


_RANK0_NCCL_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2", "TORCH_NCCL_ENABLE_MONITORING": "0"}
_HELPER_NCCL_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_ENABLE_MONITORING": "1"}


class _PhaseClock:
    """Records into ``phases`` the seconds since the previous call, under each call's name."""

    def __init__(self, phases):
        self.phases, self.last = phases, time.perf_counter()

    def __call__(self, name):
        now = time.perf_counter()
        self.phases[name] = now - self.last
        self.last = now


def abort_within(abort, seconds):
    """Runs ``abort`` (NCCL's communicator abort) on a thread for at most ``seconds``. Returns whether it returned
    in time. Past the deadline the process group is set aside: it is left as it is, no new group is made in this
    process, and prompts run on one GPU until ComfyUI restarts, rather than ComfyUI waiting on it."""
    global _unreleased_group
    finished = threading.Event()
    outcome = {"ok": False}

    def run():
        try:
            abort()
            outcome["ok"] = True
        except Exception:
            log.warning("Enable Multi-GPU: aborting the collectives failed", exc_info=True)
        finally:
            finished.set()
    t0 = time.perf_counter()
    threading.Thread(target=run, name="comfy-xdit-abort", daemon=True).start()
    if not finished.wait(seconds):
        _unreleased_group = f"aborting its collectives did not return within {seconds:.0f} s"
        log.error("Enable Multi-GPU: aborting the failed group's collectives did not return within %.0f s; its "
                  "process group is set aside and prompts run on one GPU until ComfyUI is restarted.", seconds)
        return False
    log.info("Enable Multi-GPU: aborted the process group's collectives in %.2f s", time.perf_counter() - t0)
    return outcome["ok"]


def _release_default_group():
    global _owned_default_group
    if _unreleased_group is not None:   # destroying it would wait for CUDA graphs that cannot be destroyed
        return
    if dist.is_initialized() and _owned_default_group:
        try:
            dist.destroy_process_group()
        except Exception:  # a broken (aborted) group may fail to tear down; the helpers are gone either way
            log.warning("Enable Multi-GPU: could not destroy the old process group", exc_info=True)
    _owned_default_group = dist.is_initialized() and _owned_default_group


def ensure_group(plan):
    """The running helper group for ``plan``, started (or restarted with the new plan) when needed."""
    global _group
    with _lock:
        if _group is not None and _group.plan == plan and _group.alive():
            return _group
        if _group is not None:
            log.info("Enable Multi-GPU: stopping helpers of %s", _group.plan.describe())
            try:
                _group.shutdown()
            finally:
                _group = None
        group = _take_prestarted(plan)
        if group is None:
            group = HelperGroup(plan)
            group.start()
        _group = group
        return group


_prestarted = None   # (group, launched Event): helpers started with ComfyUI, waiting for a prompt's plan


def prestart(plan):
    """Launches helpers for ``plan``'s devices on a thread of their own, so that the first prompt that uses the same
    devices only joins them (``ensure_group``). The thread lives as long as the helpers: they end with the thread
    that started them (PR_SET_PDEATHSIG)."""
    global _prestarted
    group, launched = HelperGroup(plan), threading.Event()

    def keep():
        try:
            group.launch()
        except Exception as e:   # the prompt that would have used them starts its own helpers
            log.warning("Enable Multi-GPU: could not start helpers with ComfyUI (%s)", e)
            return
        finally:
            launched.set()
        if group.cancelled:      # given up on while launching: nobody else will end them
            group.shutdown()
            return
        started = list(group.processes.values())
        log.info("Enable Multi-GPU: %d helper(s) started with ComfyUI in %.1f s, waiting for a prompt",
                 len(started), group.started_s)
        group._stopping.wait()
        while any(process.poll() is None for process in started):
            time.sleep(0.5)

    with _lock:
        _prestarted = (group, launched)
    threading.Thread(target=keep, name="comfy-xdit-prestarted", daemon=True).start()
    return group


def _take_prestarted(plan):
    """The launched helpers of ``prestart`` joined into ``plan``, if they run on its devices; else None (and they
    are stopped, since nothing else would use them)."""
    global _prestarted
    if _prestarted is None:
        return None
    group, launched = _prestarted
    _prestarted = None
    if not launched.wait(envs.COMFY_XDIT_START_TIMEOUT):
        group.cancelled = True   # still launching: its own thread ends it
        return None
    same_devices = (group.plan.device_type, group.plan.device_indices, group.plan.launcher) == \
        (plan.device_type, plan.device_indices, plan.launcher)
    if not same_devices or group.failure or not group.channels or \
            any(process.poll() is not None for process in group.processes.values()):
        group.shutdown()
        return None
    group.plan = plan
    group.join()
    return group


def prestart_from_settings():
    """COMFY_XDIT_PRESTART_GPUS: helpers for that many GPUs of this machine, started as ComfyUI starts."""
    count = envs.COMFY_XDIT_PRESTART_GPUS
    if count < 2:
        return None
    import comfy.model_management
    from ..config import MultiGPUOptions, resolve_plan
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # Ring over all ranks: any head count fits; the prompt's own plan replaces it when the helpers join.
    plan = resolve_plan(MultiGPUOptions(gpus=count, parallelism="ring"), 1, comfy.model_management.get_torch_device(),
                        visible)
    return prestart(plan)


def current_group():
    return _group


def shutdown_group(reason=None, graceful=True):
    """Ends the helpers. ``graceful=False`` (after a failure) kills them at once instead of waiting for them."""
    global _group, _prestarted
    with _lock:
        if _prestarted is not None:   # helpers started with ComfyUI that no prompt took over
            waiting, launched = _prestarted
            _prestarted = None
            if launched.wait(envs.COMFY_XDIT_START_TIMEOUT):
                waiting.shutdown(graceful)
            else:
                waiting.cancelled = True   # still launching: its own thread ends it
        if _group is not None:
            if reason:
                log.info("Enable Multi-GPU: stopping helpers (%s)", reason)
            try:
                _group.shutdown(graceful)
            finally:   # a group that failed to shut down cleanly is still never used again
                _group = None


atexit.register(shutdown_group)
