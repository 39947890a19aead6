"""Rank 0's placement decisions for one helper group: which rows of each call go to which sequence-parallel group,
and how each group's tokens are weighted, by the plan's scheduling strategy (parallel/placement.py has the rules)."""
import collections

from ..parallel.placement import assign_rows


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
