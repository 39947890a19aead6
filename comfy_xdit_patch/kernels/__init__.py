"""Attention kernels that also return the log-sum-exp, and the exact merge of partial attention results."""
from .attention_lse import attention_with_lse, merge_partial_attention

__all__ = ["attention_with_lse", "merge_partial_attention"]
