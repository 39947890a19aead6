"""The Enable Multi-GPU node: one node on the MODEL line, before the sampler."""
from comfy_api.latest import ComfyExtension, io

from .config import PARALLELISMS
from .multigpu import enable_multigpu


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
            inputs=[
                io.Model.Input("model"),
                io.Boolean.Input("enabled", default=True, tooltip="Off returns the model unchanged (one GPU)."),
                io.Int.Input("gpus", default=0, min=0, max=64,
                             tooltip="How many GPUs to use; 0 = every visible GPU. With ComfyUI started with --cpu: "
                                     "that many CPU processes (0 = 2)."),
                io.Combo.Input("parallelism", options=list(PARALLELISMS), default="auto",
                               tooltip="auto: Ulysses as far as the attention heads allow, ring attention for the "
                                       "rest. ulysses: all-to-all of heads. ring: K/V passed around a ring. usp: both."),
                io.Int.Input("ulysses_degree", default=0, min=0, max=64, optional=True,
                             tooltip="For usp: GPUs per Ulysses group (0 = automatic)."),
                io.Int.Input("ring_degree", default=0, min=0, max=64, optional=True,
                             tooltip="For usp: Ulysses groups in the ring (0 = automatic)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, enabled=True, gpus=0, parallelism="auto", ulysses_degree=0, ring_degree=0):
        if not enabled:
            return io.NodeOutput(model)
        return io.NodeOutput(enable_multigpu(model, gpus, parallelism, ulysses_degree or 0, ring_degree or 0))


class XDiTExtension(ComfyExtension):
    async def get_node_list(self):
        return [EnableMultiGPU]


async def comfy_entrypoint():
    return XDiTExtension()
