"""NumPy float64 reference implementations: the single source of truth both frameworks match.

Written for clarity, not speed. LSH attention is computed here by a different route from the fast
implementations: the sort-and-chunk procedure is only used to *count* how often each key lands
in each query's windows (over all rounds), and the output is then one dense softmax in which a key
counted ``n`` times carries weight ``n``. That is exactly what the per-round log-sum-exp combination
computes (docs/architecture.md §2), so agreement between the two routes is a real check.

Every attention function returns the output and, given an output cotangent, ``*_vjp`` returns the
input gradients; buckets (and with them the counts) are constants, as in every implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SELF_MASK_VALUE = -1e5  # replaces a query's logit on itself: used only when nothing else is valid
MASK_VALUE = -1e9  # replaces causally masked logits
KEY_NORM_EPS = 1e-6
LAYER_NORM_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# Dense attention with multiplicities: the one kernel every attention variant reduces to.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attention:
    """Everything the forward computed that the backward needs, for one [..., Lq, Lk] problem."""

    probs: np.ndarray  # [..., Lq, Lk]
    replaced: np.ndarray  # bool [..., Lq, Lk]: logits replaced by a constant (no gradient)


def _attend(q, k, v, *, scale, counts, causal, self_mask):
    """softmax over keys of (counts * exp(logits)), masks by replacement, then weighted sum of v.

    counts: [..., Lq, Lk] multiplicities (None means every key once). A zero count removes a key.
    """
    logits = np.einsum("...id,...jd->...ij", q, k) * scale
    length_q, length_k = logits.shape[-2:]
    i = np.arange(length_q)[:, None]
    j = np.arange(length_k)[None, :]
    replaced = np.zeros(logits.shape, dtype=bool)
    if self_mask:
        logits = np.where(i == j, SELF_MASK_VALUE, logits)
        replaced |= i == j
    if causal:
        logits = np.where(j > i, MASK_VALUE, logits)
        replaced |= j > i
    counts = np.ones_like(logits) if counts is None else counts
    present = counts > 0
    shifted = logits - np.max(np.where(present, logits, -np.inf), axis=-1, keepdims=True)
    weights = np.where(present, counts * np.exp(np.where(present, shifted, 0.0)), 0.0)
    probs = weights / weights.sum(-1, keepdims=True)
    out = np.einsum("...ij,...jd->...id", probs, v)
    return out, _Attention(probs=probs, replaced=replaced)


def _attend_vjp(q, k, v, saved: _Attention, d_out, *, scale):
    """Gradients of :func:`_attend` w.r.t. q, k, v (counts and masks are constants)."""
    probs = saved.probs
    d_v = np.einsum("...ij,...id->...jd", probs, d_out)
    d_probs = np.einsum("...id,...jd->...ij", d_out, v)
    d_logits = probs * (d_probs - np.sum(probs * d_probs, -1, keepdims=True))
    d_logits = np.where(saved.replaced, 0.0, d_logits) * scale
    d_q = np.einsum("...ij,...jd->...id", d_logits, k)
    d_k = np.einsum("...ij,...id->...jd", d_logits, q)
    return d_q, d_k, d_v


# --------------------------------------------------------------------------------------------
# Full attention (separate Q and K)
# --------------------------------------------------------------------------------------------


def full_attention(q, k, v, *, causal):
    """softmax(Q K^T / sqrt(d)) V on [batch, heads, length, d] arrays."""
    out, _ = _attend(q, k, v, scale=1 / math.sqrt(q.shape[-1]), counts=None, causal=causal,
                     self_mask=False)
    return out


def full_attention_vjp(q, k, v, d_out, *, causal):
    scale = 1 / math.sqrt(q.shape[-1])
    _, saved = _attend(q, k, v, scale=scale, counts=None, causal=causal, self_mask=False)
    return _attend_vjp(q, k, v, saved, d_out, scale=scale)


# --------------------------------------------------------------------------------------------
# Local (blocked sliding-window) attention
# --------------------------------------------------------------------------------------------


def local_window(length, chunk_len):
    """bool [length, length]: key j is in query i's window, i.e. j's chunk is i's own chunk or
    the one before it (chunks of ``chunk_len`` positions; the first chunk has none before it,
    no wrap-around)."""
    if length % chunk_len:
        raise ValueError(f"length={length}: must be a multiple of chunk_len={chunk_len}")
    chunk = np.arange(length) // chunk_len
    behind = chunk[:, None] - chunk[None, :]
    return (behind == 0) | (behind == 1)


def local_attention(q, k, v, *, causal, chunk_len):
    """Exact softmax(Q K^T / sqrt(d)) V restricted to :func:`local_window` (keys outside it
    removed), causally masked by MASK_VALUE on top. A query always sees itself, so no row is
    empty. A second route to the chunked implementations: one dense L x L softmax."""
    window = local_window(q.shape[-2], chunk_len).astype(np.float64)
    out, _ = _attend(q, k, v, scale=1 / math.sqrt(q.shape[-1]), counts=window, causal=causal,
                     self_mask=False)
    return out


def local_attention_vjp(q, k, v, d_out, *, causal, chunk_len):
    """Returns (d_q, d_k, d_v) of :func:`local_attention` (the window is a constant)."""
    scale = 1 / math.sqrt(q.shape[-1])
    window = local_window(q.shape[-2], chunk_len).astype(np.float64)
    _, saved = _attend(q, k, v, scale=scale, counts=window, causal=causal, self_mask=False)
    return _attend_vjp(q, k, v, saved, d_out, scale=scale)


# --------------------------------------------------------------------------------------------
# Shared-QK attention and the key normalisation
# --------------------------------------------------------------------------------------------


def normalize_keys(qk):
    """k = q * rsqrt(mean(q**2) + eps) / sqrt(d): a unit-length key (up to eps)."""
    d = qk.shape[-1]
    return qk / np.sqrt(np.mean(qk**2, -1, keepdims=True) + KEY_NORM_EPS) / math.sqrt(d)


def normalize_keys_vjp(qk, d_k):
    d = qk.shape[-1]
    r = 1 / np.sqrt(np.mean(qk**2, -1, keepdims=True) + KEY_NORM_EPS)
    return (d_k * r - qk * r**3 * np.sum(d_k * qk, -1, keepdims=True) / d) / math.sqrt(d)


def _shared_qk(qk, v, d_out, *, causal, counts):
    k = normalize_keys(qk)
    out, saved = _attend(qk, k, v, scale=1.0, counts=counts, causal=causal, self_mask=True)
    if d_out is None:
        return out
    d_q, d_k, d_v = _attend_vjp(qk, k, v, saved, d_out, scale=1.0)
    return d_q + normalize_keys_vjp(qk, d_k), d_v


def shared_qk_attention(qk, v, *, causal):
    """Exact attention with shared, normalised keys; a query never attends to itself unless
    nothing else is valid (logits q . k_hat, no further scaling)."""
    return _shared_qk(qk, v, None, causal=causal, counts=None)


def shared_qk_attention_vjp(qk, v, d_out, *, causal):
    """Returns (d_qk, d_v)."""
    return _shared_qk(qk, v, d_out, causal=causal, counts=None)


# --------------------------------------------------------------------------------------------
# LSH attention
# --------------------------------------------------------------------------------------------


def hash_buckets(qk, rotations):
    """Bucket ids [batch, heads, n_hashes, length] in [0, n_buckets), no round offset.

    rotations: [heads, d_head, n_hashes, n_buckets // 2]. bucket = argmax([x R, -x R]).
    """
    rotated = np.einsum("bhld,hdrk->bhrlk", qk, rotations)
    return np.argmax(np.concatenate([rotated, -rotated], -1), -1)


def lsh_counts(buckets, *, n_buckets, chunk_len, n_chunks_before, n_chunks_after):
    """How often key j appears in query i's attention windows, summed over rounds.

    buckets: [batch, heads, n_hashes, length] -> counts [batch, heads, length, length].
    Follows the recipe literally: sort (round, bucket, position), cut into chunks, each chunk
    sees itself and its neighbours with wrap-around over the concatenated rounds.
    """
    batch, heads, n_hashes, length = buckets.shape
    counts = np.zeros((batch, heads, length, length))
    n_chunks = n_hashes * length // chunk_len
    for b in range(batch):
        for h in range(heads):
            items = [(r * n_buckets + buckets[b, h, r, t], r, t)
                     for r in range(n_hashes) for t in range(length)]
            order = [t for _, _, t in sorted(items)]  # (round, bucket, position) order
            chunks = [order[c * chunk_len:(c + 1) * chunk_len] for c in range(n_chunks)]
            for c in range(n_chunks):
                for offset in range(-n_chunks_before, n_chunks_after + 1):
                    for i in chunks[c]:
                        for j in chunks[(c + offset) % n_chunks]:
                            counts[b, h, i, j] += 1
    return counts


def _lsh(qk, v, d_out, *, rotations, n_buckets, chunk_len, causal, n_chunks_before,
         n_chunks_after, dedup, buckets):
    if buckets is None:
        buckets = hash_buckets(qk, rotations)
    counts = lsh_counts(buckets, n_buckets=n_buckets, chunk_len=chunk_len,
                        n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after)
    if dedup:
        counts = (counts > 0).astype(np.float64)
    return _shared_qk(qk, v, d_out, causal=causal, counts=counts)


def lsh_attention(qk, v, *, rotations=None, buckets=None, n_buckets, chunk_len, causal,
                  n_chunks_before=1, n_chunks_after=0, dedup=False):
    """LSH attention given rotations (or given buckets, [batch, heads, n_hashes, length])."""
    return _lsh(qk, v, None, rotations=rotations, n_buckets=n_buckets, chunk_len=chunk_len,
                causal=causal, n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
                dedup=dedup, buckets=buckets)


def lsh_attention_vjp(qk, v, d_out, *, rotations=None, buckets=None, n_buckets, chunk_len,
                      causal, n_chunks_before=1, n_chunks_after=0, dedup=False):
    """Returns (d_qk, d_v) with the buckets held fixed."""
    return _lsh(qk, v, d_out, rotations=rotations, n_buckets=n_buckets, chunk_len=chunk_len,
                causal=causal, n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
                dedup=dedup, buckets=buckets)


def band_attention(q, k, v, positions, *, chunk_len, n_chunks_before, n_chunks_after, causal,
                   d_out=None, d_lse=None):
    """Attention within windows of chunks of an already sorted order: the step every LSH kernel
    (portable, Triton, Pallas) implements, given here slot by slot for the kernels' tests.

    q, k [G, N, dh], v [G, N, dv], positions [G, N] (slot s holds position ``positions[g, s]``).
    Chunk c (slots ``c * C .. c * C + C - 1``) attends to chunks ``(c + o) mod n_chunks`` for
    ``o`` in ``[-n_chunks_before, n_chunks_after]`` (a chunk met twice counts twice). Logits are
    ``q . k`` (no scaling: keys come normalised); a key at the query's own position is replaced
    by SELF_MASK_VALUE, a later one (causal) by MASK_VALUE. Returns (out [G, N, dv],
    lse [G, N]); with cotangents d_out [G, N, dv] and d_lse [G, N], returns (d_q, d_k, d_v).
    """
    groups, n_items, _ = q.shape
    n_chunks = n_items // chunk_len
    out, lse = np.zeros((groups, n_items, v.shape[-1])), np.zeros((groups, n_items))
    grads = [np.zeros(x.shape) for x in (q, k, v)]
    for g in range(groups):
        for c in range(n_chunks):
            rows = np.arange(c * chunk_len, (c + 1) * chunk_len)
            cols = np.concatenate([np.arange(chunk_len) + (c + o) % n_chunks * chunk_len
                                   for o in range(-n_chunks_before, n_chunks_after + 1)])
            logits = q[g, rows] @ k[g, cols].T
            q_pos, kv_pos = positions[g, rows][:, None], positions[g, cols][None, :]
            replaced = q_pos == kv_pos
            logits = np.where(replaced, SELF_MASK_VALUE, logits)
            if causal:
                logits = np.where(q_pos < kv_pos, MASK_VALUE, logits)
                replaced |= q_pos < kv_pos
            row_max = logits.max(-1, keepdims=True)
            row_lse = row_max + np.log(np.exp(logits - row_max).sum(-1, keepdims=True))
            probs = np.exp(logits - row_lse)
            out[g, rows], lse[g, rows] = probs @ v[g, cols], row_lse[:, 0]
            if d_out is None:
                continue
            d_probs = d_out[g, rows] @ v[g, cols].T
            d_logits = probs * (d_probs - np.sum(probs * d_probs, -1, keepdims=True)
                                + d_lse[g, rows][:, None])
            d_logits = np.where(replaced, 0.0, d_logits)
            grads[0][g, rows] += d_logits @ k[g, cols]
            np.add.at(grads[1][g], cols, d_logits.T @ q[g, rows])
            np.add.at(grads[2][g], cols, probs.T @ d_out[g, rows])
    return (out, lse) if d_out is None else tuple(grads)


# --------------------------------------------------------------------------------------------
# Layer norm and the (chunked) feed-forward
# --------------------------------------------------------------------------------------------


def layer_norm(x, gamma, beta):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LAYER_NORM_EPS) * gamma + beta


def layer_norm_vjp(x, gamma, d_y):
    """Returns (d_x, d_gamma, d_beta)."""
    n = x.shape[-1]
    mu = x.mean(-1, keepdims=True)
    inv = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + LAYER_NORM_EPS)
    x_hat = (x - mu) * inv
    d_hat = d_y * gamma
    d_x = inv / n * (n * d_hat - d_hat.sum(-1, keepdims=True)
                     - x_hat * (d_hat * x_hat).sum(-1, keepdims=True))
    axes = tuple(range(x.ndim - 1))
    return d_x, (d_y * x_hat).sum(axes), d_y.sum(axes)


_erf = np.vectorize(math.erf)


def _activation(h, activation):
    if activation == "relu":
        return np.maximum(h, 0.0), (h > 0).astype(h.dtype)
    cdf = 0.5 * (1 + _erf(h / math.sqrt(2)))  # exact (erf) GELU, as torch and jax default
    pdf = np.exp(-0.5 * h**2) / math.sqrt(2 * math.pi)
    return h * cdf, cdf + h * pdf


def feed_forward(x, params, *, activation, chunk_len=None):
    """Pre-norm feed-forward: W2 act(W1 LN(x) + b1) + b2 on [batch, length, d_model].

    params: dict with ln_gamma, ln_beta, w1 [d_model, d_ff], b1, w2 [d_ff, d_model], b2.
    chunk_len: evaluate over that many positions at a time (same result by definition).
    """
    step = x.shape[1] if chunk_len is None else chunk_len
    outs = []
    for start in range(0, x.shape[1], step):
        xc = x[:, start:start + step]
        hidden, _ = _activation(layer_norm(xc, params["ln_gamma"], params["ln_beta"])
                                @ params["w1"] + params["b1"], activation)
        outs.append(hidden @ params["w2"] + params["b2"])
    return np.concatenate(outs, axis=1)


def feed_forward_vjp(x, params, d_y, *, activation):
    """Returns (d_x, d_params) for :func:`feed_forward`."""
    normed = layer_norm(x, params["ln_gamma"], params["ln_beta"])
    pre = normed @ params["w1"] + params["b1"]
    hidden, d_act = _activation(pre, activation)
    d_hidden = d_y @ params["w2"].T
    d_pre = d_hidden * d_act
    d_normed = d_pre @ params["w1"].T
    d_x, d_gamma, d_beta = layer_norm_vjp(x, params["ln_gamma"], d_normed)
    flat = (-1, x.shape[-1])
    d_params = {
        "w1": normed.reshape(flat).T @ d_pre.reshape(-1, pre.shape[-1]),
        "b1": d_pre.reshape(-1, pre.shape[-1]).sum(0),
        "w2": hidden.reshape(-1, pre.shape[-1]).T @ d_y.reshape(flat),
        "b2": d_y.reshape(flat).sum(0),
        "ln_gamma": d_gamma,
        "ln_beta": d_beta,
    }
    return d_x, d_params


# --------------------------------------------------------------------------------------------
# The reversible block
# --------------------------------------------------------------------------------------------


def reversible_block_forward(x1, x2, f, g):
    """y1 = x1 + f(x2); y2 = x2 + g(y1)."""
    y1 = x1 + f(x2)
    return y1, x2 + g(y1)


def reversible_block_inverse(y1, y2, f, g):
    """x2 = y2 - g(y1); x1 = y1 - f(x2): the inputs, recomputed from the outputs."""
    x2 = y2 - g(y1)
    return y1 - f(x2), x2


def reversible_block_vjp(y1, y2, d_y1, d_y2, f_vjp, g_vjp, f, g):
    """Backward of one block from its *outputs*, as the reversible stack runs it.

    f_vjp(x, d) -> (d_x, d_params). Returns (x1, x2, d_x1, d_x2, d_f_params, d_g_params).
    """
    x1, x2 = reversible_block_inverse(y1, y2, f, g)
    d_y1_from_g, d_g = g_vjp(y1, d_y2)
    d_y1 = d_y1 + d_y1_from_g
    d_x2_from_f, d_f = f_vjp(x2, d_y1)
    return x1, x2, d_y1, d_y2 + d_x2_from_f, d_f, d_g


# --------------------------------------------------------------------------------------------
# Attention-mass recall of LSH (the approximation measurement)
# --------------------------------------------------------------------------------------------


def shared_qk_probabilities(qk, *, causal):
    """Exact shared-QK attention probabilities [batch, heads, length, length]."""
    dummy_v = np.zeros((*qk.shape[:-1], 1))
    _, saved = _attend(qk, normalize_keys(qk), dummy_v, scale=1.0, counts=None, causal=causal,
                       self_mask=True)
    return saved.probs


def lsh_recall(qk, buckets, *, n_buckets, chunk_len, causal, n_chunks_before=1,
               n_chunks_after=0):
    """Per query [batch, heads, length]: the share of its exact shared-QK probability mass on
    the keys that LSH with ``buckets`` lets it attend to (those counted at least once)."""
    attended = lsh_counts(buckets, n_buckets=n_buckets, chunk_len=chunk_len,
                          n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after) > 0
    return np.sum(np.where(attended, shared_qk_probabilities(qk, causal=causal), 0.0), -1)
