"""Sequence-parallel attention: Ulysses, ring, and both at once (USP).

Each rank holds q, k and v of its own tokens (B, H, L_local, D), RoPE already applied. The result is this rank's
attention output (B, L_local, H * D), equal to attention over the whole sequence. Token order across ranks does not
matter to attention, so no permutation is ever undone.
"""
import torch

from ..kernels import attention_with_lse, merge_partial_attention
from .comm import RingExchange, all_gather_single, scatter_heads_gather_sequence, scatter_sequence_gather_heads


def ring_attention(q, k, v, ring_lens, ring_ranks, member):
    """Attention of local queries over the keys of every ring member: K/V travel around the ring while the
    current block computes; partial results merge in fp32 through their log-sum-exp.
    Returns (B, L, H, D), token-major."""
    size = len(ring_lens)
    exchange = RingExchange(ring_ranks, member)
    out = lse = None
    k, v = k.contiguous(), v.contiguous()
    for step in range(size):
        if step + 1 < size:
            incoming = exchange.start((k, v), ring_lens[(member - step - 1) % size])
        block_out, block_lse = attention_with_lse(q, k, v)
        out, lse = merge_partial_attention(out, lse, block_out, block_lse)
        if step + 1 < size:
            exchange.wait()
            k, v = incoming
    return out.to(q.dtype)


def split_key_attention(q, k, v, group, world):
    """Attention of queries every rank holds whole over keys and values split across ``group`` (``world`` ranks,
    each with a slice): each rank's partial result and log-sum-exp are gathered (the size of the queries' output,
    not of the keys) and merged in rank order, so every rank gets the same result. Returns (B, L, H, D)."""
    out, lse = attention_with_lse(q, k, v)
    packed = torch.cat((out.float().reshape(-1), lse.reshape(-1)))
    gathered = packed.new_empty(world * packed.numel())
    all_gather_single(gathered, packed, group=group)
    merged = merged_lse = None
    for part in gathered.view(world, -1):
        part_out, part_lse = part[:out.numel()].view(out.shape), part[out.numel():].view(lse.shape)
        merged, merged_lse = merge_partial_attention(merged, merged_lse, part_out, part_lse)
    return merged.to(q.dtype)


class AttentionLayout:
    """What every attention call of one model call needs to know about the token split, derived once from the
    local token counts of the sequence-parallel group (``seq_lens``, by ``sp_rank``)."""

    def __init__(self, mesh, seq_lens):
        first = mesh.sp_ranks[0]
        self.u_member = mesh.ulysses_ranks.index(mesh.rank)
        self.u_lens = [seq_lens[r - first] for r in mesh.ulysses_ranks]
        # After the Ulysses exchange a ring member holds the tokens of its whole Ulysses group.
        self.ring_lens = [sum(seq_lens[r - first] for r in mesh.ulysses_group_of(member)) for member in mesh.ring_ranks]
        self.ring_member = mesh.ring_ranks.index(mesh.rank)


def sequence_parallel_attention(q, k, v, mesh, layout, local_attention):
    """``layout`` is the call's AttentionLayout. ``local_attention(q, k, v)`` is the single-device kernel for the
    Ulysses-only case, so that it stays exactly the kernel ComfyUI would use."""
    batch, heads, length, dim = q.shape
    # The symmetric exchange's kernels take a power-of-two head size (every FLUX variant: 128); others use NCCL.
    exchange = mesh.ulysses_exchange if mesh.ulysses_exchange is not None and dim & (dim - 1) == 0 else None
    if exchange is not None and mesh.ring_degree == 1:   # Ulysses alone: the exchange runs the whole call
        return exchange.attention(q, k, v, layout.u_lens, local_attention)
    if mesh.ulysses_degree > 1:
        if exchange is not None:
            qkv = exchange.scatter_heads(q, k, v, layout.u_lens)
        else:
            qkv = scatter_heads_gather_sequence(q, k, v, layout.u_lens, mesh.ulysses_group)
        q, k, v = qkv[0], qkv[1], qkv[2]
    if mesh.ring_degree > 1:
        out = ring_attention(q, k, v, layout.ring_lens, mesh.ring_ranks, layout.ring_member).transpose(1, 2)
    else:
        out = local_attention(q, k, v)
    if mesh.ulysses_degree > 1:
        if exchange is not None:
            return exchange.gather_heads(out, layout.u_lens)
        return scatter_sequence_gather_heads(out, layout.u_lens, layout.u_member, mesh.ulysses_group)
    return out.transpose(1, 2).reshape(batch, length, heads * dim)
