"""Local attention: blocked sliding-window attention, the baseline LSH attention must beat.

The length is cut into chunks of ``chunk_len`` positions; each query attends, with exact
softmax attention, to the keys of its own chunk and of the chunk before it (the first chunk has
none before it: no wrap-around), and under ``causal`` only to keys at or before its position.
If LSH does no better than this window, locality and not hashing is doing the work.

Reads top to bottom as the algorithm, in the order of the JAX file: reshape into chunks,
concatenate each chunk's keys and values with the previous chunk's, one batched matmul per
chunk, masks by replacement (MASK_VALUE, as every attention: docs/architecture.md §2), softmax,
one batched matmul with the values. Logits and probabilities are [B, H, n_chunks, C, 2C]:
memory O(L * 2C), never the L x L matrix. Shapes: q, k [B, H, L, dh], v [B, H, L, dv]. Logits,
masks and softmax run in float32, or float64 for float64 inputs.
"""

from __future__ import annotations

import math

import torch

from attnbench.checks import check_local_args
from attnbench.torch_impl.common import MASK_VALUE, check_qkv, logits_dtype


def split_chunks(x: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """[B, H, L, d] -> [B, H, n_chunks, chunk_len, d]."""
    batch, heads, length, d = x.shape
    return x.reshape(batch, heads, length // chunk_len, chunk_len, d)


def look_one_back(x: torch.Tensor) -> torch.Tensor:
    """[B, H, n, C, d] -> [B, H, n, 2C, d]: each chunk after the chunk before it (zeros before
    the first chunk; :func:`window_mask` removes them)."""
    before = torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, :-1]], dim=2)
    return torch.cat([before, x], dim=3)


def window_mask(n_chunks: int, chunk_len: int, *, causal: bool, device) -> torch.Tensor:
    """bool [n, C, 2C], True where a logit is replaced: query i of chunk c sees window slot s,
    the key at position ``(c - 1) * C + s``; slots before position 0 (the first chunk's) are
    masked, and under ``causal`` the keys after the query (``s - C > i``)."""
    query = torch.arange(chunk_len, device=device)[:, None]
    slot = torch.arange(2 * chunk_len, device=device)[None, :]
    chunk = torch.arange(n_chunks, device=device)[:, None, None]
    masked = (chunk == 0) & (slot < chunk_len)
    if causal:
        masked = masked | (slot - chunk_len > query)
    return masked


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                    generator: torch.Generator | None = None,
                    chunk_len: int = 64) -> torch.Tensor:
    """Blocked sliding-window attention: softmax(Q K^T / sqrt(d_head)) V over each query's own
    chunk and the one before it. ``generator`` is accepted for the attention contract
    (``attnbench.variants.Attention``) and unused: the function is deterministic. Returns
    [B, H, L, dv] in ``v``'s dtype, on its device."""
    check_qkv({"q": q, "k": k}, same_d=True)
    check_qkv({"q": q, "v": v}, same_d=False)
    batch, heads, length, d_head = q.shape
    check_local_args(length, chunk_len)
    n_chunks = length // chunk_len
    dtype = logits_dtype(q)
    cq = split_chunks(q.to(dtype), chunk_len)  # (B, H, n, C, dh)
    ck = look_one_back(split_chunks(k.to(dtype), chunk_len))  # (B, H, n, 2C, dh)
    cv = look_one_back(split_chunks(v, chunk_len))  # (B, H, n, 2C, dv)
    logits = cq @ ck.transpose(-1, -2) / math.sqrt(d_head)  # (B, H, n, C, 2C)
    logits = logits.masked_fill(window_mask(n_chunks, chunk_len, causal=causal,
                                            device=q.device), MASK_VALUE)
    out = torch.softmax(logits, -1).to(v.dtype) @ cv  # (B, H, n, C, dv)
    return out.reshape(batch, heads, length, v.shape[-1])
