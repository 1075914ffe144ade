"""LSH attention (Reformer): hash, sort by bucket, attend within chunks, unsort, combine rounds.

Reads top to bottom as the algorithm (docs/architecture.md §2), in the order of the torch file.
Shapes: qk [B, H, L, dh], v [B, H, L, dv], rotations [H, dh, n_hashes, n_buckets // 2], buckets
[B, H, n_hashes, L] (int32, no round offset). The chunked attention core is one ``custom_vjp``
that keeps the inputs, the sorted keys and values, the output and per-row softmax statistics,
and recomputes probabilities block by block in the backward (as flash attention does), the same
algorithm as the torch core: memory grows with ``n_hashes * L * d`` and never holds
``n_hashes * L * window`` logits at once. Buckets are constants, as in every implementation.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from attnbench import checks
from attnbench.jax_impl.common import (
    KEY_NORM_EPS,
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
from attnbench.spec import AttentionSpec, resolve_kernel

# Logit elements computed per block of chunks: large enough for efficient matmuls, small enough
# that the block's temporaries stay in cache-sized pieces and peak memory stays flat.
_BLOCK_ELEMENTS = 1 << 20

# --------------------------------------------------------------------------------------------
# 1. Hashing
# --------------------------------------------------------------------------------------------


def draw_rotations(key, n_heads: int, d_head: int, n_hashes: int, n_buckets: int):
    """Fresh random rotations [heads, d_head, n_hashes, n_buckets // 2] in float32."""
    return jax.random.normal(key, (n_heads, d_head, n_hashes, n_buckets // 2), jnp.float32)


def hash_vectors(qk, rotations):
    """Buckets [B, H, n_hashes, L] (int32) = argmax(concat([x R_r, -x R_r])) per round r.

    Computed one round at a time (``lax.map``: one [B, H, L, n_buckets / 2] buffer, as torch's
    loop reuses one; all rounds at once cost 4x the memory and more time at 4 hashes), and
    without materialising the concatenation or a variadic argmax (1.4x slower on XLA:CPU at 4
    hashes): the argmax of [r, -r] is r's first maximum if max(r) >= -min(r), else half + r's
    first minimum.
    """
    dtype = logits_dtype(qk)
    half = rotations.shape[-1]
    x = lax.stop_gradient(qk).astype(dtype)

    def one_round(rotation):  # (H, dh, nb/2)
        rotated = jnp.matmul(x, rotation.astype(dtype)[None], precision=PRECISION)  # (B,H,L,nb/2)
        iota = lax.broadcasted_iota(jnp.int32, rotated.shape, rotated.ndim - 1)
        high = jnp.max(rotated, -1, keepdims=True)
        low = jnp.min(rotated, -1, keepdims=True)
        arg_high = jnp.min(jnp.where(rotated == high, iota, half), -1)
        arg_low = jnp.min(jnp.where(rotated == low, iota, half), -1)
        return jnp.where(high[..., 0] >= -low[..., 0], arg_high, arg_low + half)

    buckets = lax.map(one_round, jnp.moveaxis(rotations, 2, 0))  # (n_hashes, B, H, L)
    return jnp.moveaxis(buckets, 0, 2).astype(jnp.int32)  # (B, H, n_hashes, L)


# --------------------------------------------------------------------------------------------
# 2. Sorting by (round, bucket, position)
# --------------------------------------------------------------------------------------------


def sort_by_bucket(buckets, n_buckets: int):
    """Returns (sticker, undo), both [B, H, n_hashes * L] int32.

    sticker[s] = r * L + t of the item at sorted slot s; undo inverts it. Sorted on the
    round-offset bucket id with ties in slot order. Where the composite key
    ``bucket * n_items + slot`` fits in int32 it is one unique key (a one-operand sort, about 4x
    faster on XLA:CPU than the stable two-operand one); at long lengths, where it would
    overflow, a stable sort carries the slot index instead. Both give the same order.
    """
    n_hashes = buckets.shape[2]
    offsets = (jnp.arange(n_hashes, dtype=jnp.int32) * n_buckets)[None, None, :, None]
    keys = (buckets + offsets).reshape(*buckets.shape[:2], -1)  # (B, H, n_hashes*L)
    n_items = keys.shape[-1]
    ticker = jnp.broadcast_to(jnp.arange(n_items, dtype=jnp.int32), keys.shape)
    if n_hashes * n_buckets * n_items < 2**31:
        sticker = lax.sort(keys * n_items + ticker, dimension=2) % n_items
    else:
        _, sticker = lax.sort((keys, ticker), dimension=2, is_stable=True, num_keys=1)
    batch, heads = keys.shape[:2]
    undo = jnp.zeros_like(sticker).at[jnp.arange(batch)[:, None, None],
                                      jnp.arange(heads)[None, :, None], sticker].set(ticker)
    return sticker, undo


# --------------------------------------------------------------------------------------------
# 3. Attention within chunks (and their neighbours), block by block
# --------------------------------------------------------------------------------------------


class _Chunks:
    """The sorted order cut into chunks, and the window of chunks each chunk attends to.

    Slot s of group g holds position ``sticker[g, s] % L`` of round ``sticker[g, s] // L``.
    Chunk c sees chunks c + o for o in [-n_before, n_after], modulo the number of chunks, so the
    first chunk looks back at the last one (across rounds). Built inside the traced core from
    the (integer) sort permutations; ``block`` chunks at a time, starting at a traced index.
    """

    def __init__(self, sticker, undo, length, chunk_len, offsets):
        groups, n_items = sticker.shape
        self.groups, self.length, self.chunk_len = groups, length, chunk_len
        self.n_hashes, self.n_chunks = n_items // length, n_items // chunk_len
        self.offsets = offsets
        self.positions = (sticker % length).reshape(groups, self.n_chunks, chunk_len)
        base = jnp.arange(groups, dtype=sticker.dtype)[:, None]
        self.sort_rows = self.positions + base[..., None] * length  # (G, nc, C) rows of [G*L]
        # the sorted slot of (round r, position t), as a row of the flattened sorted tensors
        self.undo_rows = jnp.swapaxes((undo + base * n_items).reshape(
            groups, self.n_hashes, length), 0, 1)  # (n_hashes, G, L)
        # the row of [n_hashes * G * L] round-major tensors that each sorted slot reads
        self.weight_rows = ((sticker // length) * groups * length + base * length
                            + sticker % length).reshape(-1)
        # Blocks of whole chunks whose logits hold about _BLOCK_ELEMENTS numbers; lax.map needs
        # equal blocks, so the block is the largest divisor of n_chunks that fits.
        per_chunk = groups * chunk_len * chunk_len * len(offsets)
        fits = max(1, _BLOCK_ELEMENTS // per_chunk)
        self.block = max(b for b in range(1, min(fits, self.n_chunks) + 1)
                         if self.n_chunks % b == 0)
        self.n_blocks = self.n_chunks // self.block

    def band_args(self, causal) -> dict:
        """The window settings, as the fused kernels take them."""
        return {"chunk_len": self.chunk_len, "n_chunks_before": -self.offsets[0],
                "n_chunks_after": self.offsets[-1], "causal": causal}

    def sort(self, x_flat, start=None):
        """[G * L, d] -> [G, n_chunks, C, d] in sorted order (each position once per round);
        with a block start, only that block's chunks, [G, block, C, d]."""
        rows = self.sort_rows if start is None else self.take(self.sort_rows, start)
        return jnp.take(x_flat, rows.reshape(-1), axis=0).reshape(*rows.shape, -1)

    def take(self, x, start):
        """x [G, n_chunks, ...] -> the block's chunks [G, block, ...]."""
        return lax.dynamic_slice_in_dim(x, start, self.block, axis=1)

    def window(self, x, start):
        """x [G, n_chunks, C, ...] -> [G, block, W * C, ...], offset-major: the chunks of block
        chunk i's window, i + o modulo n_chunks (a gather of whole chunks)."""
        index = start + jnp.arange(self.block)
        return jnp.concatenate([jnp.take(x, (index + o) % self.n_chunks, axis=1)
                                for o in self.offsets], axis=2)

    def over_blocks(self, body):
        """Stack ``body(start)``'s per-block outputs [G, block, ...] into [G, n_chunks, ...]."""
        stacked = lax.map(body, jnp.arange(self.n_blocks) * self.block)  # (nb, G, block, ...)
        return jax.tree.map(
            lambda x: jnp.moveaxis(x, 0, 1).reshape(self.groups, self.n_chunks, *x.shape[3:]),
            stacked)

    def unsort_add(self, acc, start, x):
        """acc [G * L, d] += x [G, block, ..., d] at the rows its slots hold (scatter-add, as
        torch's index_add_; a position's rounds sum)."""
        rows = self.sort_rows if start is None else self.take(self.sort_rows, start)
        return acc.at[rows.reshape(-1)].add(x.reshape(-1, acc.shape[-1]))


def _dedup_log_counts(q_locs, kv_locs, chunks: _Chunks, dtype):
    """log(how often each key appears in the query's windows over all rounds) [G, nb, C, WC].

    q_locs [G, nb, C, n_hashes] and kv_locs [G, nb, WC, n_hashes]: the chunk of the position in
    each round. Key j is in query i's window once for every (round r, round r', offset o) with
    chunk_r'(j) == chunk_r(i) + o (mod n_chunks).
    """
    diff = kv_locs[..., None, :, None, :] - q_locs[..., :, None, :, None]  # (.., C, WC, R, R')
    counts = sum(jnp.sum(jnp.remainder(diff - o, chunks.n_chunks) == 0, axis=(-1, -2))
                 for o in chunks.offsets)
    return jnp.log(counts.astype(dtype))


def _block_logits(qk, sk, s_locs, chunks: _Chunks, causal, start):
    """Recomputable part of one block of chunks: masked logits (in sk's dtype, the logits
    dtype), the replaced-logit mask, and the block's queries and windowed keys."""
    q = chunks.sort(qk, start).astype(sk.dtype)  # (G, nb, C, dh)
    k = chunks.window(sk, start)  # (G, nb, WC, dh)
    q_pos = chunks.take(chunks.positions, start)  # (G, nb, C)
    kv_pos = chunks.window(chunks.positions, start)  # (G, nb, WC)
    logits = einsum("gcid,gcjd->gcij", q, k)  # (G, nb, C, WC)
    replaced = q_pos[..., :, None] == kv_pos[..., None, :]
    logits = jnp.where(replaced, SELF_MASK_VALUE, logits)
    if causal:
        future = q_pos[..., :, None] < kv_pos[..., None, :]
        logits = jnp.where(future, MASK_VALUE, logits)
        replaced |= future
    if s_locs is not None:
        logits = logits - _dedup_log_counts(chunks.take(s_locs, start),
                                            chunks.window(s_locs, start), chunks, logits.dtype)
    return logits, replaced, q, k


def _normalize_keys_vjp(qk, d_k):
    """Gradient of :func:`normalize_keys` (k = q * r / sqrt(d), r = rsqrt(mean(q^2) + eps))."""
    d = qk.shape[-1]
    r = lax.rsqrt(jnp.mean(qk * qk, -1, keepdims=True) + KEY_NORM_EPS)
    dot = jnp.sum(d_k * qk, -1, keepdims=True)
    return (d_k * r - qk * (r**3 * dot / d)) / math.sqrt(d)


def _band_forward(qk, sk, sv, s_locs, chunks: _Chunks, causal, kernel):
    """Each sorted slot's output within its window [G, nc, C, dv] (logits dtype) and its row's
    softmax max and sum [G, nc, C]: the portable block loop, or one fused kernel launch."""
    if kernel == "pallas":
        return _pallas_forward(qk, sk, sv, chunks, causal)

    def block(start):
        logits, _, _, _ = _block_logits(qk, sk, s_locs, chunks, causal, start)
        # Max and sum stay apart: a row whose only target is the masked self has logits
        # near -1e5, where float32 cannot hold logit - logsumexp to better than 1e-2.
        block_max = jnp.max(logits, -1, keepdims=True)  # (G, nb, C, 1)
        unnormalised = jnp.exp(logits - block_max)
        block_sum = jnp.sum(unnormalised, -1, keepdims=True)
        block_v = chunks.window(sv, start)  # (G, nb, WC, dv)
        block_out = einsum("gcij,gcjd->gcid", unnormalised.astype(sv.dtype), block_v)
        return block_out.astype(sk.dtype) / block_sum, block_max[..., 0], block_sum[..., 0]

    return chunks.over_blocks(block)


def _band_backward(qk, sk, sv, s_locs, chunks: _Chunks, causal, kernel, row_max, row_sum,
                   slot_weights, d_out, out_dot):
    """Gradients (d_qk, d_k, d_v) [G * L, d] in the unsorted rows, d_k for the normalised keys.

    Per slot: d(round output) = w * d_out[t], and the softmax row term
    sum_j p_ij dp_ij - d_lse_i collapses to w * (d_out[t] . out[t])."""
    dtype = sk.dtype
    if kernel == "pallas":
        return _pallas_backward(qk, sk, sv, chunks, causal, row_max, row_sum, slot_weights,
                                d_out, out_dot)

    def block(grads, start):
        d_qk, d_k, d_v = grads
        logits, replaced, q, k = _block_logits(qk, sk, s_locs, chunks, causal, start)
        unnormalised = jnp.exp(logits - chunks.take(row_max, start)[..., None])  # (G,nb,C,WC)
        inv_sum = 1.0 / chunks.take(row_sum, start)[..., None]  # probs = unnormalised * inv
        w = chunks.take(slot_weights, start)[..., None]  # (G, nb, C, 1)
        d_o = chunks.sort(d_out, start) * w  # (G, nb, C, dv)
        row_term = chunks.sort(out_dot, start) * w  # (G, nb, C, 1)
        block_v = chunks.window(sv, start).astype(dtype)  # (G, nb, WC, dv)
        block_d_v = einsum("gcij,gcid->gcjd", unnormalised, d_o * inv_sum)  # (G, nb, WC, dv)
        d_logits = (einsum("gcid,gcjd->gcij", d_o, block_v) - row_term) * unnormalised
        d_logits = jnp.where(replaced, 0.0, d_logits)  # replaced logits are constants
        # Gradients go straight to the unsorted rows (the scatter-add sums a position's
        # rounds); accumulated in the loop carry, so no sorted-size gradient is ever stacked.
        block_d_q = einsum("gcij,gcjd->gcid", d_logits, k) * inv_sum  # (G, nb, C, dh)
        d_qk = chunks.unsort_add(d_qk, start, block_d_q)
        kv_rows = chunks.window(chunks.sort_rows, start)  # (G, nb, WC)
        block_d_k = einsum("gcij,gcid->gcjd", d_logits, q * inv_sum)  # (G, nb, WC, dh)
        d_k = d_k.at[kv_rows.reshape(-1)].add(block_d_k.reshape(-1, d_k.shape[-1]))
        d_v = d_v.at[kv_rows.reshape(-1)].add(block_d_v.reshape(-1, d_v.shape[-1]))
        return (d_qk, d_k, d_v), None

    zeros = (jnp.zeros(qk.shape, dtype), jnp.zeros(qk.shape, dtype),
             jnp.zeros((qk.shape[0], sv.shape[-1]), dtype))
    grads, _ = lax.scan(block, zeros, jnp.arange(chunks.n_blocks) * chunks.block)
    return grads


def _kernel_operands(chunks: _Chunks, dtype, *sorted_):
    """[G, nc, C, d] sorted tensors as the kernels take them, [G, N, d] in one dtype: the
    inputs' own for bfloat16 / float16 (float32 accumulation in the kernel), else float32."""
    n_items = chunks.n_chunks * chunks.chunk_len
    return [x.reshape(chunks.groups, n_items, -1).astype(dtype) for x in sorted_]


def _kernel_dtype(logits, values):
    return values if values in (jnp.bfloat16, jnp.float16) else logits


def _pallas_forward(qk, sk, sv, chunks: _Chunks, causal):
    from attnbench.jax_impl import lsh_pallas

    dtype = _kernel_dtype(sk.dtype, sv.dtype)
    q, k, v = _kernel_operands(chunks, dtype, chunks.sort(qk), sk, sv)
    positions = chunks.positions.reshape(q.shape[:2])
    out, row_max, row_sum = lsh_pallas.band_forward(
        q, k, v, positions, **chunks.band_args(causal), interpret=_interpret())
    shape = chunks.positions.shape
    return (out.reshape(*shape, -1).astype(sk.dtype), row_max.reshape(shape),
            row_sum.reshape(shape))


def _pallas_backward(qk, sk, sv, chunks: _Chunks, causal, row_max, row_sum, slot_weights,
                     d_out, out_dot):
    from attnbench.jax_impl import lsh_pallas

    dtype = _kernel_dtype(sk.dtype, sv.dtype)
    q, k, v = _kernel_operands(chunks, dtype, chunks.sort(qk), sk, sv)
    (d_o,) = _kernel_operands(chunks, sk.dtype, chunks.sort(d_out) * slot_weights[..., None])
    shape = q.shape[:2]
    delta = (chunks.sort(out_dot)[..., 0] * slot_weights).reshape(shape)
    d_sq, d_sk, d_sv = lsh_pallas.band_backward(
        q, k, v, chunks.positions.reshape(shape), row_max.reshape(shape),
        row_sum.reshape(shape), d_o, delta, **chunks.band_args(causal), interpret=_interpret())
    zeros = jnp.zeros(qk.shape, sk.dtype)
    return (chunks.unsort_add(zeros, None, d_sq.astype(sk.dtype)),
            chunks.unsort_add(zeros, None, d_sk.astype(sk.dtype)),
            chunks.unsort_add(jnp.zeros((qk.shape[0], sv.shape[-1]), sk.dtype), None,
                              d_sv.astype(sk.dtype)))


def _interpret() -> bool:
    """Pallas kernels run compiled on a GPU and in the interpreter on the CPU (the tests);
    the harness never measures the interpreter (a case asking for it is refused)."""
    return jax.default_backend() == "cpu"


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _lsh_attention_core(qk, v, locs, sticker, undo, length, chunk_len, offsets, causal, kernel):
    """Attend within chunk windows of the sorted order, then combine rounds: one VJP.

    Like flash attention (and the torch core, line for line) it saves the (sorted) inputs, the
    combined output and per-row softmax statistics, and recomputes probabilities block by block
    in the backward; no tensor of size n_hashes * L * window is ever kept. Inputs qk [G * L, dh],
    v [G * L, dv], locs [G * L, n_hashes] or None, sticker/undo [G, n_hashes * L]. Returns the
    combined output [G * L, dv].
    """
    return _lsh_attention_core_fwd(qk, v, locs, sticker, undo, length, chunk_len, offsets,
                                   causal, kernel)[0]


def _lsh_attention_core_fwd(qk, v, locs, sticker, undo, length, chunk_len, offsets, causal,
                            kernel):
    chunks = _Chunks(sticker, undo, length, chunk_len, offsets)
    k = normalize_keys(qk)  # (G*L, dh), in the logits dtype
    sk, sv = chunks.sort(k), chunks.sort(v)  # (G, nc, C, d); windows are gathers of these
    s_locs = None if locs is None else chunks.sort(locs)
    s_out, row_max, row_sum = _band_forward(qk, sk, sv, s_locs, chunks, causal, kernel)

    # Combine rounds: the weight of round r at position t is softmax_r(lse_r(t)).
    s_lse = (row_max + jnp.log(row_sum)).reshape(-1)
    weights = jax.nn.softmax(jnp.take(s_lse, chunks.undo_rows.reshape(chunks.n_hashes, -1),
                                      axis=0), axis=0)[..., None]  # (n_hashes, G*L, 1)
    s_out_flat = s_out.reshape(-1, s_out.shape[-1])
    out = sum(weights[r] * jnp.take(s_out_flat, chunks.undo_rows[r].reshape(-1), axis=0)
              for r in range(chunks.n_hashes))
    slot_weights = jnp.take(weights.reshape(-1), chunks.weight_rows).reshape(
        chunks.positions.shape)  # each sorted slot's own round weight
    residuals = (qk, sk, sv, s_locs, out, row_max, row_sum, slot_weights, sticker, undo)
    return out.astype(v.dtype), residuals


def _lsh_attention_core_bwd(length, chunk_len, offsets, causal, kernel, residuals, d_out):
    qk, sk, sv, s_locs, out, row_max, row_sum, slot_weights, sticker, undo = residuals
    chunks = _Chunks(sticker, undo, length, chunk_len, offsets)
    dtype = sk.dtype
    d_out = d_out.astype(dtype)
    out_dot = jnp.sum(d_out * out, -1, keepdims=True)  # (G*L, 1)
    d_qk, d_k, d_v = _band_backward(qk, sk, sv, s_locs, chunks, causal, kernel, row_max,
                                    row_sum, slot_weights, d_out, out_dot)
    d_qk = d_qk + _normalize_keys_vjp(qk.astype(dtype), d_k)
    return d_qk.astype(qk.dtype), d_v.astype(sv.dtype), None, None, None


_lsh_attention_core.defvjp(_lsh_attention_core_fwd, _lsh_attention_core_bwd)


# --------------------------------------------------------------------------------------------
# 4. The whole layer function
# --------------------------------------------------------------------------------------------


def _check_kernel_args(kernel, qk, v, chunk_len, dedup):
    """A fused kernel that cannot take the call is an error, never a quiet portable run."""
    from attnbench.jax_impl import lsh_pallas

    if dedup:
        raise ValueError(f"dedup=True: kernel {kernel!r} does not count duplicate keys "
                         "(kernel='portable' does)")
    lsh_pallas.check_supported(chunk_len=chunk_len, d_head=qk.shape[-1], d_v=v.shape[-1],
                               dtype=_kernel_dtype(logits_dtype(qk), v.dtype))


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


def lsh_attention(qk, v, *, n_buckets: int, n_hashes: int, chunk_len: int, causal: bool,
                  rotations=None, key=None, n_chunks_before: int = 1, n_chunks_after: int = 0,
                  dedup: bool = False, return_buckets: bool = False, buckets=None,
                  kernel: str = "auto"):
    """LSH self-attention with shared queries and keys.

    Buckets come from ``buckets`` if given (replay), else from ``rotations`` if given, else from
    rotations drawn with ``key``. ``kernel`` runs the band of chunks (``auto``: Pallas on a GPU
    backend, the portable core on the CPU; see :func:`attnbench.spec.resolve_kernel`). Returns
    the output [B, H, L, dv] (and the int32 buckets when ``return_buckets``).
    """
    _check_lsh_args(qk, v, n_buckets, n_hashes, chunk_len, n_chunks_before, n_chunks_after,
                    rotations, buckets, key)
    kernel = resolve_kernel(kernel, "jax", jax.default_backend())
    if kernel != "portable":
        _check_kernel_args(kernel, qk, v, chunk_len, dedup)
    batch, heads, length, d_head = qk.shape
    d_v = v.shape[-1]
    if buckets is None:
        if rotations is None:
            rotations = draw_rotations(key, heads, d_head, n_hashes, n_buckets)
        buckets = hash_vectors(qk, rotations)
    buckets = buckets.astype(jnp.int32)
    sticker, undo = sort_by_bucket(buckets, n_buckets)  # (B, H, n_hashes*L)

    groups, n_items = batch * heads, n_hashes * length
    sticker, undo = sticker.reshape(groups, n_items), undo.reshape(groups, n_items)
    locs = None
    if dedup:  # the chunk of every position in every round: (G*L, n_hashes)
        locs = jnp.swapaxes((undo // chunk_len).reshape(groups, n_hashes, length), 1, 2)
        locs = locs.reshape(groups * length, n_hashes)
    offsets = tuple(range(-n_chunks_before, n_chunks_after + 1))
    out = _lsh_attention_core(qk.reshape(groups * length, d_head),
                              v.reshape(groups * length, d_v), locs, sticker, undo, length,
                              chunk_len, offsets, causal, kernel)
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
            dedup=spec.dedup, return_buckets=True, buckets=attend_buckets, kernel=spec.kernel)

    return shared_qk_self_attention(params, x, spec=spec, key=key, buckets=buckets,
                                    return_buckets=return_buckets, attend=attend)
