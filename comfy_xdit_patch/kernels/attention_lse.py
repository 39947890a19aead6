"""Scaled dot-product attention that returns its log-sum-exp, without flash-attn.

Ring attention computes attention block by block and merges the partial results through their log-sum-exp (LSE).
PyTorch's public ``scaled_dot_product_attention`` does not return the LSE, but the aten kernels behind it do:
flash and memory-efficient attention on CUDA, and the flash kernel for CPU. The LSE is always kept in fp32; the merge
runs in fp32 as well (yunchang casts the LSE to the input dtype, which doubles the ring error in bf16).
"""
import torch

_aten = torch.ops.aten


def attention_with_lse(q, k, v):
    """Attention over (B, H, L, D) tensors. Returns ``(out (B, H, Lq, D) in q.dtype, lse (B, H, Lq) in fp32)``."""
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16):
            out, lse = _aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)[:2]
        else:
            out, lse = _aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    else:
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    # The memory-efficient kernel may pad the LSE's query dimension (to a multiple of 32); flash kernels never do.
    return out, lse[..., :q.shape[-2]].float()


def merge_partial_attention(out, lse, block_out, block_lse):
    """Fold one block's partial attention into a running fp32 result; returns the new ``(out, lse)``.

    ``block_out`` is (B, H, L, D) as the kernels return it; the running ``out`` is kept token-major (B, L, H, D) in
    fp32 (the kernels' physical layout, so no transpose copy is made) and ``lse`` as fp32 (B, L, H, 1).
    Written with sigmoid/logsigmoid so that neither exponent can overflow.
    """
    block_out = block_out.transpose(1, 2)
    block_lse = block_lse.transpose(1, 2).unsqueeze(-1)
    if out is None:
        return block_out.float(), block_lse
    out = torch.lerp(out, block_out.float(), torch.sigmoid(block_lse - lse))
    lse = lse - torch.nn.functional.logsigmoid(lse - block_lse)
    return out, lse
