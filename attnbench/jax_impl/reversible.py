"""The reversible residual stack (RevNet) through ``jax.custom_vjp``: activations are
reconstructed, not stored.

Block: ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``. The forward saves only the stack's outputs,
the per-layer keys and each LSH layer's int32 buckets; the backward walks the blocks in reverse,
reconstructing ``x2 = y2 - G(y1)`` and ``x1 = y1 - F(x2)`` and taking VJPs of the recomputed
sublayers with exactly the forward's keys and buckets.

``f(params, x, key, buckets) -> (y, buckets or None)`` is the attention sublayer and
``g(params, x, key) -> y`` the feed-forward; block parameters are ``{"f": ..., "g": ...}``.
Replay buckets are given per layer, as in torch: a layer given None hashes afresh from its key
(exactly as with no buckets at all), a layer given an array replays it; any mix is allowed.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from attnbench.jax_impl.common import derive_key


def reversible_block(f, g, params, x1, x2, *, key, buckets=None):
    """Plain (autodiff) forward of one block: returns (y1, y2, buckets)."""
    f_out, buckets = f(params["f"], x2, derive_key(key, 0), buckets)
    y1 = x1 + f_out
    return y1, x2 + g(params["g"], y1, derive_key(key, 1)), buckets


def _backward_step(f, g, params, y1, y2, d_y1, d_y2, key, buckets):
    """Reconstruct (x1, x2) from (y1, y2); return them, their gradients and the parameters'."""
    g_out, g_vjp = jax.vjp(lambda p, y: g(p, y, derive_key(key, 1)), params["g"], y1)
    d_g, d_y1_g = g_vjp(d_y2)
    x2 = y2 - g_out
    d_y1 = d_y1 + d_y1_g
    f_out, f_vjp = jax.vjp(lambda p, x: f(p, x, derive_key(key, 0), buckets)[0], params["f"], x2)
    d_f, d_x2_f = f_vjp(d_y1)
    return y1 - f_out, x2, d_y1, d_y2 + d_x2_f, {"f": d_f, "g": d_g}


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _stacked_buckets(given):
    """Per-layer replay buckets as the scan takes them: None when no layer replays, else
    ``(stacked, afresh)``: the given arrays stacked (zeros, never read, for a layer given None)
    and ``afresh`` [n_layers] bool, True for the layers given None (None when none was)."""
    replayed = [b for b in given if b is not None]
    if not replayed:
        return None
    placeholder = jnp.zeros_like(replayed[0])
    stacked = jnp.stack([placeholder if b is None else b for b in given])
    afresh = [b is None for b in given]
    return stacked, (jnp.asarray(afresh) if any(afresh) else None)


def _replay_or_hash(f, g, params, x1, x2, key, replay):
    """One scanned block with its ``_stacked_buckets`` entry: ``replay`` None hashes; else
    ``(buckets, afresh)`` replays ``buckets``, or, where ``afresh`` (traced: one compiled body
    serves every layer) is True, hashes afresh from ``key`` as if no buckets were given. Both
    branches must return buckets of one shape (an LSH layer hashing or replaying does)."""
    if replay is None:
        return reversible_block(f, g, params, x1, x2, key=key)
    buckets, afresh = replay
    if afresh is None:
        return reversible_block(f, g, params, x1, x2, key=key, buckets=buckets)
    return lax.cond(afresh,
                    lambda: reversible_block(f, g, params, x1, x2, key=key),
                    lambda: reversible_block(f, g, params, x1, x2, key=key, buckets=buckets))


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _reversible(f, g, blocks, x1, x2, keys, given):
    y1, y2, _ = _run(f, g, blocks, x1, x2, keys, given)
    return y1, y2


def _run(f, g, blocks, x1, x2, keys, given):
    """The forward as a scan over layers: one compiled body whose buffers every layer reuses
    (an unrolled loop let XLA:CPU keep per-layer buffers, so memory grew with depth)."""
    def body(carry, layer):
        params, key, replay = layer
        y1, y2, buckets = _replay_or_hash(f, g, params, *carry, key, replay)
        return (y1, y2), buckets

    (y1, y2), buckets = lax.scan(body, (x1, x2), (blocks, keys, given))
    return y1, y2, buckets


def _reversible_fwd(f, g, blocks, x1, x2, keys, given):
    y1, y2, buckets = _run(f, g, blocks, x1, x2, keys, given)
    return (y1, y2), (blocks, y1, y2, keys, buckets)


def _reversible_bwd(f, g, residuals, cotangents):
    blocks, y1, y2, keys, buckets = residuals

    def body(carry, layer):
        params, key, layer_buckets = layer
        *carry, grads = _backward_step(f, g, params, *carry, key, layer_buckets)
        return tuple(carry), grads

    (_, _, d_y1, d_y2), grads = lax.scan(body, (y1, y2, *cotangents), (blocks, keys, buckets),
                                         reverse=True)
    return grads, d_y1, d_y2, None, None


_reversible.defvjp(_reversible_fwd, _reversible_bwd)


def reversible_sequence(f, g, blocks, x1, x2, *, keys, buckets=None, reversible: bool = True):
    """A stack of reversible blocks (``blocks``: a list of block parameters, ``keys``: one PRNG
    key per block, ``buckets``: optional buckets to replay, one entry per block: an array
    replays, None hashes afresh from the block's key as if no buckets were given, in any mix).
    ``reversible=False`` runs the same blocks with ordinary autodiff (every activation
    stored): same function, same randomness, the memory baseline."""
    if len(keys) != len(blocks):
        raise ValueError(f"len(keys)={len(keys)}: must equal the number of blocks ({len(blocks)})")
    given = [None] * len(blocks) if buckets is None else list(buckets)
    if len(given) != len(blocks):
        raise ValueError(f"len(buckets)={len(given)}: must equal the number of blocks "
                         f"({len(blocks)}); give None for a block that hashes afresh")
    if not reversible:
        for index, params in enumerate(blocks):
            x1, x2, _ = reversible_block(f, g, params, x1, x2, key=keys[index],
                                         buckets=given[index])
        return x1, x2
    # Layers run as a scan over stacked parameters; gradients come back in the same layout.
    stacked = _stack(list(blocks))
    y1, y2 = _reversible(f, g, stacked, x1, x2, jnp.stack(list(keys)), _stacked_buckets(given))
    return y1, y2
