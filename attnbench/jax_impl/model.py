"""Language models built from a ModelSpec: the Reformer, the Transformer, and every ablation.

tokens -> embedding + positions -> dropout -> stack -> LayerNorm -> head -> float32 logits.
Reversible stack: input (x, x), blocks y1 = x1 + Attn(x2), y2 = x2 + FF(y1), output
LayerNorm(2 * d_model) over concat(y1, y2). Plain stack: pre-norm residual x += Attn(x);
x += FF(x), then LayerNorm(d_model). Parameter names mirror the torch LanguageModel's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnbench.jax_impl.chunked_ff import feed_forward, init_feed_forward
from attnbench.jax_impl.common import derive_key, dropout, layer_norm, linear, uniform_init
from attnbench.jax_impl.custom_attention import custom_self_attention, init_custom_self_attention
from attnbench.jax_impl.full_attention import (
    full_self_attention,
    init_full_self_attention,
    init_shared_qk_self_attention,
    shared_qk_self_attention,
)
from attnbench.jax_impl.lsh_attention import init_lsh_self_attention, lsh_self_attention
from attnbench.jax_impl.reversible import reversible_sequence
from attnbench.spec import AttentionSpec, ModelSpec

_INIT = {"full": init_full_self_attention, "shared_qk": init_shared_qk_self_attention,
         "lsh": init_lsh_self_attention, "custom": init_custom_self_attention}
_HASH_STREAM, _DROPOUT_STREAM = 0, 1


def _layer_norm_params(width, dtype):
    return {"weight": jnp.ones((width,), dtype), "bias": jnp.zeros((width,), dtype)}


def init_attention_block(key, d_model: int, spec: AttentionSpec, dtype=jnp.float32):
    return {"norm": _layer_norm_params(d_model, dtype),
            "attention": _INIT[spec.kind](key, d_model, spec, dtype)}


def attention_block(params, x, *, spec: AttentionSpec, dropout_rate: float, key, train: bool,
                    buckets=None):
    """LayerNorm -> self-attention -> dropout; ``buckets`` (from an earlier call) replay an LSH
    layer's hashing (None: it hashes afresh). Returns (output, the buckets used: None for a
    layer that does not hash)."""
    h = layer_norm(params["norm"], x)
    if spec.kind == "full":
        h, buckets = full_self_attention(params["attention"], h, spec=spec), None
    else:
        apply = {"lsh": lsh_self_attention, "custom": custom_self_attention}.get(
            spec.kind, shared_qk_self_attention)
        h, buckets = apply(params["attention"], h, spec=spec, key=derive_key(key, _HASH_STREAM),
                           buckets=buckets, return_buckets=True)
    rate = dropout_rate if train else 0.0
    return dropout(h, rate, derive_key(key, _DROPOUT_STREAM) if rate else None), buckets


def init_language_model(key, spec: ModelSpec, dtype=jnp.float32):
    """Parameters of :func:`language_model`, named as the torch LanguageModel's state dict."""
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec={spec!r}: must be a ModelSpec")
    d = spec.d_model
    keys = iter(jax.random.split(key, 2 * spec.n_layers + 6))
    params = {"embed": {"weight": jax.random.normal(next(keys), (spec.vocab_size, d), dtype)}}
    if spec.positions == "learned":
        params["positions"] = {"weight": jax.random.normal(next(keys), (spec.max_len, d), dtype)}
    elif spec.positions == "axial":
        params["positions"] = {"tables": [
            jax.random.normal(next(keys), (n, dim), dtype)
            for n, dim in zip(spec.axial_shape, spec.axial_dims, strict=True)]}
    params["stack"] = {"blocks": [
        {"f": init_attention_block(next(keys), d, spec.attention, dtype),
         "g": init_feed_forward(next(keys), d, spec.feed_forward, dtype)}
        for _ in range(spec.n_layers)]}
    width = 2 * d if spec.reversible else d
    params["norm"] = _layer_norm_params(width, dtype)
    params["head"] = {"bias": uniform_init(next(keys), (spec.vocab_size,), width, dtype)}
    if not spec.tie_embeddings:
        params["head"]["weight"] = uniform_init(next(keys), (spec.vocab_size, width), width, dtype)
    return params


def _axial_positions(tables, shape, length):
    parts = []
    for axis, table in enumerate(tables):
        view = [1] * len(shape) + [table.shape[-1]]
        view[axis] = shape[axis]
        parts.append(jnp.broadcast_to(table.reshape(view), (*shape, table.shape[-1])))
    return jnp.concatenate(parts, -1).reshape(-1, sum(t.shape[-1] for t in tables))[:length]


def check_tokens(tokens, spec: ModelSpec) -> None:
    """The torch model's token checks, before tracing (ids are checked when concrete)."""
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens: must be an integer tensor [batch, length], got "
                         f"{tokens.dtype} {tuple(tokens.shape)}")
    spec.check_length(tokens.shape[1])
    if not isinstance(tokens, jax.core.Tracer) and tokens.size and (
            int(tokens.min()) < 0 or int(tokens.max()) >= spec.vocab_size):
        raise ValueError(f"tokens: ids must lie in [0, vocab_size={spec.vocab_size})")


def language_model(params, tokens, *, spec: ModelSpec, key, train: bool = False,
                   buckets=None, reversible: bool | None = None):
    """tokens [batch, length] (int) -> logits [batch, length, vocab] in float32.

    All randomness (LSH rotations, dropout) derives from ``key``; ``buckets`` (a list with one
    entry per layer) replays given buckets instead of hashing, which cross-framework comparisons
    use; a None entry hashes afresh (and non-LSH layers ignore theirs). ``reversible=False``
    runs a reversible spec's blocks with ordinary autodiff (the memory baseline).
    """
    check_tokens(tokens, spec)
    layer_buckets = [None] * spec.n_layers if buckets is None else list(buckets)
    if len(layer_buckets) != spec.n_layers:
        raise ValueError(f"len(buckets)={len(layer_buckets)}: must equal ModelSpec.n_layers="
                         f"{spec.n_layers}; give None for a layer that hashes afresh")
    keys = jax.random.split(key, spec.n_layers + 1)
    x = params["embed"]["weight"][tokens]
    if spec.positions == "learned":
        x = x + params["positions"]["weight"][: tokens.shape[1]]
    elif spec.positions == "axial":
        x = x + _axial_positions(params["positions"]["tables"], spec.axial_shape,
                                 tokens.shape[1])
    rate = spec.dropout if train else 0.0
    x = dropout(x, rate, keys[-1] if rate else None)

    def attend(block_params, h, block_key, block_buckets):
        return attention_block(block_params, h, spec=spec.attention, dropout_rate=spec.dropout,
                               key=block_key, train=train, buckets=block_buckets)

    def ff(block_params, h, block_key):
        return feed_forward(block_params, h, spec=spec.feed_forward, dropout_rate=spec.dropout,
                            key=block_key, train=train)

    blocks = params["stack"]["blocks"]
    if spec.reversible:
        y1, y2 = reversible_sequence(attend, ff, blocks, x, x, keys=list(keys[:-1]),
                                     buckets=layer_buckets,
                                     reversible=True if reversible is None else reversible)
        x = jnp.concatenate([y1, y2], -1)
    else:
        for index, block in enumerate(blocks):
            x = x + attend(block["f"], x, derive_key(keys[index], 0), layer_buckets[index])[0]
            x = x + ff(block["g"], x, derive_key(keys[index], 1))
    head = dict(params["head"])
    if spec.tie_embeddings:
        head["weight"] = params["embed"]["weight"]
    return linear(head, layer_norm(params["norm"], x)).astype(jnp.float32)

