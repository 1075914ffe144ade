"""Exact attention baselines: full attention (naive and fused) and shared-QK attention.

Shapes: q, k, qk [batch, heads, length, d_head]; v [batch, heads, length, d_v].
Logits, masks and softmax run in float32 whatever the activation dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.spec import AttentionSpec
from attnbench.torch_impl.common import (
    MASK_VALUE,
    SELF_MASK_VALUE,
    check_qkv,
    logits_dtype,
    normalize_keys,
)


def fused_kernel(dtype: torch.dtype, device_type: str) -> str:
    """The SDPA kernel ``impl='fused'`` runs: on CUDA FlashAttention for 16-bit inputs and the
    memory-efficient kernel for float32 (flash has no float32), pinned so torch cannot pick
    another; on the CPU torch's own fused CPU kernel."""
    if device_type != "cuda":
        return "cpu"
    return "flash" if dtype in (torch.bfloat16, torch.float16) else "efficient"


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                   impl: str = "naive") -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V. ``naive`` materialises the L x L matrix; ``fused`` calls
    ``scaled_dot_product_attention`` with the kernel :func:`fused_kernel` names (on CUDA a
    kernel that cannot take the call is an error, not another kernel)."""
    check_qkv({"q": q, "k": k}, same_d=True)
    check_qkv({"q": q, "v": v}, same_d=False)
    if impl == "fused":
        kernel = fused_kernel(q.dtype, q.device.type)
        if kernel == "cpu":
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION}[kernel]
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if impl != "naive":
        raise ValueError(f"impl={impl!r}: must be 'naive' or 'fused'")
    dtype = logits_dtype(q)
    logits = q.to(dtype) @ k.to(dtype).transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, L, L)
    if causal:
        length = q.shape[2]
        future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu_(1)
        logits = logits.masked_fill(future, MASK_VALUE)
    return torch.softmax(logits, -1).to(v.dtype) @ v


def shared_qk_probabilities(qk: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """The attention probabilities [B, H, L, L] of :func:`shared_qk_attention`, in the logits
    dtype: logits q . k_hat (keys = normalised queries, no further scaling), a query's logit on
    itself replaced by -1e5, causally masked ones by -1e9, softmax over keys. The one place the
    shared-QK masking lives: the attention and the approximation's recall both use it."""
    length = qk.shape[2]
    logits = qk.to(logits_dtype(qk)) @ normalize_keys(qk).transpose(-1, -2)  # (B, H, L, L)
    eye = torch.eye(length, dtype=torch.bool, device=qk.device)
    logits = logits.masked_fill(eye, SELF_MASK_VALUE)
    if causal:
        future = torch.ones(length, length, dtype=torch.bool, device=qk.device).triu_(1)
        logits = logits.masked_fill(future, MASK_VALUE)
    return torch.softmax(logits, -1)


def shared_qk_attention(qk: torch.Tensor, v: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """Exact attention with keys = normalised queries: :func:`shared_qk_probabilities` times
    ``v`` (a query's logit on itself replaced by -1e5, causally masked ones by -1e9)."""
    check_qkv({"qk": qk, "v": v}, same_d=False)
    return shared_qk_probabilities(qk, causal=causal).to(v.dtype) @ v


class _SelfAttentionBase(nn.Module):
    """Projections shared by every attention layer; subclasses define ``attend``."""

    def __init__(self, d_model: int, spec: AttentionSpec, *, device=None, dtype=None):
        super().__init__()
        self.spec = spec
        self.d_head = spec.check_d_model(d_model)
        self.n_heads = spec.n_heads
        factory = {"device": device, "dtype": dtype}
        self.w_out = nn.Linear(d_model, d_model, bias=False, **factory)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, L, dh)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(batch, length, -1)  # (B, L, H*dh)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.n_heads * self.d_head:
            raise ValueError(f"x.shape={tuple(x.shape)}: must be [batch, length, "
                             f"d_model={self.n_heads * self.d_head}]")
        self.spec.check_length(x.shape[1])


class FullSelfAttention(_SelfAttentionBase):
    """Standard multi-head self-attention with separate Q, K, V projections."""

    def __init__(self, d_model: int, spec: AttentionSpec, *, device=None, dtype=None):
        super().__init__(d_model, spec, device=device, dtype=dtype)
        if spec.kind != "full":
            raise ValueError(f"AttentionSpec.kind={spec.kind!r}: FullSelfAttention needs 'full'")
        factory = {"device": device, "dtype": dtype}
        self.w_q = nn.Linear(d_model, d_model, bias=False, **factory)
        self.w_k = nn.Linear(d_model, d_model, bias=False, **factory)
        self.w_v = nn.Linear(d_model, d_model, bias=False, **factory)

    def forward(self, x: torch.Tensor, *, generator=None, buckets=None) -> torch.Tensor:
        """x [batch, length, d_model] -> [batch, length, d_model]. ``generator`` and
        ``buckets`` are accepted for a uniform layer interface and unused."""
        self._check_input(x)
        q, k, v = (self._split_heads(w(x)) for w in (self.w_q, self.w_k, self.w_v))
        out = full_attention(q, k, v, causal=self.spec.causal, impl=self.spec.impl)
        return self.w_out(self._merge_heads(out))


class SharedQKSelfAttention(_SelfAttentionBase):
    """Exact shared-QK attention; same parameters as :class:`LSHSelfAttention`, so a model
    trained with one can be evaluated with the other (the paper's Table 2)."""

    def __init__(self, d_model: int, spec: AttentionSpec, *, device=None, dtype=None):
        super().__init__(d_model, spec, device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        self.w_qk = nn.Linear(d_model, d_model, bias=False, **factory)
        self.w_v = nn.Linear(d_model, d_model, bias=False, **factory)

    def attend(self, qk, v, *, generator, buckets):
        """Returns (out, buckets); exact attention has no buckets."""
        return shared_qk_attention(qk, v, causal=self.spec.causal), None

    def forward(self, x: torch.Tensor, *, generator=None, buckets=None,
                return_buckets: bool = False):
        """x [batch, length, d_model] -> [batch, length, d_model] (and the buckets used, for
        LSH, when ``return_buckets``)."""
        self._check_input(x)
        qk, v = self._split_heads(self.w_qk(x)), self._split_heads(self.w_v(x))
        out, used = self.attend(qk, v, generator=generator, buckets=buckets)
        out = self.w_out(self._merge_heads(out))
        return (out, used) if return_buckets else out
