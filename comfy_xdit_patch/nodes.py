"""The Enable Multi-GPU node: one node on the MODEL line, before the sampler."""
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
    def execute(cls, model, **options):
        return io.NodeOutput(apply_multigpu(model, **options))


class XDiTExtension(ComfyExtension):
    async def on_load(self):
        monitor.register_routes()
        helper_group.prestart_from_settings()

    async def get_node_list(self):
        return [EnableMultiGPU] + DROP_IN_NODES


async def comfy_entrypoint():
    return XDiTExtension()
