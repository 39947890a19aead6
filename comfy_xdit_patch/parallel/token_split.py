"""How a token sequence is split across ranks.

Splits are contiguous and as even as possible; the first ``length % parts`` ranks take one token more. Uneven
splits keep every size exact (no padded tokens that would need masking), and every rank derives the same split
from the same length, so no split sizes ever travel.
"""
import torch

from .comm import all_gather_single


def split_sizes(length, parts):
    base, extra = divmod(length, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def take_shard(tensor, sizes, index, dim=1):
    start = sum(sizes[:index])
    return tensor.narrow(dim, start, sizes[index])


def clip_to_shard(tensor, sizes, index, dim=1):
    """The part of ``tensor`` that falls in shard ``index``, for tensors that cover only a prefix of the sequence
    (ControlNet residuals cover the image tokens but not Kontext reference tokens). None when nothing falls there."""
    start = sum(sizes[:index])
    stop = min(start + sizes[index], tensor.shape[dim])
    if stop <= start:
        return None
    return tensor.narrow(dim, start, stop - start)


def gather_shards(local, sizes, rank, group, dim=1):
    """All-gather a sequence split by ``sizes`` back into the full sequence, in rank order."""
    world = len(sizes)
    if world == 1:
        return local
    longest = max(sizes)
    local = local.movedim(dim, 0)
    if local.shape[0] < longest:
        pad = local.new_zeros((longest - local.shape[0],) + tuple(local.shape[1:]))
        local = torch.cat((local, pad))
    gathered = local.new_empty((world * longest,) + tuple(local.shape[1:]))
    all_gather_single(gathered, local.contiguous(), group=group)
    if longest * world != sum(sizes):
        gathered = torch.cat([gathered[i * longest: i * longest + size] for i, size in enumerate(sizes)])
    return gathered.movedim(0, dim)
