"""CUDA-graph replay of the sequence-parallel model call, in lock-step on every rank. On by default where it is safe
(``multigpu._graph_safe``); the node's ``cuda_graphs`` input turns it off.

Replaying the step as a CUDA graph, collectives included, removes the host's kernel-launch cost: on 2×H200 at 1024²
the step went from 131–157 ms eager to 113–118 ms (docs/benchmarks.md).

Rank 0 decides per call and tells the helpers, so every rank does the same thing:
- ``eager``: the first call of a new shape (also the warm-up a capture needs: cuBLAS, NCCL communicators);
- ``capture``: the second call with the same key (shapes and options): record it into a graph, then replay it;
- ``replay``: copy the call's tensors into the graph's static inputs and replay.
A failed capture falls back to eager on that rank; eager and replay issue the same collectives in the same order,
so the ranks stay in step whichever each one runs.
"""
import collections
import logging
import threading

import torch

log = logging.getLogger(__name__)

EAGER, CAPTURE, REPLAY = "eager", "capture", "replay"


class StepGraphs:
    def __init__(self, limit=2):
        self.limit = limit          # graphs kept (each holds a forward's activations)
        self.generation = None
        self.entries = collections.OrderedDict()
        self.uncapturable = set()
        self.seen = set()

    def reset(self, generation):
        if generation != self.generation:
            self.clear()
            self.generation = generation

    def clear(self):
        self.generation = None
        self.entries.clear()
        self.uncapturable.clear()
        self.seen.clear()

    def destroy_in_background(self):
        """After a failure, before the communicator is aborted: NCCL's abort never returns while a graph that captured
        its collectives exists, and destroying the graph that is replaying against a dead peer may itself wait until
        the abort frees the device (with ring attention it did; destroying the graphs first and aborting meanwhile
        returned in 0.1 s and 0.6 s on 2×H200, docs/benchmarks.md). So the graphs are destroyed on a thread of their
        own (``CUDAGraph.reset`` releases the GIL) while the caller goes on to the abort. Returns an Event set once
        they are all destroyed."""
        graphs = [graph for graph, _, _ in self.entries.values()]
        destroyed = threading.Event()

        def destroy():
            try:
                for graph in graphs:
                    try:
                        graph.reset()
                    except Exception:   # a CUDA error after the failure: the next graph is still destroyed
                        log.warning("Enable Multi-GPU: destroying a CUDA graph failed", exc_info=True)
            finally:
                destroyed.set()

        threading.Thread(target=destroy, name="xdit-graph-release", daemon=True).start()
        return destroyed

    def choose(self, key):
        """Rank 0: the mode of this call (a key seen once before is captured: its first call was the warm-up)."""
        if key in self.entries:
            return REPLAY
        if key in self.seen and key not in self.uncapturable:
            return CAPTURE
        self.seen.add(key)
        return EAGER

    def run(self, key, mode, forward, inputs):
        """``forward(inputs)`` runs the model call on a list of tensors and returns its output tensor. In graph modes
        the returned tensor is the graph's static output: copy it before the next call if it must survive."""
        if mode == CAPTURE:
            static = [t.clone() for t in inputs]
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    output = forward(static)
            except Exception as e:
                log.warning("Enable Multi-GPU: this step cannot be captured as a CUDA graph (%s: %s); it runs "
                            "eagerly.", type(e).__name__, str(e)[:200])
                self.uncapturable.add(key)
                return forward(inputs)
            log.info("Enable Multi-GPU: captured the step (key %s) as a CUDA graph", key)
            self.entries[key] = (graph, static, output)
            while len(self.entries) > self.limit:
                self.entries.popitem(last=False)
            graph.replay()
            return output
        if mode == REPLAY and key in self.entries:
            graph, static, output = self.entries[key]
            self.entries.move_to_end(key)
            for buffer, tensor in zip(static, inputs):
                buffer.copy_(tensor, non_blocking=True)
            graph.replay()
            return output
        return forward(inputs)
