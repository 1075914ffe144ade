"""Pre-norm position-wise feed-forward whose forward *and* backward run chunk by chunk.

The chunks run under ``lax.map`` with a ``jax.checkpoint``'d body, so the forward keeps only the
chunk inputs and the backward recomputes one chunk at a time: the [L, d_ff] hidden activation
never exists whole. Dropout keys are derived from (key, chunk index), so the recompute replays
the forward's masks exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnbench.jax_impl.common import derive_key, dropout, layer_norm, linear, uniform_init
from attnbench.spec import FeedForwardSpec

_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


def init_feed_forward(key, d_model: int, spec: FeedForwardSpec, dtype=jnp.float32):
    """Parameters named as torch's FeedForward: norm, w1 [d_ff, d_model], w2 [d_model, d_ff]."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "norm": {"weight": jnp.ones((d_model,), dtype), "bias": jnp.zeros((d_model,), dtype)},
        "w1": {"weight": uniform_init(k1, (spec.d_ff, d_model), d_model, dtype),
               "bias": uniform_init(k2, (spec.d_ff,), d_model, dtype)},
        "w2": {"weight": uniform_init(k3, (d_model, spec.d_ff), spec.d_ff, dtype),
               "bias": uniform_init(k4, (d_model,), spec.d_ff, dtype)},
    }


def _chunk(params, x, key, index, spec: FeedForwardSpec, rate: float):
    chunk_key = None if rate == 0.0 else derive_key(key, index)
    hidden = _ACTIVATIONS[spec.activation](linear(params["w1"], layer_norm(params["norm"], x)))
    hidden = dropout(hidden, rate, chunk_key)
    return dropout(linear(params["w2"], hidden), rate, chunk_key)


def feed_forward(params, x, *, spec: FeedForwardSpec, dropout_rate: float = 0.0, key=None,
                 train: bool = False):
    """LayerNorm -> Linear(d_model, d_ff) -> activation -> dropout -> Linear(d_ff, d_model)
    -> dropout, over ``spec.chunk_len`` positions at a time. x [batch, length, d_model]."""
    rate = dropout_rate if train else 0.0
    if rate > 0.0 and key is None:
        raise ValueError("feed_forward with dropout > 0 in training needs a key")
    length, chunk_len = x.shape[1], spec.chunk_len
    if chunk_len is None or chunk_len >= length:
        return _chunk(params, x, key, 0, spec, rate)
    n_full = length // chunk_len
    body = jax.checkpoint(lambda args: _chunk(params, args[0], key, args[1], spec, rate))
    pieces = jnp.moveaxis(x[:, :n_full * chunk_len].reshape(
        x.shape[0], n_full, chunk_len, x.shape[2]), 1, 0)  # (n_chunks, B, C, d)
    out = jax.lax.map(body, (pieces, jnp.arange(n_full)))
    out = jnp.moveaxis(out, 0, 1).reshape(x.shape[0], n_full * chunk_len, -1)
    if n_full * chunk_len < length:  # a ragged last chunk, as torch's split gives
        tail = body((x[:, n_full * chunk_len:], n_full))
        out = jnp.concatenate([out, tail], axis=1)
    return out
