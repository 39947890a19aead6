"""The process groups of one run: replicas (data parallel, for batch items and CFG branches), each a sequence-
parallel group of Ulysses groups inside ring groups (USP).

Ranks are laid out as yunchang lays them out (``use_ulysses_low``): replica ``i`` is ranks
``[i * sp_degree, (i + 1) * sp_degree)``; inside it a Ulysses group is ``ulysses_degree`` consecutive ranks, so its
all-to-all stays between neighbouring GPUs, and a ring group takes one rank of every Ulysses group. yunchang builds
the Ulysses and ring groups; we add one group per replica and keep the rank lists, which the uneven all-to-all and the
ring's point-to-point transfers need.
"""
from dataclasses import dataclass, field

import torch.distributed as dist


@dataclass
class SequenceParallelMesh:
    rank: int
    world_size: int
    ulysses_degree: int
    ring_degree: int
    ulysses_ranks: list = field(default_factory=list)
    ring_ranks: list = field(default_factory=list)
    sp_ranks: list = field(default_factory=list)
    ulysses_group: object = None
    sp_group: object = None
    ulysses_exchange: object = None  # SymmetricUlysses (or CopyEngineUlysses); None: NCCL's all-to-all (comm.py)

    @property
    def sp_degree(self):
        return self.ulysses_degree * self.ring_degree

    @property
    def sp_rank(self):
        """This rank's place in its sequence-parallel group (the index of its token shard)."""
        return self.rank - self.sp_ranks[0]

    @property
    def replicas(self):
        return self.world_size // self.sp_degree

    @property
    def replica(self):
        return self.rank // self.sp_degree

    def ulysses_group_of(self, rank):
        """The ranks of ``rank``'s Ulysses group (consecutive ranks)."""
        first = rank - rank % self.ulysses_degree
        return list(range(first, first + self.ulysses_degree))

    @classmethod
    def build(cls, ulysses_degree, ring_degree, timeout=None, exchange="nccl", device=None, exchange_parts=1):
        """Collective: every rank of the default group calls this with the same degrees. ``timeout``: the default
        group's (a new group would otherwise get torch's own: 30 min on gloo, 10 on NCCL). ``exchange``:
        "symmetric" and "copy-engine" map the Ulysses group's receive buffers on ``device`` (config.exchange_setting;
        ``exchange_parts``: the copy engine's head parts)."""
        rank, world_size = dist.get_rank(), dist.get_world_size()
        sp_degree = ulysses_degree * ring_degree
        if world_size % sp_degree:
            raise ValueError(f"ulysses_degree {ulysses_degree} x ring_degree {ring_degree} does not divide the "
                             f"{world_size} ranks")
        from yunchang.globals import set_seq_parallel_pg, PROCESS_GROUP
        set_seq_parallel_pg(ulysses_degree, ring_degree, rank, world_size, use_ulysses_low=True)
        first = rank - rank % sp_degree
        sp_group = None
        for replica_first in range(0, world_size, sp_degree):   # every rank creates every group, in order
            group = dist.new_group(list(range(replica_first, replica_first + sp_degree)), timeout=timeout)
            if replica_first == first:
                sp_group = group
        # A group of every rank is the default group itself: one NCCL communicator instead of two or three. After
        # a helper dies, rank 0 aborts its communicators; on 2×H200 (NCCL 2.28.9) aborting one with a stuck kernel
        # returned in 0.5 s, while aborting several stuck ones never returned (docs/benchmarks.md).
        whole = dist.group.WORLD
        mesh = cls(
            rank=rank,
            world_size=world_size,
            ulysses_degree=ulysses_degree,
            ring_degree=ring_degree,
            ring_ranks=list(range(first + rank % ulysses_degree, first + sp_degree, ulysses_degree)),
            sp_ranks=list(range(first, first + sp_degree)),
            ulysses_group=whole if ulysses_degree == world_size else PROCESS_GROUP.ULYSSES_PG,
            sp_group=whole if sp_degree == world_size else sp_group,
        )
        mesh.ulysses_ranks = mesh.ulysses_group_of(rank)
        if exchange == "symmetric":
            from .symmetric import SymmetricUlysses
            mesh.ulysses_exchange = SymmetricUlysses(mesh.ulysses_group, mesh.ulysses_ranks,
                                                     mesh.ulysses_ranks.index(rank), device)
        elif exchange == "copy-engine":
            from .copy_engine import CopyEngineUlysses
            mesh.ulysses_exchange = CopyEngineUlysses(mesh.ulysses_group, mesh.ulysses_ranks,
                                                      mesh.ulysses_ranks.index(rank), device, exchange_parts)
        return mesh
