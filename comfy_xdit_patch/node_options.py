"""The Enable Multi-GPU options, shared by the node and every drop-in node: one definition, one behaviour."""
from comfy_api.latest import io

from .config import EXCHANGES, LAUNCHERS, PARALLELISMS, SCHEDULINGS, SHARD_GATHERS, MultiGPUOptions
from .multigpu import enable_multigpu


def multigpu_inputs(optional=False):
    """The Enable Multi-GPU options, shared by the node and every drop-in."""
    return [
        io.Boolean.Input("enabled", default=True, optional=optional, tooltip="Off: one GPU, the model unchanged."),
        io.Int.Input("gpus", default=0, min=0, max=64, optional=optional,
                     tooltip="How many GPUs to use; 0 = every visible GPU. With ComfyUI started with --cpu: that many "
                             "CPU processes (0 = 2)."),
        io.Combo.Input("parallelism", options=list(PARALLELISMS), default="auto", optional=optional,
                       tooltip="auto: for a model with a sequence-parallel adapter (FLUX, Chroma, SD3), Ulysses over "
                               "as many GPUs as the heads allow, ring for the rest, or the degrees below when set; for "
                               "any other model, the CFG branches and batch items on different GPUs. ulysses: "
                               "all-to-all of heads. ring: K/V passed around a ring. usp: both, by the degrees below."),
        io.Int.Input("ulysses_degree", default=0, min=0, max=64, optional=True,
                     tooltip="For usp or auto: GPUs per Ulysses group (0 = automatic, or what ring_degree leaves). "
                             "ulysses_degree x ring_degree must equal the GPUs of a sequence-parallel group. Leave 0 "
                             "with parallelism ulysses or ring."),
        io.Int.Input("ring_degree", default=0, min=0, max=64, optional=True,
                     tooltip="For usp or auto: Ulysses groups in the ring (0 = automatic, or what ulysses_degree "
                             "leaves). It must divide the GPUs of a sequence-parallel group. Leave 0 with parallelism "
                             "ulysses or ring."),
        io.Int.Input("sequence_degree", default=0, min=0, max=64, optional=True,
                     tooltip="GPUs per sequence-parallel group (0 = all of them). Fewer makes several groups, and "
                             "batch items and CFG branches (cond / uncond) run on different groups at once."),
        io.Combo.Input("scheduling", options=list(SCHEDULINGS), default="round_robin", optional=True,
                       tooltip="How rows go to groups: round_robin; least_loaded; weighted_round_robin (by measured "
                               "GPU speed, token shards too); adaptive (speeds re-measured every run)."),
        io.Boolean.Input("shard_weights", default=False, optional=True,
                         tooltip="Each GPU holds 1/N of the transformer blocks' weights and gathers a block's full "
                                 "weights just before it runs (for helper GPUs too small for the whole model; costs "
                                 "transfer every step). bf16/fp16/fp32 weights only."),
        io.Combo.Input("launcher", options=list(LAUNCHERS), default="local", optional=True,
                       tooltip="local: helper processes on this machine. ray: helpers as Ray actors across a Ray "
                               "cluster (COMFY_XDIT_RAY_ADDRESS; empty starts Ray here; rank 0's address in "
                               "COMFY_XDIT_HOST)."),
        # Speed levers: every choice gives the same image; auto picks what was measured fastest here.
        io.Combo.Input("exchange", options=list(EXCHANGES), default="auto", optional=True, advanced=True,
                       tooltip="How Ulysses moves q, k, v between GPUs. auto: peer memory for 2 GPUs of one machine "
                               "where available, else NCCL. nccl: NCCL's all-to-all. symmetric: peers write into "
                               "each other's buffers (GPUs of one machine). copy-engine: the same buffers filled by "
                               "the copy engines in head parts, pipelined against the attention (not yet timed on 2 "
                               "GPUs)."),
        io.Int.Input("exchange_parts", default=2, min=1, max=64, optional=True, advanced=True,
                     tooltip="copy-engine only: head parts per GPU; must divide the heads each GPU computes."),
        io.Combo.Input("shard_gathers", options=list(SHARD_GATHERS), default="auto", optional=True, advanced=True,
                       tooltip="shard_weights only: pull (copies from the other GPUs' pieces in peer memory) or "
                               "all-gather (a collective; the only way across machines). auto: pull where possible."),
        io.Boolean.Input("cuda_graphs", default=True, optional=True, advanced=True,
                         tooltip="Replay each step as a CUDA graph where it is safe (removes the host's launch "
                                 "cost). Off: every step runs eagerly."),
    ]


_MULTIGPU_NAMES = tuple(option.id for option in multigpu_inputs())


def split_multigpu(kwargs):
    options = {k: kwargs.pop(k) for k in _MULTIGPU_NAMES if k in kwargs}
    return kwargs, options


def apply_multigpu(model, enabled=True, **options):
    """The node's behaviour for its input values (missing optional inputs take their defaults)."""
    if not enabled:
        return model
    chosen = {name: value for name, value in options.items() if value is not None}
    return enable_multigpu(model, MultiGPUOptions(**chosen))
