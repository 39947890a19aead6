"""The control messages between rank 0 and its helpers, one type each, in the order a helper meets them.

They travel through runtime/channel.py, whose decoder accepts these types by name and nothing that runs code.
"""
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Joined:
    """Helper → rank 0, right after authenticating: who it is and what it runs."""
    rank: int
    versions: dict


@dataclass(frozen=True)
class Prepare:
    """Rank 0 → helper: import ComfyUI with rank 0's command-line settings on this device."""
    comfy_args: dict
    device_type: str
    device_index: Optional[int]


@dataclass(frozen=True)
class Setup:
    """Rank 0 → helper: join the plan's process group through rank 0's rendezvous store."""
    plan: Any
    store_host: str
    store_port: int
    collective_timeout_s: float


@dataclass(frozen=True)
class Load:
    """Rank 0 → helper: build (or keep) the model ``spec`` describes and receive its weights, keys in this order.
    ``patches``/``patch_layout``: a GGUF model's weight patches and the layout of their tensors. ``slot``: rank 0's
    name for this model; ``keep_held``: keep the current model too (two models of one workflow, such as Wan 2.2's
    high- and low-noise experts), to be made current again by a Select."""
    spec: dict
    keys: list
    patches: Any
    patch_layout: list
    slot: int = 0
    keep_held: bool = False


@dataclass(frozen=True)
class Select:
    """Rank 0 → helper: make the held model of ``slot`` current (its weights are already there)."""
    slot: int


@dataclass(frozen=True)
class Forward:
    """Rank 0 → helper: one model call. Its tensors follow in one broadcast, cut by ``tensor_layout``."""
    skeleton: Any                 # the call's arguments with every tensor replaced by a TensorSlot
    tensor_layout: list
    generation: int               # step graphs older than this are dropped first
    graph_key: Optional[int]
    mode: str                     # step_graphs.EAGER, CAPTURE or REPLAY
    placement: Any                # rows per group and token weights (parallel/placement.py), or None
    timed: bool                   # whether each group times its rows (the adaptive scheduling)
    compile_kwargs: Optional[dict]   # TorchCompileModel's settings, or None for eager


@dataclass(frozen=True)
class LoadVAE:
    """Rank 0 → helper: build the VAE of these state-dict ``keys`` (tensors follow in one broadcast, cut by
    ``tensor_layout``) in ``dtype``, for the tiled decode spread over the GPUs; it replies why not if ComfyUI does
    not rebuild ``model_class`` ("module.Class") from them."""
    keys: list
    tensor_layout: list
    dtype: Any
    model_class: str


@dataclass(frozen=True)
class DecodeTiles:
    """Rank 0 → helper: latent tiles of one tiled decode (they follow in one broadcast, cut by ``tensor_layout``);
    rank r decodes tiles r, r + N, r + 2N, ... with the VAE model's ``method`` and sends them to rank 0."""
    tensor_layout: list
    method: str


@dataclass(frozen=True)
class Stats:
    """Rank 0 → helper, between sampling runs: report memory and step times."""


@dataclass(frozen=True)
class Exit:
    """Rank 0 → helper: end."""


@dataclass(frozen=True)
class Reply:
    """Helper → rank 0: ``what`` it finished ("imported", "ready", "loaded"), with its ``value``."""
    what: str
    value: Any = None
