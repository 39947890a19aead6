"""Placing batch rows (batch items, CFG branches) on sequence-parallel groups, and sizing token shards by speed.

With G ranks and groups of d, there are G/d groups. A model call of batch B is split by rows: each group samples
its rows sequence-parallel, and the rows are gathered back on rank 0 in their original order.

Strategies (``ParallelPlan.scheduling``):
- ``round_robin``: row i goes to group i mod G/d.
- ``least_loaded``: each row goes to the group that would finish it first, given its measured speed and the rows it
  already has (with equal speeds: an even, contiguous split).
- ``weighted_round_robin``: smooth weighted round robin by the groups' measured speeds; inside a group the tokens are
  split in proportion to each rank's speed.
- ``adaptive``: as weighted, with speeds re-measured from the step times of every sampling run.
Every group gets its rows in ascending order; group 0 (rank 0's) always gets at least one row.

``Scheduler`` makes rank 0's decisions for one helper group by the plan's strategy, from the speeds each rank
measured at start (``measure_speed``) and, for ``adaptive``, the step times of every sampling run.
"""
import collections
import math
import time

import torch

from .comm import all_gather_single


def assign_rows(batch, speeds, strategy):
    """``speeds``: one positive number per group. Returns a list of row lists, one per group."""
    groups = len(speeds)
    rows = [[] for _ in range(groups)]
    if strategy == "round_robin":
        for row in range(batch):
            rows[row % groups].append(row)
    elif strategy == "least_loaded":
        for row in range(batch):
            finish = [(len(rows[g]) + 1) / speeds[g] for g in range(groups)]
            rows[finish.index(min(finish))].append(row)
    elif strategy in ("weighted_round_robin", "adaptive"):
        current = [0.0] * groups
        total = sum(speeds)
        for row in range(batch):
            current = [c + s for c, s in zip(current, speeds)]
            chosen = current.index(max(current))
            current[chosen] -= total
            rows[chosen].append(row)
    else:
        raise ValueError(f"unknown scheduling '{strategy}'")
    if batch and not rows[0]:            # rank 0 must hold rows: its output defines the gathered layout
        donor = max(range(groups), key=lambda g: len(rows[g]))
        rows[0].append(rows[donor].pop(0))
    return [sorted(r) for r in rows]


def weighted_split(length, weights):
    """Split ``length`` tokens in proportion to ``weights`` (largest remainder), every part as exact integers."""
    total = sum(weights)
    exact = [length * w / total for w in weights]
    sizes = [int(e) for e in exact]
    for index in sorted(range(len(weights)), key=lambda i: exact[i] - sizes[i], reverse=True)[:length - sum(sizes)]:
        sizes[index] += 1
    return sizes


def take_rows(obj, rows, batch):
    """``obj`` with every tensor whose first dimension is the batch cut down to ``rows``."""
    if isinstance(obj, torch.Tensor):
        if obj.ndim and obj.shape[0] == batch:
            return obj[torch.as_tensor(rows, device=obj.device)] if rows != list(range(batch)) else obj
        return obj
    if isinstance(obj, dict):
        return {k: take_rows(v, rows, batch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(take_rows(v, rows, batch) for v in obj)
    return obj


def run_placed(forward, call_args, placement, mesh, device, group_times=None):
    """Runs one model call under a placement, on every rank alike: this rank's group samples its rows (``forward
    (args, token_weights)``), then the rows of all groups are gathered. Without a placement: ``forward`` as is.
    ``placement``: (rows per group, token weights per group, the shape of one output row); a group without rows
    learns the other groups' output size from that shape, so no rank waits on another's to size the gather.
    ``group_times`` receives this group's own time for its rows (ms, before the gather waits for the others)."""
    if placement is None:
        return forward(call_args, None)
    rows, token_weights, row_shape = placement
    batch = call_args["x"].shape[0]
    mine = rows[mesh.replica]
    weights = token_weights[mesh.replica] if token_weights else None
    local = None
    if mine:
        started = time.perf_counter()
        local = forward(take_rows(call_args, mine, batch), weights)
        if group_times is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            group_times.append((time.perf_counter() - started) * 1e3)
    if local is not None and tuple(local.shape[1:]) != tuple(row_shape):
        raise RuntimeError(f"the model's output rows have shape {tuple(local.shape[1:])}, not the {tuple(row_shape)} "
                           "the placement expected")
    return gather_rows(local, rows, mesh, device, call_args["x"].dtype, tuple(row_shape))


def gather_rows(local, rows, mesh, device, dtype, row_shape):
    """All ranks: every group's output rows back together, in the original batch order (used on rank 0).
    ``local`` is this rank's group output (None for a group without rows). The sizes come from the placement, not
    from a collective: no host synchronisation, so rank 0 stays paced and can notice a failed helper."""
    if mesh.replicas == 1:
        return local
    world = mesh.world_size
    row_numel = math.prod(row_shape)
    longest = max(len(group_rows) for group_rows in rows) * row_numel
    flat = torch.zeros(longest, dtype=dtype, device=device)
    if local is not None:
        flat[:local.numel()] = local.reshape(-1).to(dtype)
    gathered = flat.new_empty(world * longest)
    all_gather_single(gathered, flat)
    if local is None:
        return None
    batch = sum(len(r) for r in rows)
    out = local.new_empty((batch,) + tuple(row_shape))
    for group, group_rows in enumerate(rows):
        if group_rows:
            leader = group * mesh.sp_degree
            part = gathered[leader * longest: leader * longest + len(group_rows) * row_numel]
            out[torch.as_tensor(group_rows, device=out.device)] = part.view((len(group_rows),) + tuple(row_shape))
    return out


class Scheduler:
    def __init__(self, plan, rank_speeds):
        self.plan = plan
        self.rank_speeds = rank_speeds    # measured at start (TFLOP/s per rank)
        self.group_speeds = None          # rows per second per group, learnt by the adaptive strategy
        self.group_ms = collections.deque(maxlen=200)   # rank 0's group, its own rows only
        self.last_rows = None

    def placement(self, batch):
        """Rows of a call of ``batch`` per group, and per-group token weights, by the plan's scheduling."""
        strategy, sp = self.plan.scheduling, self.plan.sp_degree
        weighted = strategy in ("weighted_round_robin", "adaptive")
        by_group = [self.rank_speeds[g * sp:(g + 1) * sp] for g in range(self.plan.replicas)]
        if self.plan.replicas == 1 and not (weighted and len(set(self.rank_speeds)) > 1):
            return None   # one group of equal GPUs: the plain even split
        if strategy == "adaptive" and self.group_speeds:
            speeds = self.group_speeds
        elif weighted:
            speeds = [sum(s) for s in by_group]          # tokens split by speed: the group works at its total
        else:
            speeds = [min(s) * sp for s in by_group]      # even tokens: the slowest rank sets the pace
        rows = assign_rows(batch, speeds, strategy)
        self.last_rows = rows
        return rows, (by_group if weighted else None)

    def place(self, x, out_channels):
        """``placement`` for a call of latent ``x`` whose output rows have ``out_channels`` channels (a latent with
        concatenated conditioning channels, an inpainting model's, is wider than the model's output), or None."""
        placed = self.placement(x.shape[0])
        return None if placed is None else placed + ((out_channels,) + tuple(x.shape[2:]),)

    def learn(self, helper_report):
        """adaptive: rows per second each group managed in the last sampling run, from its leader's own times."""
        try:
            self._learn(helper_report)
        finally:
            self.group_ms.clear()

    def _learn(self, helper_report):
        if self.plan.replicas == 1 or not self.last_rows:
            return
        speeds = []
        for group, rows in enumerate(self.last_rows):
            leader = group * self.plan.sp_degree
            times = list(self.group_ms) if leader == 0 else helper_report.get(leader, {}).get("group_ms", [])
            if not rows or not times:
                return
            speeds.append(len(rows) / (sorted(times)[len(times) // 2] / 1e3))
        previous = self.group_speeds or speeds
        self.group_speeds = [0.5 * old + 0.5 * new for old, new in zip(previous, speeds)]


def measure_speed(device, rank):
    """Matrix-multiply throughput of ``device`` in TFLOP/s (a fraction of a second)."""
    size, repeats = (4096, 20) if device.type == "cuda" else (256, 5)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12
