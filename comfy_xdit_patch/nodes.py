"""The Enable Multi-GPU node: one node on the MODEL line, before the sampler."""
import logging

from comfy_api.latest import ComfyExtension, io

from .dropin import DROP_IN_NODES
from . import monitor
from .runtime import helper_group
from .node_options import apply_multigpu, multigpu_inputs


class EnableMultiGPU(io.ComfyNode):
    """Samples this model on several GPUs at once (sequence parallelism): the same image as on one GPU, faster.

    Place it after every node that changes the model (LoRA, ModelSampling, ...), right before the sampler.
    """

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EnableMultiGPU",
            display_name="Enable Multi-GPU",
            category="advanced/multigpu",
            description=cls.__doc__,
            inputs=[io.Model.Input("model")] + multigpu_inputs(),
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, enabled=True, gpus=0, parallelism="auto", ulysses_degree=0, ring_degree=0,
                sequence_degree=0, scheduling="round_robin", shard_weights=False, launcher="local", exchange="auto",
                exchange_parts=2, shard_gathers="auto", cuda_graphs=True):
        return io.NodeOutput(apply_multigpu(
            model, enabled, gpus=gpus, parallelism=parallelism, ulysses_degree=ulysses_degree, ring_degree=ring_degree,
            sequence_degree=sequence_degree, scheduling=scheduling, shard_weights=shard_weights, launcher=launcher,
            exchange=exchange, exchange_parts=exchange_parts, shard_gathers=shard_gathers, cuda_graphs=cuda_graphs))


class XDiTExtension(ComfyExtension):
    async def on_load(self):
        monitor.register_routes()
        try:
            helper_group.prestart_from_settings()
        except Exception as e:   # the nodes must load anyway; prompts start their own helpers
            logging.getLogger(__name__).warning("Enable Multi-GPU: helpers were not started with ComfyUI: %s", e)

    async def get_node_list(self):
        return [EnableMultiGPU] + DROP_IN_NODES


async def comfy_entrypoint():
    return XDiTExtension()
