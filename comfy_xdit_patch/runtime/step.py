"""One rank's share of a parallel model call: the same code on rank 0 and on every helper.

The call's tensors go back into its arguments, the batch rows are placed on the sequence-parallel groups
(parallel/placement.py), and each shard runs the model with the sequence-parallel hooks, eagerly or through the rank's
step graphs. Only ``run_shard`` differs between the ranks: rank 0 runs ComfyUI's own executor, a helper its mirror.
"""
from ..parallel.placement import run_placed
from . import transport
from .step_graphs import EAGER


class ParallelStep:
    def __init__(self, mesh, device, graphs, group_ms):
        self.mesh, self.device, self.graphs, self.group_ms = mesh, device, graphs, group_ms

    def run(self, message, tensors, run_shard):
        """``message``: the call's messages.Forward; ``run_shard(arguments, token_weights)`` runs the model on one
        shard. In graph modes the output is the graph's static buffer: copy it before the next call if it must
        survive."""
        def forward(inputs):
            return run_placed(run_shard, transport.insert_tensors(message.skeleton, inputs), message.placement,
                              self.mesh, self.device, self.group_ms if message.timed else None)

        if message.mode == EAGER:
            return forward(tensors)
        return self.graphs.run(message.graph_key, message.mode, forward, [t.to(self.device) for t in tensors])
