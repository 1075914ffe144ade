"""Exact attention baselines: full attention (naive and fused) and shared-QK attention.

Shapes: q, k, qk [batch, heads, length, d_head]; v [batch, heads, length, d_v].
Logits, masks and softmax run in float32 whatever the activation dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from attnbench.jax_impl.common import (
    MASK_VALUE,
    SELF_MASK_VALUE,
    check_qkv,
    einsum,
    linear,
    logits_dtype,
    normalize_keys,
    uniform_init,
)
from attnbench.spec import AttentionSpec


def fused_kernel(dtype, platform: str) -> str:
    """The ``jax.nn.dot_product_attention`` implementation ``impl='fused'`` runs: cuDNN's
    fused (flash) attention on a GPU for 16-bit inputs (it has no float32), else XLA's."""
    if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


def full_attention(q, k, v, *, causal: bool, impl: str = "naive"):
    """softmax(Q K^T / sqrt(d)) V. ``naive`` materialises the L x L matrix; ``fused`` calls
    ``jax.nn.dot_product_attention`` with the implementation :func:`fused_kernel` names (by the
    default backend; an implementation that cannot take the call is an error)."""
    check_qkv({"q": q, "k": k}, same_d=True)
    check_qkv({"q": q, "v": v}, same_d=False)
    if impl == "fused":
        if v.shape[-1] != q.shape[-1]:
            raise ValueError(f"v.shape={tuple(v.shape)}: impl='fused' needs d_v == d_head "
                             f"({q.shape[-1]}); jax.nn.dot_product_attention requires it")

        def heads_last(x):
            return jnp.swapaxes(x, 1, 2)  # (B, L, H, d)
        out = jax.nn.dot_product_attention(heads_last(q), heads_last(k), heads_last(v),
                                           is_causal=causal,
                                           implementation=fused_kernel(q.dtype,
                                                                       jax.default_backend()))
        return heads_last(out)
    if impl != "naive":
        raise ValueError(f"impl={impl!r}: must be 'naive' or 'fused'")
    dtype = logits_dtype(q)
    logits = einsum("bhid,bhjd->bhij", q.astype(dtype), k.astype(dtype)) / math.sqrt(q.shape[-1])
    if causal:
        length = q.shape[2]
        future = jnp.triu(jnp.ones((length, length), dtype=bool), 1)
        logits = jnp.where(future, MASK_VALUE, logits)
    return einsum("bhij,bhjd->bhid", jax.nn.softmax(logits, -1).astype(v.dtype), v)


def shared_qk_probabilities(qk, *, causal: bool):
    """The attention probabilities [B, H, L, L] of :func:`shared_qk_attention`, in the logits
    dtype: logits q . k_hat (keys = normalised queries, no further scaling), a query's logit on
    itself replaced by -1e5, causally masked ones by -1e9, softmax over keys. The one place the
    shared-QK masking lives: the attention and the approximation's recall both use it."""
    length = qk.shape[2]
    logits = einsum("bhid,bhjd->bhij", qk.astype(logits_dtype(qk)), normalize_keys(qk))
    logits = jnp.where(jnp.eye(length, dtype=bool), SELF_MASK_VALUE, logits)
    if causal:
        future = jnp.triu(jnp.ones((length, length), dtype=bool), 1)
        logits = jnp.where(future, MASK_VALUE, logits)
    return jax.nn.softmax(logits, -1)


def shared_qk_attention(qk, v, *, causal: bool):
    """Exact attention with keys = normalised queries: :func:`shared_qk_probabilities` times
    ``v`` (a query's logit on itself replaced by -1e5, causally masked ones by -1e9)."""
    check_qkv({"qk": qk, "v": v}, same_d=False)
    return einsum("bhij,bhjd->bhid", shared_qk_probabilities(qk, causal=causal).astype(v.dtype),
                  v)


def _split_heads(x, n_heads):
    batch, length, d_model = x.shape
    return jnp.swapaxes(x.reshape(batch, length, n_heads, d_model // n_heads), 1, 2)


def _merge_heads(x):
    batch, _, length, _ = x.shape
    return jnp.swapaxes(x, 1, 2).reshape(batch, length, -1)  # (B, L, H*dh)


def _check_input(x, d_model, spec: AttentionSpec):
    if x.ndim != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x.shape={tuple(x.shape)}: must be [batch, length, d_model={d_model}]")
    spec.check_length(x.shape[1])


def _init_projections(key, d_model, names, dtype):
    keys = jax.random.split(key, len(names))
    return {name: {"weight": uniform_init(k, (d_model, d_model), d_model, dtype)}
            for name, k in zip(names, keys, strict=True)}


def init_full_self_attention(key, d_model: int, spec: AttentionSpec, dtype=jnp.float32):
    """Parameters of :func:`full_self_attention` (names as torch's FullSelfAttention)."""
    spec.check_d_model(d_model)
    if spec.kind != "full":
        raise ValueError(f"AttentionSpec.kind={spec.kind!r}: full_self_attention needs 'full'")
    return _init_projections(key, d_model, ("w_out", "w_q", "w_k", "w_v"), dtype)


def full_self_attention(params, x, *, spec: AttentionSpec, key=None, buckets=None):
    """x [batch, length, d_model] -> same; ``key`` and ``buckets`` are unused."""
    d_model = params["w_q"]["weight"].shape[0]
    _check_input(x, d_model, spec)
    q, k, v = (_split_heads(linear(params[n], x), spec.n_heads) for n in ("w_q", "w_k", "w_v"))
    out = full_attention(q, k, v, causal=spec.causal, impl=spec.impl)
    return linear(params["w_out"], _merge_heads(out))


def init_shared_qk_self_attention(key, d_model: int, spec: AttentionSpec, dtype=jnp.float32):
    """Parameters of shared-QK and LSH self-attention (the same names, so a model trained with
    one evaluates with the other)."""
    spec.check_d_model(d_model)
    return _init_projections(key, d_model, ("w_out", "w_qk", "w_v"), dtype)


def shared_qk_self_attention(params, x, *, spec: AttentionSpec, key=None, buckets=None,
                             return_buckets: bool = False, attend=None):
    """x [batch, length, d_model] -> same (and the buckets used, for LSH, when
    ``return_buckets``). ``attend(qk, v, key, buckets) -> (out, buckets)`` picks the attention."""
    d_model = params["w_qk"]["weight"].shape[0]
    _check_input(x, d_model, spec)
    qk = _split_heads(linear(params["w_qk"], x), spec.n_heads)
    v = _split_heads(linear(params["w_v"], x), spec.n_heads)
    if attend is None:
        out, used = shared_qk_attention(qk, v, causal=spec.causal), None
    else:
        out, used = attend(qk, v, key, buckets)
    out = linear(params["w_out"], _merge_heads(out))
    return (out, used) if return_buckets else out
