"""A registered attention function (:func:`attnbench.variants.register_attention`) as a
self-attention layer, with the same projections around it as the built-in layers, so times
compare. Mirrors :mod:`attnbench.torch_impl.custom_attention`.

Where it shares the query-key projection (:func:`~attnbench.variants.shares_qk`: as the
attention was registered, or always in a task's models) the layer has the Reformer's ``w_qk``
(and ``k = q`` is passed), otherwise separate ``w_q``, ``w_k``; both have ``w_v`` and ``w_out``.
The function's output is checked against the contract (shaped and typed like ``v``):
anything else is an :class:`~attnbench.variants.AttentionContractError` naming the attention
and what it returned.
"""

from __future__ import annotations

import jax.numpy as jnp

from attnbench.jax_impl.common import linear
from attnbench.jax_impl.full_attention import (
    _check_input,
    _init_projections,
    _merge_heads,
    _split_heads,
)
from attnbench.spec import AttentionSpec
from attnbench.variants import case_keywords, check_attention_output, get_attention, shares_qk

FRAMEWORK = "jax"


def attend(spec: AttentionSpec, q, k, v, *, key):
    """The registered function on [batch, heads, length, d] arrays, its output checked."""
    attention = get_attention(spec.custom)
    fn = attention.function(FRAMEWORK)
    out = fn(q, k, v, causal=spec.causal, key=key, **case_keywords(fn, spec))
    check_attention_output(attention.name, out, v)
    return out


def init_custom_self_attention(key, d_model: int, spec: AttentionSpec, dtype=jnp.float32):
    """Parameters of :func:`custom_self_attention` (names as torch's CustomSelfAttention)."""
    spec.check_d_model(d_model)
    if spec.kind != "custom":
        raise ValueError(f"AttentionSpec.kind={spec.kind!r}: custom_self_attention needs "
                         "'custom'")
    names = ("w_qk", "w_v") if shares_qk(spec) else ("w_q", "w_k", "w_v")
    return _init_projections(key, d_model, ("w_out", *names), dtype)


def custom_self_attention(params, x, *, spec: AttentionSpec, key=None, buckets=None,
                          return_buckets: bool = False):
    """x [batch, length, d_model] -> same; ``key`` is the function's only source of
    randomness (a model derives it from the block's key, so a reversible stack replays it);
    ``buckets`` is accepted for the uniform layer interface and unused."""
    d_model = params["w_v"]["weight"].shape[0]
    _check_input(x, d_model, spec)
    if "w_qk" in params:
        q = k = _split_heads(linear(params["w_qk"], x), spec.n_heads)
    else:
        q, k = (_split_heads(linear(params[n], x), spec.n_heads) for n in ("w_q", "w_k"))
    out = attend(spec, q, k, _split_heads(linear(params["w_v"], x), spec.n_heads), key=key)
    out = linear(params["w_out"], _merge_heads(out))
    return (out, None) if return_buckets else out
