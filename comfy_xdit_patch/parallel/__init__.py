"""Sequence parallelism: how tokens are split, the process groups, the collectives and the parallel attention."""
