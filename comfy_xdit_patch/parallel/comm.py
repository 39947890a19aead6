"""Collectives of sequence parallelism, with uneven sequence lengths per rank. They know nothing of attention."""
import torch
import torch.distributed as dist

# torch 2.14 renamed all_gather_into_tensor (kept as a deprecated alias); the GPU image has torch 2.11.
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def scatter_heads_gather_sequence(q, k, v, seq_lens, group):
    """Ulysses forward all-to-all for q, k and v at once.

    q, k, v are (B, H, L_local, D); ``seq_lens`` holds L of every member of ``group`` in group order. Returns
    (3, B, H / n, sum(seq_lens), D): this rank's share of the heads over the group's whole sequence.
    """
    n = len(seq_lens)
    batch, heads, length, dim = q.shape
    local_heads = heads // n
    # One copy per tensor, straight into the send layout (destination rank first).
    send = q.new_empty((n, 3, batch, local_heads, length, dim))
    for i, t in enumerate((q, k, v)):
        send[:, i].copy_(t.view(batch, n, local_heads, length, dim).transpose(0, 1))
    chunk = (3, batch, local_heads)
    if len(set(seq_lens)) == 1:
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        return recv.permute(1, 2, 3, 0, 4, 5).reshape(*chunk, n * length, dim)
    numel = [3 * batch * local_heads * size * dim for size in seq_lens]
    recv = send.new_empty(sum(numel))
    dist.all_to_all_single(recv, send.view(-1), output_split_sizes=numel, input_split_sizes=[send[0].numel()] * n,
                           group=group)
    parts = [part.view(*chunk, size, dim) for part, size in zip(recv.split(numel), seq_lens)]
    return torch.cat(parts, dim=3)


def scatter_sequence_gather_heads(out, seq_lens, member, group):
    """Ulysses backward all-to-all: (B, H / n, sum(seq_lens), D) -> (B, L_member, H * D), tokens-major as the
    attention output that ComfyUI's blocks expect."""
    n = len(seq_lens)
    batch, local_heads, _, dim = out.shape
    length = seq_lens[member]
    if len(set(seq_lens)) == 1:
        send = out.reshape(batch, local_heads, n, length, dim).permute(2, 0, 1, 3, 4).contiguous()
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
    else:
        send = torch.cat([part.reshape(-1) for part in out.split(seq_lens, dim=2)])
        numel_in = [batch * local_heads * size * dim for size in seq_lens]
        recv = out.new_empty((n, batch, local_heads, length, dim))
        dist.all_to_all_single(recv.view(-1), send, output_split_sizes=[recv[0].numel()] * n,
                               input_split_sizes=numel_in, group=group)
    return recv.permute(1, 3, 0, 2, 4).reshape(batch, length, n * local_heads * dim)


class RingExchange:
    """Passes blocks to the next rank of a ring while receiving the previous rank's, asynchronously."""

    def __init__(self, ring_ranks, member):
        size = len(ring_ranks)
        self.next = ring_ranks[(member + 1) % size]
        self.previous = ring_ranks[(member - 1) % size]
        self.pending = []

    def start(self, blocks, recv_length, dim=2):
        """Sends every tensor of ``blocks``; returns empty tensors shaped like them with ``recv_length`` along
        ``dim``, filled once ``wait`` returns."""
        received = []
        ops = []
        for block in blocks:
            shape = list(block.shape)
            shape[dim] = recv_length
            incoming = block.new_empty(shape)
            received.append(incoming)
            ops += [dist.P2POp(dist.isend, block, self.next), dist.P2POp(dist.irecv, incoming, self.previous)]
        self.pending = dist.batch_isend_irecv(ops)
        return received

    def wait(self):
        for request in self.pending:
            request.wait()
        self.pending = []
