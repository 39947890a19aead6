"""The state of one sequence-parallel model call, shared by the token sharding, the attention and the gather.

It travels inside ``transformer_options`` (ComfyUI copies that dict shallowly on its way down the model, so every
hook of the call sees the same object). A call without it runs exactly as on one device.
"""
import torch

from .attention import AttentionLayout
from .placement import weighted_split
from .token_split import split_sizes

TRANSFORMER_OPTIONS_KEY = "xdit_sequence_parallel"


class SequenceParallelCall:
    """The image sequence is the generated image's tokens followed by any reference-image tokens (Kontext, Flux.2
    edit). Each rank holds a slice of both parts: its image tokens first, then its reference tokens. So every shard
    starts with generated-image tokens (FLUX's per-token modulation ranges rely on that), and only the generated part
    has to be gathered at the end."""

    def __init__(self, mesh, token_weights=None, pacer=None, weight_shards=None):
        self.mesh = mesh
        self.token_weights = token_weights   # per sp_rank, for GPUs of different speed; None = even split
        self.pacer = pacer                   # rank 0: bounds how far its thread runs ahead (runtime/pacing.py)
        self.weight_shards = weight_shards   # ShardedBlocks when the blocks' weights are sharded
        if weight_shards is not None:
            weight_shards.start_call()
        self.txt_sizes = self.main_sizes = self.ref_sizes = self._layout = self._image_layout = None
        self._mask = None   # (mask, the mask in the token order of the gathered sequence): every block passes the same
        self._key_mask = None   # a key mask over the whole sequence, gathered once per call (gathered_key_mask)
        self.per_token = {}     # name -> (argument, this rank's cut): every block passes the same, cut once per call
        self.keys_split = False  # the running attention's queries are whole on every rank, its keys split

    def _split(self, length):
        if self.token_weights:
            return weighted_split(length, self.token_weights)
        return split_sizes(length, self.mesh.sp_degree)

    def plan_tokens(self, txt_len, img_len, ref_len=0):
        self.txt_sizes = self._split(txt_len)
        self.main_sizes = self._split(img_len - ref_len)
        self.ref_sizes = self._split(ref_len)
        self._layout = self._image_layout = None

    @property
    def attention_layout(self):
        """Every block's attention uses the same split: its layout is derived once per call, not once per block."""
        if self._layout is None:
            self._layout = AttentionLayout(self.mesh, self.seq_lens)
        return self._layout

    def layout_for(self, length):
        """The layout of an attention whose local sequence has ``length`` tokens: the joint one (this rank's text and
        image tokens), or one over the image tokens alone (SD3.5 Medium's second attention)."""
        rank = self.mesh.sp_rank
        if length == self.seq_lens[rank]:
            return self.attention_layout
        if length == self.img_sizes[rank]:
            if self._image_layout is None:
                self._image_layout = AttentionLayout(self.mesh, self.img_sizes)
            return self._image_layout
        raise RuntimeError(f"an attention over {length} local tokens matches neither this rank's text and image "
                           f"({self.seq_lens[rank]}) nor its image tokens ({self.img_sizes[rank]})")

    @property
    def img_sizes(self):
        return [m + r for m, r in zip(self.main_sizes, self.ref_sizes)]

    @property
    def seq_lens(self):
        """Tokens each rank of the sequence-parallel group holds in the joint (text + image) attention, by
        ``sp_rank``."""
        return [t + i for t, i in zip(self.txt_sizes, self.img_sizes)]

    def image_slices(self, rank):
        """(start, length) of ``rank``'s generated-image tokens and of its reference tokens in the full sequence."""
        main = sum(self.main_sizes)
        return ((sum(self.main_sizes[:rank]), self.main_sizes[rank]),
                (main + sum(self.ref_sizes[:rank]), self.ref_sizes[rank]))

    def local_ranges(self, ranges, rank):
        """Global [start, stop) token ranges of the image sequence, in ``rank``'s local coordinates."""
        local, offset = [], 0
        for start, length in self.image_slices(rank):
            for a, b in ranges:
                lo, hi = max(a, start), min(b, start + length)
                if hi > lo:
                    local.append([lo - start + offset, hi - start + offset])
            offset += length
        return local

    def joint_positions(self, rank, device):
        """Where ``rank``'s tokens of the joint attention (its text, then its image tokens) stand in the whole
        sequence (all text, then all image tokens): the rows and columns of a full attention mask they use."""
        text_start = sum(self.txt_sizes[:rank])
        parts = [torch.arange(text_start, text_start + self.txt_sizes[rank], device=device)]
        text = sum(self.txt_sizes)
        parts += [torch.arange(text + start, text + start + length, device=device)
                  for start, length in self.image_slices(rank)]
        return torch.cat(parts)

    def gathered_mask(self, mask):
        """A full attention mask (..., L, L) over the whole sequence, in the order of the sequence that the Ulysses
        exchange gathers (every rank's tokens, rank after rank). Made once per call: every block uses the same."""
        if self._mask is None or self._mask[0] is not mask:
            total = sum(self.seq_lens)
            if mask.shape[-1] != total or mask.shape[-2] != total:
                raise RuntimeError(f"the attention mask covers {mask.shape[-1]} tokens, the sequence has {total}")
            order = torch.cat([self.joint_positions(rank, mask.device) for rank in range(self.mesh.sp_degree)])
            self._mask = (mask, mask.index_select(-2, order).index_select(-1, order))
        return self._mask[1]

    def gathered_key_mask(self, local_mask, group):
        """A key mask (..., 1, L_local) over this rank's joint tokens as the whole sequence's key mask, in the order
        the Ulysses exchange gathers the tokens (rank after rank). Collective on the first use in a call, on every
        rank alike; later blocks reuse it (a model builds the same key mask for every block)."""
        if self._key_mask is None:
            from .token_split import gather_shards
            self._key_mask = gather_shards(local_mask, self.seq_lens, self.mesh.sp_rank, group, dim=-1)
        return self._key_mask

    def collective_issued(self):
        if self.pacer is not None:
            self.pacer.mark()


def active_call(transformer_options):
    if not transformer_options:
        return None
    return transformer_options.get(TRANSFORMER_OPTIONS_KEY)
