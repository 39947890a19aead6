"""The process groups of one sequence-parallel run: Ulysses groups inside ring groups (USP).

Ranks are laid out as yunchang lays them out (``use_ulysses_low``): a Ulysses group is ``ulysses_degree``
consecutive ranks, so its all-to-all stays between neighbouring GPUs; a ring group takes one rank of every Ulysses
group. yunchang builds the groups; we keep the rank lists beside them because the uneven all-to-all and the ring's
point-to-point transfers need them.
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
    ulysses_group: object = None
    ring_group: object = None

    def ulysses_group_of(self, rank):
        """The ranks of ``rank``'s Ulysses group (consecutive ranks)."""
        first = rank - rank % self.ulysses_degree
        return list(range(first, first + self.ulysses_degree))

    @classmethod
    def build(cls, ulysses_degree, ring_degree):
        """Collective: every rank of the default group calls this with the same degrees."""
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if ulysses_degree * ring_degree != world_size:
            raise ValueError(f"ulysses_degree {ulysses_degree} x ring_degree {ring_degree} != {world_size} ranks")
        from yunchang.globals import set_seq_parallel_pg, PROCESS_GROUP
        set_seq_parallel_pg(ulysses_degree, ring_degree, rank, world_size, use_ulysses_low=True)
        mesh = cls(
            rank=rank,
            world_size=world_size,
            ulysses_degree=ulysses_degree,
            ring_degree=ring_degree,
            ring_ranks=list(range(rank % ulysses_degree, world_size, ulysses_degree)),
            ulysses_group=PROCESS_GROUP.ULYSSES_PG,
            ring_group=PROCESS_GROUP.RING_PG,
        )
        mesh.ulysses_ranks = mesh.ulysses_group_of(rank)
        return mesh
