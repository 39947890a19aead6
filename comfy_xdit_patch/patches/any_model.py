"""Every model without a sequence-parallel adapter (SDXL, SD1.5 and the rest): CFG- and batch-parallel.

Nothing inside the model is split: a call's batch rows (its batch items, and the conditional and unconditional
branches ComfyUI batches together when cfg > 1) are placed on the GPUs, each GPU runs ComfyUI's own forward on its
rows, and the rows are gathered back in order. Every row is computed as on one GPU, so the result is one GPU's.
"""
from . import hooks
from .adapter import Adapter


class AnyModelAdapter(Adapter):
    name = "any"
    sequence_parallel = False
    limits = (("a call of one row (cfg 1 and batch 1)", "there is nothing to place on another GPU"),
              ("shard_weights", "it needs a family adapter that names the transformer blocks"))

    def supports(self, diffusion_model):
        return True

    def num_heads(self, diffusion_model):
        return None

    def install_on_patcher(self, model_patcher, shard_weights=False):
        """Nothing inside the model changes: rank 0 only hands its calls to the helpers (multigpu.py)."""

    def install_on_model(self, diffusion_model):
        pass

    def hooked_transformer_options(self, data_options, call, replacements=None):
        return dict(data_options)

    def unsupported_reason(self, arguments, transformer_options, diffusion_model, sp_degree, ring_degree=1,
                           token_weights=None):
        foreign = hooks.foreign_hooks(transformer_options)
        if foreign:
            return "the model carries patches the helper GPUs cannot reproduce: " + ", ".join(foreign)
        if arguments["x"].shape[0] < 2:   # a tensor: multigpu.py sends any other input to one GPU first
            return nothing_to_split(diffusion_model)
        return None


def nothing_to_split(diffusion_model):
    return (f"{type(diffusion_model).__name__} has no sequence-parallel adapter, and this call has one row (cfg 1 "
            "and batch 1): CFG/batch parallelism has nothing to place on another GPU")


ADAPTER = AnyModelAdapter()
