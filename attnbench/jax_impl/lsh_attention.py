"""LSH attention (Reformer): hash, sort by bucket, attend within chunks, unsort, combine rounds.

Reads top to bottom as the algorithm (ARCHITECTURE §2), in the order of the torch file. Shapes:
qk [B, H, L, dh], v [B, H, L, dv], rotations [H, dh, n_hashes, n_buckets // 2], buckets
[B, H, n_hashes, L] (int32, no round offset). Differentiated by JAX's autodiff; buckets are
constants (computed from stop_gradient'd vectors), as in every implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from attnbench import checks
from attnbench.jax_impl.common import (
    MASK_VALUE,
    PRECISION,
    SELF_MASK_VALUE,
    check_qkv,
    einsum,
    logits_dtype,
    normalize_keys,
)
from attnbench.jax_impl.full_attention import (
    init_shared_qk_self_attention,
    shared_qk_self_attention,
)
from attnbench.spec import AttentionSpec

# --------------------------------------------------------------------------------------------
# 1. Hashing
# --------------------------------------------------------------------------------------------


def draw_rotations(key, n_heads: int, d_head: int, n_hashes: int, n_buckets: int):
    """Fresh random rotations [heads, d_head, n_hashes, n_buckets // 2] in float32."""
    return jax.random.normal(key, (n_heads, d_head, n_hashes, n_buckets // 2), jnp.float32)


def hash_vectors(qk, rotations):
    """Buckets [B, H, n_hashes, L] (int32) = argmax(concat([x R_r, -x R_r])) per round r.

    Without materialising the concatenation or a variadic argmax (slow on XLA:CPU): the argmax
    of [r, -r] is r's first maximum if max(r) >= -min(r), else half + r's first minimum.
    """
    dtype = logits_dtype(qk)
    heads, d_head, n_hashes, half = rotations.shape
    flat = rotations.astype(dtype).reshape(heads, d_head, n_hashes * half)
    rotated = jnp.matmul(lax.stop_gradient(qk).astype(dtype), flat[None], precision=PRECISION)
    rotated = rotated.reshape(*qk.shape[:3], n_hashes, half)  # (B, H, L, n_hashes, nb/2)
    iota = lax.broadcasted_iota(jnp.int32, rotated.shape, rotated.ndim - 1)
    high = jnp.max(rotated, -1, keepdims=True)
    low = jnp.min(rotated, -1, keepdims=True)
    arg_high = jnp.min(jnp.where(rotated == high, iota, half), -1)
    arg_low = jnp.min(jnp.where(rotated == low, iota, half), -1)
    buckets = jnp.where(high[..., 0] >= -low[..., 0], arg_high, arg_low + half)
    return jnp.swapaxes(buckets, 2, 3).astype(jnp.int32)  # (B, H, n_hashes, L)


# --------------------------------------------------------------------------------------------
# 2. Sorting by (round, bucket, position)
# --------------------------------------------------------------------------------------------


def sort_by_bucket(buckets, n_buckets: int):
    """Returns (sticker, undo), both [B, H, n_hashes * L] int32.

    sticker[s] = r * L + t of the item at sorted slot s; undo inverts it. A stable sort on the
    round-offset bucket id carrying the slot index: ties keep position order, and no composite
    ``L * bucket + t`` key exists to overflow int32 at long lengths.
    """
    n_hashes = buckets.shape[2]
    offsets = (jnp.arange(n_hashes, dtype=jnp.int32) * n_buckets)[None, None, :, None]
    keys = (buckets + offsets).reshape(*buckets.shape[:2], -1)  # (B, H, n_hashes*L)
    ticker = jnp.broadcast_to(jnp.arange(keys.shape[-1], dtype=jnp.int32), keys.shape)
    _, sticker = lax.sort((keys, ticker), dimension=2, is_stable=True, num_keys=1)
    batch, heads = keys.shape[:2]
    undo = jnp.zeros_like(sticker).at[jnp.arange(batch)[:, None, None],
                                      jnp.arange(heads)[None, :, None], sticker].set(ticker)
    return sticker, undo


# --------------------------------------------------------------------------------------------
# 3. Attention within chunks (and their neighbours)
# --------------------------------------------------------------------------------------------


def _look_adjacent(x, offsets):
    """x [G, n_chunks, C, ...] -> [G, n_chunks, W * C, ...]: chunk c followed by chunks c + o
    for each offset, wrapping around the concatenated rounds (offset-major, as in torch)."""
    return jnp.concatenate([jnp.roll(x, -o, axis=1) for o in offsets], axis=2)


def _dedup_log_counts(q_locs, kv_locs, offsets, n_chunks, dtype):
    """log(how often each key appears in the query's windows over all rounds) [G, nc, C, WC].

    q_locs [G, nc, C, n_hashes] and kv_locs [G, nc, WC, n_hashes]: the chunk of the position in
    each round. Key j is in query i's window once for every (round r, round r', offset o) with
    chunk_r'(j) == chunk_r(i) + o (mod n_chunks).
    """
    diff = kv_locs[..., None, :, None, :] - q_locs[..., :, None, :, None]  # (.., C, WC, R, R')
    counts = sum(jnp.sum(jnp.remainder(diff - o, n_chunks) == 0, axis=(-1, -2)) for o in offsets)
    return jnp.log(counts.astype(dtype))


def _chunked_attention(sq, sk, sv, q_pos, locs, offsets, causal):
    """Sorted, chunked shared-QK attention. Inputs [G, n_chunks, C, ...]; returns each slot's
    output [G, n_chunks, C, dv] (logits dtype) and log-sum-exp [G, n_chunks, C]."""
    k = _look_adjacent(sk, offsets)  # (G, nc, WC, dh)
    v = _look_adjacent(sv, offsets)  # (G, nc, WC, dv)
    kv_pos = _look_adjacent(q_pos, offsets)  # (G, nc, WC)
    logits = einsum("gcid,gcjd->gcij", sq.astype(sk.dtype), k)  # (G, nc, C, WC)
    logits = jnp.where(q_pos[..., :, None] == kv_pos[..., None, :], SELF_MASK_VALUE, logits)
    if causal:
        logits = jnp.where(q_pos[..., :, None] < kv_pos[..., None, :], MASK_VALUE, logits)
    if locs is not None:
        logits = logits - _dedup_log_counts(locs, _look_adjacent(locs, offsets), offsets,
                                            sq.shape[1], logits.dtype)
    # Max and sum stay apart: a row whose only target is the masked self has logits near -1e5,
    # where float32 cannot hold logit - logsumexp to better than 1e-2.
    row_max = lax.stop_gradient(jnp.max(logits, -1, keepdims=True))
    unnormalised = jnp.exp(logits - row_max)
    row_sum = jnp.sum(unnormalised, -1, keepdims=True)
    out = einsum("gcij,gcjd->gcid", unnormalised.astype(sv.dtype), v).astype(logits.dtype)
    return out / row_sum, (row_max + jnp.log(row_sum))[..., 0]


# --------------------------------------------------------------------------------------------
# 4. The whole layer function
# --------------------------------------------------------------------------------------------


def _check_lsh_args(qk, v, n_buckets, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
                    rotations, buckets, key):
    check_qkv({"qk": qk, "v": v}, same_d=False)
    checks.check_lsh_args(
        tuple(qk.shape), n_buckets=n_buckets, n_hashes=n_hashes, chunk_len=chunk_len,
        n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
        rotations_shape=None if rotations is None else tuple(rotations.shape),
        buckets_shape=None if buckets is None else tuple(buckets.shape))
    if rotations is None and buckets is None and key is None:
        raise ValueError("key=None: LSH attention needs a PRNG key, rotations or buckets")


def _take_rows(x, index):
    """x [G, L, d], index [G, N] -> [G, N, d]."""
    return jnp.take_along_axis(x, index[..., None], axis=1)


@jax.custom_vjp
def _permute(x, perm, inverse):
    """Rows of x [G, N, d] in the order ``perm`` [G, N] (a permutation, ``inverse`` its inverse).

    The VJP of a gather is a scatter-add, which XLA runs serially on CPU; for a permutation it is
    just the gather by the inverse permutation (as trax's permute_via_gather)."""
    return _take_rows(x, perm)


def _permute_fwd(x, perm, inverse):
    return _take_rows(x, perm), (perm, inverse)


def _permute_bwd(residuals, grad):
    perm, inverse = residuals
    return _take_rows(grad, inverse), None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def _sort_rows(x, n_hashes, sticker, undo):
    """x [G, L, d] -> [G, n_hashes * L, d] in sorted order: x repeated once per round, then
    permuted (its VJP gathers back and sums each position's rounds)."""
    groups, length, width = x.shape
    repeated = jnp.broadcast_to(x[:, None], (groups, n_hashes, length, width))
    return _permute(repeated.reshape(groups, n_hashes * length, width), sticker, undo)


def lsh_attention(qk, v, *, n_buckets: int, n_hashes: int, chunk_len: int, causal: bool,
                  rotations=None, key=None, n_chunks_before: int = 1, n_chunks_after: int = 0,
                  dedup: bool = False, return_buckets: bool = False, buckets=None):
    """LSH self-attention with shared queries and keys.

    Buckets come from ``buckets`` if given (replay), else from ``rotations`` if given, else from
    rotations drawn with ``key``. Returns the output [B, H, L, dv] (and the int32 buckets when
    ``return_buckets``).
    """
    _check_lsh_args(qk, v, n_buckets, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
                    rotations, buckets, key)
    batch, heads, length, d_head = qk.shape
    d_v = v.shape[-1]
    if buckets is None:
        if rotations is None:
            rotations = draw_rotations(key, heads, d_head, n_hashes, n_buckets)
        buckets = hash_vectors(qk, rotations)
    buckets = buckets.astype(jnp.int32)
    sticker, undo = sort_by_bucket(buckets, n_buckets)  # (B, H, n_hashes*L)

    # Gather queries, keys and values into sorted order, cut into chunks.   (G, n_chunks, C, d)
    groups, n_items = batch * heads, n_hashes * length
    sticker, undo = sticker.reshape(groups, n_items), undo.reshape(groups, n_items)
    positions = sticker % length
    qk_g = qk.reshape(groups, length, d_head)
    chunked = (groups, n_items // chunk_len, chunk_len)
    sq = _sort_rows(qk_g, n_hashes, sticker, undo).reshape(*chunked, d_head)
    sk = _sort_rows(normalize_keys(qk_g), n_hashes, sticker, undo).reshape(*chunked, d_head)
    sv = _sort_rows(v.reshape(groups, length, d_v), n_hashes, sticker, undo).reshape(*chunked, d_v)
    s_locs = None
    if dedup:  # the chunk of each sorted slot's position in every round: (G, nc, C, n_hashes)
        locs = jnp.swapaxes((undo // chunk_len).reshape(groups, n_hashes, length), 1, 2)
        s_locs = _take_rows(locs, positions).reshape(*chunked, n_hashes)
    offsets = tuple(range(-n_chunks_before, n_chunks_after + 1))
    s_out, s_lse = _chunked_attention(sq, sk, sv, positions.reshape(chunked), s_locs, offsets,
                                      causal)

    # Unsort and combine the rounds, weighting each by softmax over its log-sum-exp.
    rounds = _permute(s_out.reshape(groups, n_items, d_v), undo, sticker)
    rounds = rounds.reshape(groups, n_hashes, length, d_v)
    lse = _permute(s_lse.reshape(groups, n_items, 1), undo, sticker)
    weights = jax.nn.softmax(lse.reshape(groups, n_hashes, length), axis=1)
    out = jnp.sum(rounds * weights[..., None], axis=1).astype(v.dtype)
    out = out.reshape(batch, heads, length, d_v)
    return (out, buckets) if return_buckets else out


def init_lsh_self_attention(key, d_model: int, spec: AttentionSpec, dtype=jnp.float32):
    """Parameters of :func:`lsh_self_attention` (those of shared-QK self-attention)."""
    if spec.kind != "lsh":
        raise ValueError(f"AttentionSpec.kind={spec.kind!r}: lsh_self_attention needs 'lsh'")
    return init_shared_qk_self_attention(key, d_model, spec, dtype)


def lsh_self_attention(params, x, *, spec: AttentionSpec, key=None, buckets=None,
                       return_buckets: bool = False):
    """Shared-QK projection, LSH attention, output projection. x [B, L, d_model] -> same."""

    def attend(qk, v, attend_key, attend_buckets):
        return lsh_attention(
            qk, v, n_buckets=spec.buckets_for(qk.shape[2]), n_hashes=spec.n_hashes,
            chunk_len=spec.chunk_len, causal=spec.causal, key=attend_key,
            n_chunks_before=spec.n_chunks_before, n_chunks_after=spec.n_chunks_after,
            dedup=spec.dedup, return_buckets=True, buckets=attend_buckets)

    return shared_qk_self_attention(params, x, spec=spec, key=key, buckets=buckets,
                                    return_buckets=return_buckets, attend=attend)
