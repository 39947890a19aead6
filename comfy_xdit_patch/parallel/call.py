"""The state of one sequence-parallel model call, shared by the token sharding, the attention and the gather.

It travels inside ``transformer_options`` (ComfyUI copies that dict shallowly on its way down the model, so every
hook of the call sees the same object). A call without it runs exactly as on one device.
"""
from .placement import weighted_split
from .sharding import split_sizes

TRANSFORMER_OPTIONS_KEY = "xdit_sequence_parallel"


class SequenceParallelCall:
    def __init__(self, mesh, token_weights=None):
        self.mesh = mesh
        self.token_weights = token_weights   # per sp_rank, for GPUs of different speed; None = even split
        self.txt_sizes = None
        self.img_sizes = None

    def plan_tokens(self, txt_len, img_len):
        if self.token_weights:
            self.txt_sizes = weighted_split(txt_len, self.token_weights)
            self.img_sizes = weighted_split(img_len, self.token_weights)
        else:
            self.txt_sizes = split_sizes(txt_len, self.mesh.sp_degree)
            self.img_sizes = split_sizes(img_len, self.mesh.sp_degree)

    @property
    def seq_lens(self):
        """Tokens each rank of the sequence-parallel group holds in the joint (text + image) attention, by
        ``sp_rank``."""
        return [t + i for t, i in zip(self.txt_sizes, self.img_sizes)]


def active_call(transformer_options):
    if not transformer_options:
        return None
    return transformer_options.get(TRANSFORMER_OPTIONS_KEY)
